package deviceauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"testing"
)

// FuzzParseJWS feeds arbitrary assertions to the parser and, when they
// parse, to the verifier with an ECDSA and an Ed25519 key. Nothing may
// panic; every error must be an assertion error; nothing random may verify.
func FuzzParseJWS(f *testing.F) {
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edk, _ := ed25519.GenerateKey(rand.Reader)
	enc := base64.RawURLEncoding.EncodeToString
	claims := enc([]byte(`{"iss":"a/d","sub":"a/d","aud":"https://x/oauth/token","iat":1,"exp":61,"jti":"j"}`))
	// A genuinely signed seed, so the fuzzer starts from an accepted input.
	in := enc([]byte(`{"alg":"ES256","typ":"JWT"}`)) + "." + claims
	d := sha256.Sum256([]byte(in))
	r, s, _ := ecdsa.Sign(rand.Reader, ek, d[:])
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	valid := in + "." + enc(sig)
	f.Add(valid)
	f.Add(enc([]byte(`{"alg":"none"}`)) + "." + claims + ".")
	f.Add(enc([]byte(`{"alg":"EdDSA","kid":"k"}`)) + "." + enc([]byte(`{"aud":["a","b"],"iat":1.5,"exp":2e3,"nbf":0}`)) + ".AA")
	f.Add(enc([]byte(`{"alg":"ES256","alg":"x"}`)) + "." + claims + ".AA")
	f.Add(enc([]byte(`{"alg":"ES256","jwk":{}}`)) + "." + claims + ".AA")
	f.Add("a.b.c.d")
	f.Add("....")
	f.Fuzz(func(t *testing.T, s string) {
		j, err := parseJWS(s)
		if err != nil {
			if !errors.Is(err, errAssertion) {
				t.Fatalf("error not wrapping errAssertion: %v", err)
			}
			return
		}
		if j.alg == "" || j.alg == "none" || j.claims.jti == "" || len(j.claims.aud) == 0 {
			t.Fatalf("parsed an incomplete assertion: %+v", j)
		}
		errE := verifySignature(j.alg, &ek.PublicKey, j.signingInput, j.sig)
		errD := verifySignature(j.alg, edk.Public(), j.signingInput, j.sig)
		if errD == nil {
			t.Fatalf("random input verified under an Ed25519 key: %q", s)
		}
		if errE == nil && s != valid {
			// ECDSA signatures are malleable (s -> n-s); anything else
			// verifying is a bug. Single-use jti covers malleability.
			j0, _ := parseJWS(valid)
			if j.signingInput != j0.signingInput {
				t.Fatalf("an input with another signing input verified: %q", s)
			}
		}
	})
}

// FuzzParseForm checks the token request form parser: no panic, a size
// limit, and no parameter given twice survives.
func FuzzParseForm(f *testing.F) {
	f.Add([]byte("grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c"))
	f.Add([]byte("grant_type=refresh_token&refresh_token=wardrt_x"))
	f.Add([]byte("a=1&a=2"))
	f.Add([]byte("a=1;b=2"))
	f.Add([]byte("a=%zz&=&&"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseForm(b)
		if err != nil {
			return
		}
		if len(b) > MaxFormLen || len(m) > maxFormParams {
			t.Fatalf("accepted %d bytes, %d params", len(b), len(m))
		}
		for k, v := range m {
			if v == "" {
				t.Fatalf("empty value for %q kept", k)
			}
		}
	})
}

package httpauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"
)

func TestSignAssertion(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	t.Run("ok/es256-raw-signature", func(t *testing.T) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		a, err := SignAssertion(k, "acme/dev", "https://w/oauth/token", now)
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(a, ".")
		if len(parts) != 3 || strings.Contains(a, "=") {
			t.Fatalf("not an unpadded compact JWS: %q", a)
		}
		sig, _ := b64.DecodeString(parts[2])
		if len(sig) != 64 {
			t.Fatalf("ES256 signature of %d bytes, want 64 (R||S, not DER)", len(sig))
		}
		d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if !ecdsa.Verify(&k.PublicKey, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatal("signature does not verify")
		}
		var h map[string]string
		hb, _ := b64.DecodeString(parts[0])
		json.Unmarshal(hb, &h)
		if h["alg"] != "ES256" || len(h) != 2 {
			t.Fatalf("header %v", h)
		}
		var c map[string]any
		cb, _ := b64.DecodeString(parts[1])
		json.Unmarshal(cb, &c)
		if c["iss"] != "acme/dev" || c["sub"] != "acme/dev" || c["aud"] != "https://w/oauth/token" ||
			c["iat"].(float64) != 1_900_000_000 || c["exp"].(float64) != 1_900_000_060 || c["jti"] == "" {
			t.Fatalf("claims %v", c)
		}
	})
	t.Run("ok/fresh-jti-each-time", func(t *testing.T) {
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		a1, _ := SignAssertion(k, "acme/dev", "aud", now)
		a2, _ := SignAssertion(k, "acme/dev", "aud", now)
		if a1 == a2 {
			t.Fatal("two assertions are identical: the jti is not random")
		}
	})
	t.Run("fail/bad-config", func(t *testing.T) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		for _, cfg := range []Config{
			{BaseURL: "https://w", Tenant: "acme", Device: "d/x", Signer: k},
			{BaseURL: "https://w", Tenant: "ACME", Device: "d", Signer: k},
			{Tenant: "acme", Device: "d", Signer: k},
		} {
			if _, err := New(cfg); err == nil {
				t.Fatalf("New(%+v) succeeded", cfg)
			}
		}
	})
}

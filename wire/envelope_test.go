package wire

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/bits"
	"strings"
	"testing"
	"time"

	"github.com/veraison/go-cose"
)

var testTime = time.UnixMilli(1_790_000_000_123)

func testHeader() Header {
	return Header{Device: "dev-1", Seq: 42, Time: testTime, SchemaID: "env", SchemaVersion: 3}
}

func signers(t testing.TB) map[string]crypto.Signer {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]crypto.Signer{"EdDSA": ed, "ES256": ec}
}

func TestSign1RoundTrip(t *testing.T) {
	for name, s := range signers(t) {
		t.Run(name, func(t *testing.T) {
			h := testHeader()
			h.KeyID = []byte("k1")
			b, err := SignTelemetry(s, h, []byte(`{"t":21.5}`))
			if err != nil {
				t.Fatal(err)
			}
			e, err := ParseEnvelope(b)
			if err != nil {
				t.Fatal(err)
			}
			if e.Kind != KindSign1 || e.Header.Device != "dev-1" || e.Header.Seq != 42 ||
				!e.Header.Time.Equal(testTime) || e.Header.SchemaID != "env" ||
				e.Header.SchemaVersion != 3 || string(e.Header.KeyID) != "k1" || string(e.Payload) != `{"t":21.5}` {
				t.Fatalf("round trip lost fields: %+v", e)
			}
			if err := e.VerifySign1(s.Public()); err != nil {
				t.Fatal(err)
			}
			other := signers(t)[name]
			if err := e.VerifySign1(other.Public()); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("other key verified: %v", err)
			}
			if err := e.VerifyMac0(make([]byte, 32)); !errors.Is(err, ErrWrongKind) {
				t.Fatalf("Sign1 accepted as Mac0: %v", err)
			}
		})
	}
}

func TestSign1RejectsAlgorithmKeyMismatch(t *testing.T) {
	ss := signers(t)
	h := testHeader()
	h.KeyID = []byte("k1")
	b, err := SignTelemetry(ss["EdDSA"], h, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.VerifySign1(ss["ES256"].Public()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("EdDSA envelope checked against an ECDSA key: %v", err)
	}
	if err := e.VerifySign1(ed25519.PublicKey{1, 2, 3}); err == nil {
		t.Fatal("short Ed25519 key accepted")
	}
}

func TestMac0RoundTrip(t *testing.T) {
	key, err := EpochKey(bytes.Repeat([]byte{7}, 32), 9)
	if err != nil {
		t.Fatal(err)
	}
	h := testHeader()
	h.Epoch = 9
	b, err := MacTelemetry(key, h, []byte(`{"t":1}`))
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	if e.Kind != KindMac0 || e.Header.Epoch != 9 || e.Alg != AlgHMAC256 {
		t.Fatalf("bad parse: %+v", e)
	}
	if err := e.VerifyMac0(key); err != nil {
		t.Fatal(err)
	}
	key2, _ := EpochKey(bytes.Repeat([]byte{7}, 32), 10)
	if err := e.VerifyMac0(key2); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong epoch key verified: %v", err)
	}
	if err := e.VerifySign1(signers(t)["EdDSA"].Public()); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("Mac0 accepted as Sign1: %v", err)
	}
}

// TestEveryBitFlipFailsVerification flips each bit of whole envelopes (so
// every bit of the protected header and payload, plus the framing and the
// tag); each flipped message must fail to parse or fail to verify.
func TestEveryBitFlipFailsVerification(t *testing.T) {
	payload := []byte(`{"t":2}`)
	type tc struct {
		msg    []byte
		verify func(*Envelope) error
	}
	cases := map[string]tc{}
	for name, s := range signers(t) {
		h := testHeader()
		h.KeyID = []byte("k")
		b, err := SignTelemetry(s, h, payload)
		if err != nil {
			t.Fatal(err)
		}
		pub := s.Public()
		cases[name] = tc{b, func(e *Envelope) error { return e.VerifySign1(pub) }}
	}
	key := bytes.Repeat([]byte{1}, 32)
	h := testHeader()
	h.Epoch = 1
	b, err := MacTelemetry(key, h, payload)
	if err != nil {
		t.Fatal(err)
	}
	cases["HMAC"] = tc{b, func(e *Envelope) error { return e.VerifyMac0(key) }}

	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e, err := ParseEnvelope(c.msg)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.verify(e); err != nil {
				t.Fatal(err)
			}
			parsedButRejected := 0
			for i := 0; i < len(c.msg)*8; i++ {
				m := bytes.Clone(c.msg)
				m[i/8] ^= 1 << (i % 8)
				e, err := ParseEnvelope(m)
				if err != nil {
					continue
				}
				if err := c.verify(e); err == nil {
					t.Fatalf("bit %d (byte %d) flipped and the envelope still verifies", i, i/8)
				}
				parsedButRejected++
			}
			// The payload and most header bits parse fine: make sure the
			// loop exercised the verifier, not only the parser.
			if parsedButRejected < len(payload)*8 {
				t.Fatalf("only %d flips reached verification", parsedButRejected)
			}
		})
	}
}

// TestGoCoseInterop checks our Sign1 encoding against go-cose's own
// Sign1Message in both directions.
func TestGoCoseInterop(t *testing.T) {
	for name, s := range signers(t) {
		t.Run(name, func(t *testing.T) {
			alg, _ := algForKey(s.Public())
			cs, err := cose.NewSigner(cose.Algorithm(alg), s)
			if err != nil {
				t.Fatal(err)
			}
			cv, err := cose.NewVerifier(cose.Algorithm(alg), s.Public())
			if err != nil {
				t.Fatal(err)
			}
			// ours -> go-cose
			h := testHeader()
			h.KeyID = []byte("kid-1")
			b, err := SignTelemetry(s, h, []byte(`{"a":1}`))
			if err != nil {
				t.Fatal(err)
			}
			var m cose.Sign1Message
			if err := m.UnmarshalCBOR(b); err != nil {
				t.Fatal(err)
			}
			if err := m.Verify(nil, cv); err != nil {
				t.Fatalf("go-cose rejects our envelope: %v", err)
			}
			if got := m.Headers.Protected[LabelSeq]; got != int64(42) {
				t.Fatalf("go-cose sees seq %v (%T)", got, got)
			}
			// go-cose -> ours
			gm := cose.NewSign1Message()
			gm.Headers.Protected.SetAlgorithm(cose.Algorithm(alg))
			gm.Headers.Protected[cose.HeaderLabelKeyID] = []byte("kid-2")
			gm.Headers.Protected[LabelDevice] = "dev-2"
			gm.Headers.Protected[LabelSeq] = uint64(7)
			gm.Headers.Protected[LabelTime] = uint64(testTime.UnixMilli())
			gm.Headers.Protected[LabelSchema] = "env"
			gm.Headers.Protected[LabelSchemaVer] = uint64(1)
			gm.Payload = []byte(`{"b":2}`)
			if err := gm.Sign(rand.Reader, nil, cs); err != nil {
				t.Fatal(err)
			}
			gb, err := gm.MarshalCBOR()
			if err != nil {
				t.Fatal(err)
			}
			e, err := ParseEnvelope(gb)
			if err != nil {
				t.Fatalf("we reject go-cose's envelope: %v", err)
			}
			if err := e.VerifySign1(s.Public()); err != nil {
				t.Fatalf("we reject go-cose's signature: %v", err)
			}
			if e.Header.Device != "dev-2" || e.Header.Seq != 7 || string(e.Header.KeyID) != "kid-2" {
				t.Fatalf("bad header from go-cose: %+v", e.Header)
			}
		})
	}
}

// TestMac0COSEWGVector checks the MAC_structure and HMAC against
// cose-wg/Examples mac0-tests/HMac-01.json (HMAC 256/256, direct key).
func TestMac0COSEWGVector(t *testing.T) {
	key, err := base64.RawURLEncoding.DecodeString("hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg")
	if err != nil {
		t.Fatal(err)
	}
	toMac, _ := hex.DecodeString("84644D41433043A101054054546869732069732074686520636F6E74656E742E")
	want, _ := hex.DecodeString("D18443A10105A054546869732069732074686520636F6E74656E742E5820A1A848D3471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C58")
	prot := []byte{0xa1, 0x01, 0x05}
	payload := []byte("This is the content.")

	m := hmac.New(sha256.New, key)
	m.Write(toMac)
	if tag := mac0Tag(key, prot, payload); !bytes.Equal(tag, m.Sum(nil)) {
		t.Fatal("streamed MAC_structure differs from the vector's ToMac")
	}
	got := encodeMessage(cborTagMac0, prot, payload, mac0Tag(key, prot, payload))
	if !bytes.Equal(got, want) {
		t.Fatalf("COSE_Mac0 differs from the COSE WG vector:\n got %X\nwant %X", got, want)
	}
	// The vector lacks Ward's fields, so ParseEnvelope must refuse it.
	if _, err := ParseEnvelope(want); !errors.Is(err, ErrMalformed) {
		t.Fatalf("vector without Ward headers parsed: %v", err)
	}
}

// hkdfRef is an HKDF-SHA256 written from RFC 5869 §2 with crypto/hmac only,
// independent of crypto/hkdf.
func hkdfRef(ikm, salt, info []byte, n int) []byte {
	if salt == nil {
		salt = make([]byte, sha256.Size)
	}
	ex := hmac.New(sha256.New, salt)
	ex.Write(ikm)
	prk := ex.Sum(nil)
	var out, t []byte
	for i := byte(1); len(out) < n; i++ {
		m := hmac.New(sha256.New, prk)
		m.Write(t)
		m.Write(info)
		m.Write([]byte{i})
		t = m.Sum(nil)
		out = append(out, t...)
	}
	return out[:n]
}

func TestEpochKeyDerivation(t *testing.T) {
	// RFC 5869 Appendix A.1 validates the reference implementation.
	ikm := bytes.Repeat([]byte{0x0b}, 22)
	salt, _ := hex.DecodeString("000102030405060708090a0b0c")
	info, _ := hex.DecodeString("f0f1f2f3f4f5f6f7f8f9")
	okm, _ := hex.DecodeString("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
	if got := hkdfRef(ikm, salt, info, 42); !bytes.Equal(got, okm) {
		t.Fatalf("reference HKDF fails RFC 5869 A.1: %x", got)
	}

	secret := bytes.Repeat([]byte{0x5a}, 32)
	seen := map[string]uint64{}
	var prev []byte
	for e := uint64(0); e < 64; e++ {
		k, err := EpochKey(secret, e)
		if err != nil {
			t.Fatal(err)
		}
		wantInfo := binary.BigEndian.AppendUint64([]byte("ward telemetry"), e)
		if want := hkdfRef(secret, nil, wantInfo, 32); !bytes.Equal(k, want) {
			t.Fatalf("epoch %d: key is not HKDF-SHA256(secret, nil, info)", e)
		}
		if o, dup := seen[string(k)]; dup {
			t.Fatalf("epochs %d and %d share a key", o, e)
		}
		seen[string(k)] = e
		if prev != nil {
			// Consecutive keys must look unrelated: about half their bits
			// differ (256 bits, mean 128, sd 8: 64..192 is 8 sd).
			d := 0
			for i := range k {
				d += bits.OnesCount8(k[i] ^ prev[i])
			}
			if d < 64 || d > 192 {
				t.Fatalf("epoch %d key differs from the previous one in only %d bits", e, d)
			}
			// Knowing K_e must not give K_{e+1} by re-running HKDF from K_e.
			if bytes.Equal(hkdfRef(prev, nil, wantInfo, 32), k) {
				t.Fatalf("epoch %d key derivable from the previous key", e)
			}
		}
		prev = k
	}
	if _, err := EpochKey([]byte("short"), 1); err == nil {
		t.Fatal("short device secret accepted")
	}
}

func TestParseEnvelopeStrict(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	h := testHeader()
	h.Epoch = 1
	good, err := MacTelemetry(key, h, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	// withProt re-encodes a Mac0 around a hand-written protected header
	// (hex CBOR) and a correct MAC, so only the header is at fault.
	withProt := func(protHex string) []byte {
		p, err := hex.DecodeString(strings.ReplaceAll(protHex, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		return encodeMessage(cborTagMac0, p, []byte(`{}`), mac0Tag(key, p, []byte(`{}`)))
	}
	// Pieces: 01 05 alg=5; 3a00011170 = -70001; 63 "d-1"; ...
	const (
		alg    = "0105"
		dev    = "3a00011170 63642d31"
		seq    = "3a00011171 01"
		ts     = "3a00011172 1a00010000"
		schema = "3a00011173 6161"
		ver    = "3a00011174 01"
		epoch  = "3a00011175 02"
	)
	all := alg + dev + seq + ts + schema + ver + epoch
	if _, err := ParseEnvelope(withProt("a7" + all)); err != nil {
		t.Fatalf("hand-built header refused: %v", err)
	}
	cases := map[string][]byte{
		"fail/too-large":            append(bytes.Clone(good), make([]byte, MaxEnvelopeSize)...),
		"fail/trailing":             append(bytes.Clone(good), 0x00),
		"fail/untagged":             good[1:],
		"fail/wrong-tag":            append([]byte{0xd3}, good[1:]...),
		"fail/empty":                {},
		"fail/truncated":            good[:len(good)-1],
		"fail/duplicate-label":      withProt("a8" + all + "3a00011171 02"),
		"fail/indefinite-map":       withProt("bf" + all + "ff"),
		"fail/indefinite-text":      withProt("a7" + alg + "3a00011170 7f 61 64 ff" + seq + ts + schema + ver + epoch),
		"fail/unknown-crit":         withProt("a8" + alg + "02 81 3a00012000" + dev + seq + ts + schema + ver + epoch),
		"fail/empty-crit":           withProt("a8" + alg + "02 80" + dev + seq + ts + schema + ver + epoch),
		"fail/missing-seq":          withProt("a6" + alg + dev + ts + schema + ver + epoch),
		"fail/missing-epoch":        withProt("a6" + alg + dev + seq + ts + schema + ver),
		"fail/negative-seq":         withProt("a7" + alg + dev + "3a00011171 20" + ts + schema + ver + epoch),
		"fail/device-as-bytes":      withProt("a7" + alg + "3a00011170 43642d31" + seq + ts + schema + ver + epoch),
		"fail/bad-device-id":        withProt("a7" + alg + "3a00011170 63642f31" + seq + ts + schema + ver + epoch),
		"fail/sign1-alg-mac0":       withProt("a7" + "0126" + dev + seq + ts + schema + ver + epoch),
		"fail/kid-in-mac0":          withProt("a8" + alg + "04 41 6b" + dev + seq + ts + schema + ver + epoch),
		"fail/tag-inside":           withProt("a7" + alg + dev + "3a00011171 c1 01" + ts + schema + ver + epoch),
		"fail/version-overflow":     withProt("a7" + alg + dev + seq + ts + schema + "3a00011174 1b0000000100000000" + epoch),
		"fail/non-shortest-seq":     withProt("a7" + alg + dev + "3a00011171 1801" + ts + schema + ver + epoch),
		"fail/non-shortest-label":   withProt("a7" + alg + "3b0000000000011170 63642d31" + seq + ts + schema + ver + epoch),
		"fail/non-shortest-map":     withProt("b807" + all),
		"fail/float-seq":            withProt("a7" + alg + dev + "3a00011171 f93c00" + ts + schema + ver + epoch),
		"fail/invalid-utf8-label":   withProt("a8" + all + "61ff 01"),
		"fail/duplicate-text-label": withProt("a9" + all + "6178 01 6178 02"),
		"fail/tag-in-unknown-value": withProt("a8" + all + "3a00012000 c1 01"),
		"fail/bad-simple-value":     withProt("a8" + all + "3a00012000 f801"),
		"fail/deep-unknown-value":   withProt("a8" + all + "3a00012000 8181818181818101"),
		"fail/trailing-in-header":   withProt("a7" + all + "00"),
	}
	if _, err := ParseEnvelope(withProt("a8" + all + "3a00012000 a1 01 82 01 f93c00")); err != nil {
		t.Fatalf("unknown non-critical label refused: %v", err)
	}
	ge, err := ParseEnvelope(good)
	if err != nil {
		t.Fatal(err)
	}
	off := bytes.Index(good, ge.protected) + len(ge.protected)
	if good[off] != 0xa0 {
		t.Fatal("unprotected header not where expected")
	}
	cases["fail/unprotected-not-empty"] = append(append(bytes.Clone(good[:off]), 0xa1, 0x04, 0x41, 0x00), good[off+1:]...)
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseEnvelope(b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	t.Run("ok/known-crit-and-text-label", func(t *testing.T) {
		b := withProt("a9" + alg + "02 81 3a00011171" + dev + seq + ts + schema + ver + epoch + "6178 01")
		if _, err := ParseEnvelope(b); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzParseEnvelope(f *testing.F) {
	key := bytes.Repeat([]byte{1}, 32)
	h := testHeader()
	h.Epoch = 3
	b, _ := MacTelemetry(key, h, []byte(`{"x":[1,2,3]}`))
	f.Add(b)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	h = testHeader()
	h.KeyID = []byte("k")
	b, _ = SignTelemetry(ed, h, []byte(`{}`))
	f.Add(b)
	f.Add([]byte{0xd1, 0x84, 0x40, 0xa0, 0x40, 0x40})
	pub := ed.Public()
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEnvelope(data)
		if err != nil {
			return
		}
		// A parsed envelope re-encodes to exactly its input: the parser
		// accepts one encoding per message, so no two byte strings mean the
		// same envelope.
		tag := byte(cborTagMac0)
		if e.Kind == KindSign1 {
			tag = cborTagSign1
		}
		if !bytes.Equal(encodeMessage(tag, e.protected, e.Payload, e.tag), data) {
			t.Fatal("parsed envelope does not re-encode to its input")
		}
		_ = e.VerifyMac0(key)
		_ = e.VerifySign1(pub)
	})
}

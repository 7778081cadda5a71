package telemetry

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"github.com/wardiot/ward/internal/strictjson"
	"testing"
	"time"

	"github.com/wardiot/ward/wire"
)

// The benchmarks run the whole Verifier path (parse, key lookup, signature
// or MAC, timestamp, replay window, JSON decode and schema validation) on a
// small realistic payload. Envelopes are prepared before the timer starts
// because each needs a fresh sequence number.

const benchPayload = `{"temp":21.5,"state":"ok","owner":"site-7"}`

func benchVerify(b *testing.B, build func(f *fixture, h wire.Header) []byte) {
	f := newFixture(b)
	msgs := make([][]byte, 0, b.N)
	for i := 0; i < b.N; i++ {
		msgs = append(msgs, build(f, f.header()))
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.v.Verify(ctx, f.id, f.topic, msgs[i]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyMac0(b *testing.B) {
	benchVerify(b, func(f *fixture, h wire.Header) []byte { return f.mac(h, 5, benchPayload) })
}

func BenchmarkVerifySign1Ed25519(b *testing.B) {
	benchVerify(b, func(f *fixture, h wire.Header) []byte { return f.sign(h, benchPayload) })
}

func BenchmarkVerifySign1ES256(b *testing.B) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	benchVerify(b, func(f *fixture, h wire.Header) []byte {
		f.keys.signing["acme/dev-1"] = []PublicKey{{ID: []byte("ec"), Key: ec.Public()}}
		h.KeyID = []byte("ec")
		out, err := wire.SignTelemetry(ec, h, []byte(benchPayload))
		if err != nil {
			b.Fatal(err)
		}
		return out
	})
}

// BenchmarkParts splits the Mac0 path so a regression can be located.
func BenchmarkParts(b *testing.B) {
	f := newFixture(b)
	h := f.header()
	raw := f.mac(h, 5, benchPayload)
	key, _ := wire.EpochKey(f.secret, 5)
	sch, _ := f.reg.Lookup("acme", "env", 1)
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := wire.ParseEnvelope(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("mac", func(b *testing.B) {
		e, _ := wire.ParseEnvelope(raw)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := e.VerifyMac0(key); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json+schema", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			v, err := strictjson.Decode([]byte(benchPayload), maxJSONDepth)
			if err != nil {
				b.Fatal(err)
			}
			if err := sch.validate(v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("replay", func(b *testing.B) {
		g := newReplayGuard(1000, time.Unix(0, 0))
		k := deviceKey{"acme", "dev-1"}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			g.check(k, uint64(i+1), time.Unix(10, 0))
		}
	})
}

// The baselines measure the bare signature check on the same machine and
// run, so the Verifier's own overhead can be read off on a loaded host.
func BenchmarkBaselineEd25519Verify(b *testing.B) {
	f := newFixture(b)
	msg := make([]byte, 120)
	sig := ed25519.Sign(f.ed, msg)
	pub := f.ed.Public().(ed25519.PublicKey)
	for i := 0; i < b.N; i++ {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("bad signature")
		}
	}
}

func BenchmarkBaselineES256Verify(b *testing.B) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256(make([]byte, 120))
	sig, _ := ecdsa.SignASN1(rand.Reader, ec, d[:])
	for i := 0; i < b.N; i++ {
		if !ecdsa.VerifyASN1(&ec.PublicKey, d[:], sig) {
			b.Fatal("bad signature")
		}
	}
}

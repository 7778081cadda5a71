package keystore

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/agent/keystore/softhsmtest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
)

// BenchmarkSign measures one signature per backend. TPM and PKCS#11 figures
// include the round trip to swtpm / SoftHSM; a discrete TPM is slower.
func BenchmarkSign(b *testing.B) {
	digest := sha256.Sum256([]byte("benchmark"))
	run := func(b *testing.B, ks Keystore, alg Algorithm) {
		k, err := ks.Generate(context.Background(), "bench", alg)
		if err != nil {
			b.Fatal(err)
		}
		in, opts := digest[:], crypto.SignerOpts(crypto.SHA256)
		if alg == Ed25519 {
			opts = crypto.Hash(0)
		}
		b.ResetTimer()
		for b.Loop() {
			if _, err := k.Sign(rand.Reader, in, opts); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("file/ecdsa-p256", func(b *testing.B) {
		run(b, mustOpen(b, "file:"+filepath.Join(b.TempDir(), "k")), ECDSAP256)
	})
	b.Run("file/ed25519", func(b *testing.B) {
		run(b, mustOpen(b, "file:"+filepath.Join(b.TempDir(), "k")), Ed25519)
	})
	b.Run("pkcs11-softhsm/ecdsa-p256", func(b *testing.B) {
		tok := softhsmtest.New(b, "bench")
		run(b, mustOpen(b, tok.Spec()), ECDSAP256)
	})
	b.Run("tpm-swtpm/ecdsa-p256", func(b *testing.B) {
		sim := tpmtest.StartSim(b)
		state := filepath.Join(b.TempDir(), "state")
		if err := os.Mkdir(state, 0o700); err != nil {
			b.Fatal(err)
		}
		run(b, mustOpen(b, sim.Spec(), WithStateDir(state)), ECDSAP256)
	})
}

package keystore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/agent/internal/peertest"
	"github.com/wardiot/ward/agent/keystore/softhsmtest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
)

// backend describes one keystore under test. open returns a fresh view of
// the same storage each time it is called, as a restarted process would.
type backend struct {
	name        string
	algs        []Algorithm
	unsupported []Algorithm
	// deleteRevokes: keys already handed out stop signing after Delete
	// (true where the key lives in hardware).
	deleteRevokes bool
	open          func(t *testing.T) Keystore
}

func mustOpen(t testing.TB, spec string, opts ...Option) Keystore {
	t.Helper()
	ks, err := Open(spec, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { ks.Close() })
	return ks
}

func fileBackend(t *testing.T) backend {
	dir := filepath.Join(t.TempDir(), "keys")
	return backend{
		name:        "file",
		algs:        []Algorithm{ECDSAP256, ECDSAP384, Ed25519},
		unsupported: []Algorithm{Algorithm(99)},
		open:        func(t *testing.T) Keystore { return mustOpen(t, "file:"+dir) },
	}
}

func sealedFileBackend(t *testing.T) backend {
	dir := filepath.Join(t.TempDir(), "keys")
	seal := make([]byte, SealKeySize)
	rand.Read(seal)
	b := fileBackend(t)
	b.name = "file-sealed"
	b.open = func(t *testing.T) Keystore { return mustOpen(t, "file:"+dir, WithSealKey(seal)) }
	return b
}

func pkcs11Backend(t *testing.T) backend {
	if !haveCgo {
		peertest.Missing(t, "the pkcs11 backend needs cgo; this test binary was built with CGO_ENABLED=0")
	}
	tok := softhsmtest.New(t, "ward-test")
	return backend{
		name:          "pkcs11",
		algs:          []Algorithm{ECDSAP256, ECDSAP384},
		unsupported:   []Algorithm{Ed25519, Algorithm(99)},
		deleteRevokes: true,
		open:          func(t *testing.T) Keystore { return mustOpen(t, tok.Spec()) },
	}
}

func tpmBackend(t *testing.T) backend {
	sim := tpmtest.StartSim(t)
	state := filepath.Join(t.TempDir(), "tpm")
	return backend{
		name:          "tpm",
		algs:          []Algorithm{ECDSAP256, ECDSAP384},
		unsupported:   []Algorithm{Ed25519, Algorithm(99)},
		deleteRevokes: true,
		open:          func(t *testing.T) Keystore { return mustOpen(t, sim.Spec(), WithStateDir(state)) },
	}
}

func TestFileConformance(t *testing.T)       { runConformance(t, fileBackend(t)) }
func TestSealedFileConformance(t *testing.T) { runConformance(t, sealedFileBackend(t)) }
func TestPKCS11Conformance(t *testing.T)     { runConformance(t, pkcs11Backend(t)) }
func TestTPMConformance(t *testing.T)        { runConformance(t, tpmBackend(t)) }

// signVerify signs a message with k and checks the signature with the
// public key, both directly and through a CSR as enrollment will.
func signVerify(t *testing.T, k Key) {
	t.Helper()
	msg := []byte("ward keystore conformance " + k.Name())
	sig, opts := sign(t, k, msg)
	if !verify(k.Public(), msg, sig, opts) {
		t.Fatalf("signature by %q does not verify with its public key", k.Name())
	}
	if verify(k.Public(), append(msg, '!'), sig, opts) {
		t.Fatalf("signature by %q verifies for another message", k.Name())
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: k.Name()},
	}, k)
	if err != nil {
		t.Fatalf("CSR with %q: %v", k.Name(), err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signed by %q: %v", k.Name(), err)
	}
}

func sign(t *testing.T, k Key, msg []byte) ([]byte, crypto.SignerOpts) {
	t.Helper()
	var digest []byte
	var opts crypto.SignerOpts
	switch pub := k.Public().(type) {
	case ed25519.PublicKey:
		digest, opts = msg, crypto.Hash(0)
	case *ecdsa.PublicKey:
		if pub.Curve.Params().BitSize == 384 {
			d := sha512.Sum384(msg)
			digest, opts = d[:], crypto.SHA384
		} else {
			d := sha256.Sum256(msg)
			digest, opts = d[:], crypto.SHA256
		}
	default:
		t.Fatalf("unexpected public key type %T", pub)
	}
	sig, err := k.Sign(rand.Reader, digest, opts)
	if err != nil {
		t.Fatalf("Sign with %q: %v", k.Name(), err)
	}
	return sig, opts
}

func verify(pub crypto.PublicKey, msg, sig []byte, opts crypto.SignerOpts) bool {
	switch pub := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(pub, msg, sig)
	case *ecdsa.PublicKey:
		h := opts.HashFunc().New()
		h.Write(msg)
		return ecdsa.VerifyASN1(pub, h.Sum(nil), sig)
	}
	return false
}

// opensslVerify has openssl, a verifier no one here wrote, check a
// signature made by the keystore.
func opensslVerify(t *testing.T, pub crypto.PublicKey, msg, sig []byte, opts crypto.SignerOpts) {
	t.Helper()
	openssl := peertest.Require(t, "openssl", "openssl")
	dir := t.TempDir()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pubPath := write("pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	msgPath, sigPath := write("msg", msg), write("sig", sig)
	var cmd *exec.Cmd
	if opts.HashFunc() == 0 {
		cmd = exec.Command(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", pubPath, "-rawin", "-in", msgPath, "-sigfile", sigPath)
	} else {
		cmd = exec.Command(openssl, "dgst", "-"+strings.ToLower(strings.ReplaceAll(opts.HashFunc().String(), "-", "")), "-verify", pubPath, "-signature", sigPath, msgPath)
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Verified") || strings.Contains(string(out), "Failure") {
		t.Fatalf("openssl does not verify the signature: %v\n%s", err, out)
	}
}

func samePublic(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

func runConformance(t *testing.T, b backend) {
	ctx := context.Background()

	for _, alg := range b.algs {
		t.Run("ok/generate-sign-verify/"+alg.String(), func(t *testing.T) {
			ks := b.open(t)
			if ks.Kind() != strings.TrimSuffix(b.name, "-sealed") {
				t.Errorf("Kind() = %q", ks.Kind())
			}
			k, err := ks.Generate(ctx, "gen-"+alg.String(), alg)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			if k.Name() != "gen-"+alg.String() {
				t.Errorf("Name() = %q", k.Name())
			}
			signVerify(t, k)
		})
	}

	t.Run("ok/openssl-verifies-signature", func(t *testing.T) {
		ks := b.open(t)
		for _, alg := range b.algs {
			k, err := ks.Generate(ctx, "openssl-"+alg.String(), alg)
			if err != nil {
				t.Fatalf("Generate %v: %v", alg, err)
			}
			msg := []byte("verified by openssl")
			sig, opts := sign(t, k, msg)
			opensslVerify(t, k.Public(), msg, sig, opts)
		}
	})

	t.Run("ok/reload-after-reopen", func(t *testing.T) {
		ks := b.open(t)
		k, err := ks.Generate(ctx, "reload", ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		pub := k.Public()
		if err := ks.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		ks2 := b.open(t)
		k2, err := ks2.Load(ctx, "reload")
		if err != nil {
			t.Fatalf("Load after reopen: %v", err)
		}
		if !samePublic(pub, k2.Public()) {
			t.Fatal("reloaded key has a different public key")
		}
		signVerify(t, k2)
	})

	t.Run("ok/renewal-two-keys-then-delete-old", func(t *testing.T) {
		ks := b.open(t)
		old, err := ks.Generate(ctx, "device-1", ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		next, err := ks.Generate(ctx, "device-2", ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		if samePublic(old.Public(), next.Public()) {
			t.Fatal("two generated keys share a public key")
		}
		signVerify(t, old)
		signVerify(t, next)
		if err := ks.Delete(ctx, "device-1"); err != nil {
			t.Fatalf("Delete old: %v", err)
		}
		if _, err := ks.Load(ctx, "device-1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Load deleted key: err = %v, want ErrNotFound", err)
		}
		still, err := ks.Load(ctx, "device-2")
		if err != nil {
			t.Fatalf("Load surviving key: %v", err)
		}
		if !samePublic(still.Public(), next.Public()) {
			t.Fatal("surviving key changed")
		}
		signVerify(t, next)
	})

	t.Run("ok/concurrent-sign", func(t *testing.T) {
		ks := b.open(t)
		var keys []Key
		for _, n := range []string{"conc-1", "conc-2"} {
			k, err := ks.Generate(ctx, n, ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
		errs := make(chan error, 8)
		for i := range 8 {
			go func() {
				k := keys[i%2]
				d := sha256.Sum256([]byte{byte(i)})
				for range 5 {
					sig, err := k.Sign(rand.Reader, d[:], crypto.SHA256)
					if err != nil {
						errs <- err
						return
					}
					if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
						errs <- errors.New("bad signature under concurrency")
						return
					}
				}
				errs <- nil
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("fail/load-missing", func(t *testing.T) {
		ks := b.open(t)
		if _, err := ks.Load(ctx, "never-made"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})

	t.Run("fail/delete-missing", func(t *testing.T) {
		ks := b.open(t)
		if err := ks.Delete(ctx, "never-made"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})

	t.Run("fail/load-after-delete-across-reopen", func(t *testing.T) {
		ks := b.open(t)
		if _, err := ks.Generate(ctx, "gone", ECDSAP256); err != nil {
			t.Fatal(err)
		}
		if err := ks.Delete(ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		ks.Close()
		if _, err := b.open(t).Load(ctx, "gone"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})

	t.Run("fail/generate-existing-keeps-old-key", func(t *testing.T) {
		ks := b.open(t)
		k, err := ks.Generate(ctx, "taken", ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ks.Generate(ctx, "taken", ECDSAP256); !errors.Is(err, ErrExists) {
			t.Fatalf("err = %v, want ErrExists", err)
		}
		ks.Close()
		again, err := b.open(t).Load(ctx, "taken")
		if err != nil {
			t.Fatal(err)
		}
		if !samePublic(k.Public(), again.Public()) {
			t.Fatal("a failed Generate replaced the existing key")
		}
	})

	for _, alg := range b.unsupported {
		t.Run("fail/unsupported-algorithm/"+alg.String(), func(t *testing.T) {
			ks := b.open(t)
			if _, err := ks.Generate(ctx, "unsupported", alg); !errors.Is(err, ErrUnsupportedAlgorithm) {
				t.Fatalf("err = %v, want ErrUnsupportedAlgorithm", err)
			}
		})
	}

	t.Run("fail/invalid-names", func(t *testing.T) {
		ks := b.open(t)
		for _, name := range []string{"", "../escape", "a/b", ".hidden", "-flag", "sp ace", "nul\x00", strings.Repeat("x", maxNameLen+1)} {
			if _, err := ks.Generate(ctx, name, ECDSAP256); !errors.Is(err, ErrInvalidName) {
				t.Errorf("Generate(%q): err = %v, want ErrInvalidName", name, err)
			}
			if _, err := ks.Load(ctx, name); !errors.Is(err, ErrInvalidName) {
				t.Errorf("Load(%q): err = %v, want ErrInvalidName", name, err)
			}
			if err := ks.Delete(ctx, name); !errors.Is(err, ErrInvalidName) {
				t.Errorf("Delete(%q): err = %v, want ErrInvalidName", name, err)
			}
		}
	})

	t.Run("fail/cancelled-context", func(t *testing.T) {
		ks := b.open(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := ks.Generate(cctx, "cancelled", ECDSAP256); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})

	t.Run("fail/use-after-close", func(t *testing.T) {
		ks := b.open(t)
		k, err := ks.Generate(ctx, "closing", ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		if err := ks.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := ks.Load(ctx, "closing"); !errors.Is(err, ErrClosed) {
			t.Errorf("Load after Close: err = %v, want ErrClosed", err)
		}
		d := sha256.Sum256([]byte("x"))
		if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, ErrClosed) {
			t.Errorf("Sign after Close: err = %v, want ErrClosed", err)
		}
	})

	if b.deleteRevokes {
		t.Run("fail/deleted-key-stops-signing", func(t *testing.T) {
			ks := b.open(t)
			k, err := ks.Generate(ctx, "revoked", ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			signVerify(t, k)
			if err := ks.Delete(ctx, "revoked"); err != nil {
				t.Fatal(err)
			}
			d := sha256.Sum256([]byte("after delete"))
			if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err == nil {
				t.Fatal("a deleted key still signs")
			}
			// A new key under the same name must not sign for the old one.
			if _, err := ks.Generate(ctx, "revoked", ECDSAP256); err != nil {
				t.Fatal(err)
			}
			if sig, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err == nil && ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
				t.Fatal("the old key value signs again after the name was reused")
			}
		})
	}
}

package keystore

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/agent/internal/peertest"
)

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	ks := mustOpen(t, "file:"+dir)
	if _, err := ks.Generate(context.Background(), "device-1", ECDSAP256); err != nil {
		t.Fatal(err)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := di.Mode().Perm(); got != 0o700 {
		t.Errorf("key directory mode %04o, want 0700", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "device-1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode %04o, want 0600", got)
	}
	// The atomic write leaves nothing behind but the key.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "device-1.pem" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only device-1.pem", names)
	}
}

func TestFileRefusesGroupReadableKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	ks := mustOpen(t, "file:"+dir)
	ctx := context.Background()
	if _, err := ks.Generate(ctx, "device-1", ECDSAP256); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(filepath.Join(dir, "device-1.pem"), mode); err != nil {
			t.Fatal(err)
		}
		_, err := ks.Load(ctx, "device-1")
		if !errors.Is(err, ErrInsecurePermissions) {
			t.Fatalf("mode %04o: err = %v, want ErrInsecurePermissions", mode, err)
		}
		if !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: error %q does not say how to fix it", mode, err)
		}
	}
}

func TestFileRefusesInsecureDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Open("file:" + dir)
	if !errors.Is(err, ErrInsecurePermissions) || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("err = %v, want ErrInsecurePermissions with a chmod hint", err)
	}
}

func TestFileRefusesSymlinkedKey(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "keys")
	ks := mustOpen(t, "file:"+dir)
	ctx := context.Background()
	if _, err := ks.Generate(ctx, "real", ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "real.pem"), filepath.Join(dir, "link.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Load(ctx, "link"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("err = %v, want a refusal to follow the symlink", err)
	}
}

func TestFileRefusesOversizedKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	ks := mustOpen(t, "file:"+dir)
	if err := os.WriteFile(filepath.Join(dir, "big.pem"), make([]byte, maxKeyFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Load(context.Background(), "big"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v, want a size refusal", err)
	}
}

// TestFileKeyIsStandardPKCS8 shows the unsealed format is the one openssl
// reads: an operator can inspect or migrate keys with standard tools.
func TestFileKeyIsStandardPKCS8(t *testing.T) {
	openssl := peertest.Require(t, "openssl", "openssl")
	dir := filepath.Join(t.TempDir(), "keys")
	ks := mustOpen(t, "file:"+dir)
	for _, alg := range []Algorithm{ECDSAP256, ECDSAP384, Ed25519} {
		k, err := ks.Generate(context.Background(), alg.String(), alg)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(openssl, "pkey", "-in", filepath.Join(dir, alg.String()+".pem"), "-pubout").CombinedOutput()
		if err != nil {
			t.Fatalf("openssl pkey %v: %v\n%s", alg, err, out)
		}
		block, _ := pem.Decode(out)
		if block == nil {
			t.Fatalf("openssl printed no public key: %s", out)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !samePublic(k.Public(), pub) {
			t.Fatalf("%v: openssl derives a different public key", alg)
		}
	}
}

func TestFileSealed(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	seal := make([]byte, SealKeySize)
	rand.Read(seal)
	ks := mustOpen(t, "file:"+dir, WithSealKey(seal))
	k, err := ks.Generate(ctx, "device-1", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "device-1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemSealedPrivateKey {
		t.Fatalf("sealed key file is not a %q PEM block", pemSealedPrivateKey)
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		t.Fatal("sealed key file parses as a plain PKCS#8 key")
	}

	t.Run("fail/wrong-seal-key", func(t *testing.T) {
		other := make([]byte, SealKeySize)
		rand.Read(other)
		_, err := mustOpen(t, "file:"+dir, WithSealKey(other)).Load(ctx, "device-1")
		if err == nil || !strings.Contains(err.Error(), "does not open") {
			t.Fatalf("err = %v, want a seal failure", err)
		}
	})
	t.Run("fail/no-seal-key", func(t *testing.T) {
		_, err := mustOpen(t, "file:"+dir).Load(ctx, "device-1")
		if err == nil || !strings.Contains(err.Error(), "WithSealKey") {
			t.Fatalf("err = %v, want a hint about WithSealKey", err)
		}
	})
	t.Run("fail/renamed-file", func(t *testing.T) {
		// The name is authenticated: a sealed file moved under another
		// name (to pass an old key off as the new one) does not open.
		if err := os.WriteFile(filepath.Join(dir, "device-2.pem"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ks.Load(ctx, "device-2"); err == nil {
			t.Fatal("a sealed key file opened under another name")
		}
	})
	t.Run("fail/planted-unsealed-file", func(t *testing.T) {
		plain := filepath.Join(t.TempDir(), "plain")
		pks := mustOpen(t, "file:"+plain)
		if _, err := pks.Generate(ctx, "planted", ECDSAP256); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(plain, "planted.pem"))
		if err := os.WriteFile(filepath.Join(dir, "planted.pem"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ks.Load(ctx, "planted"); err == nil || !strings.Contains(err.Error(), "requires sealed") {
			t.Fatalf("err = %v, want refusal of an unsealed key", err)
		}
	})
	t.Run("fail/bad-seal-key-size", func(t *testing.T) {
		if _, err := Open("file:"+dir, WithSealKey(seal[:16])); err == nil {
			t.Fatal("a 16-byte seal key was accepted")
		}
	})
	t.Run("ok/reload", func(t *testing.T) {
		k2, err := mustOpen(t, "file:"+dir, WithSealKey(seal)).Load(ctx, "device-1")
		if err != nil {
			t.Fatal(err)
		}
		if !samePublic(k.Public(), k2.Public()) {
			t.Fatal("reloaded sealed key differs")
		}
	})
}

func TestFileDeleteOverwritesBeforeUnlink(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	ks := mustOpen(t, "file:"+dir)
	ctx := context.Background()
	if _, err := ks.Generate(ctx, "doomed", ECDSAP256); err != nil {
		t.Fatal(err)
	}
	// Keep a second link so we can see what Delete left in the inode.
	keep := filepath.Join(t.TempDir(), "witness")
	if err := os.Link(filepath.Join(dir, "doomed.pem"), keep); err != nil {
		t.Skipf("hard links unsupported here: %v", err)
	}
	if err := ks.Delete(ctx, "doomed"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(keep)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "PRIVATE KEY") {
		t.Fatal("Delete left the key bytes in place")
	}
}

package pki_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ThalesGroup/crypto11"

	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/pki/pkcs11"
)

const softHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

var (
	hsmOnce sync.Once
	hsmMgr  *pkcs11.Manager
	hsmDir  string
	hsmErr  error
)

// TestMain closes the shared token session after all tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if hsmMgr != nil {
		hsmMgr.Close()
	}
	if hsmDir != "" {
		os.RemoveAll(hsmDir)
	}
	os.Exit(code)
}

// softHSM returns a manager for a fresh SoftHSM token in a private token
// directory. The PKCS#11 module is initialised once per process, so the
// token is shared by the tests of this binary.
func softHSM(t *testing.T) *pkcs11.Manager {
	t.Helper()
	needTool(t, "softhsm2-util")
	if _, err := os.Stat(softHSMModule); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("SoftHSM module missing in CI: %v", err)
		}
		t.Skipf("SoftHSM module %s missing; apt-get install softhsm2", softHSMModule)
	}
	hsmOnce.Do(func() {
		hsmDir, hsmErr = os.MkdirTemp("", "ward-softhsm-")
		if hsmErr != nil {
			return
		}
		tokens := filepath.Join(hsmDir, "tokens")
		os.Mkdir(tokens, 0o700)
		conf := filepath.Join(hsmDir, "softhsm2.conf")
		os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
		os.Setenv("SOFTHSM2_CONF", conf)
		if out, err := runTool(t, hsmDir, "softhsm2-util", "--init-token", "--free", "--label", "ward-test", "--pin", "1234", "--so-pin", "5678"); err != nil {
			hsmErr = fmt.Errorf("softhsm2-util: %v\n%s", err, out)
			return
		}
		hsmMgr, hsmErr = pkcs11.Open(pkcs11.Config{Module: softHSMModule, TokenLabel: "ward-test", PIN: "1234"})
	})
	if hsmErr != nil {
		t.Fatal(hsmErr)
	}
	return hsmMgr
}

// TestInteropPKCS11 runs the openssl checks with CA keys in SoftHSM and
// then shows that the CA private keys never left the token: nothing the
// store holds and no file the test wrote contains a private key, and the
// token refuses to reveal them.
func TestInteropPKCS11(t *testing.T) {
	m := softHSM(t)
	e := newEnv(t, m, func(c *pki.Config) { c.IssuerURLs = true })
	dir := interop(t, e, pki.ECDSAP256)

	var blobs [][]byte
	blobs = append(blobs, e.store.Blobs()...)
	files, _ := os.ReadDir(dir)
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, b)
	}
	if len(files) < 4 {
		t.Fatalf("expected the interop files, found %d", len(files))
	}
	for i, b := range blobs {
		if off, ok := findPrivateKey(b); ok {
			t.Fatalf("blob %d holds a private key at offset %d", i, off)
		}
	}
	// The scanner does find a key when there is one (a planted PKCS#8).
	planted, _ := x509.MarshalPKCS8PrivateKey(newKey(t))
	if _, ok := findPrivateKey(append([]byte("xx"), planted...)); !ok {
		t.Fatal("scanner misses a planted PKCS#8 key")
	}

	for _, ca := range e.a.CAs("acme") {
		s, err := m.Load(context.Background(), ca.KeyRef)
		if err != nil {
			t.Fatal(err)
		}
		ctx := m.Context()
		for attr, want := range map[crypto11.AttributeType]bool{crypto11.CkaExtractable: false, crypto11.CkaSensitive: true, crypto11.CkaToken: true} {
			a, err := ctx.GetAttribute(s, attr)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(a.Value) == 1 && a.Value[0] == 1; got != want {
				t.Fatalf("CA %s: attribute %#x = %v, want %v", ca.ID, attr, a.Value, want)
			}
		}
		if a, err := ctx.GetAttribute(s, crypto11.CkaValue); err == nil && len(a.Value) > 0 {
			t.Fatalf("CA %s: the token revealed CKA_VALUE of the private key", ca.ID)
		}
	}
	if _, err := e.a.ExportRootKey(context.Background(), "acme"); !errors.Is(err, pki.ErrNotExportable) {
		t.Fatalf("exporting an HSM root key: %v, want ErrNotExportable", err)
	}

	// A restart loads the keys from the token by reference.
	e.start(t)
	if _, err := e.a.Issue(context.Background(), pki.IssueRequest{Tenant: "acme", Device: "dev-2", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "dev-2")}); err != nil {
		t.Fatal(err)
	}
}

// findPrivateKey looks for any PEM private key block, or any DER at any
// offset that parses as PKCS#8, SEC 1 EC or PKCS#1 RSA private key.
func findPrivateKey(b []byte) (int, bool) {
	if i := bytes.Index(b, []byte("PRIVATE KEY-----")); i >= 0 {
		return i, true
	}
	for i := 0; i+2 < len(b); i++ {
		if b[i] != 0x30 {
			continue
		}
		rest := b[i:]
		if _, err := x509.ParsePKCS8PrivateKey(derPrefix(rest)); err == nil {
			return i, true
		}
		if _, err := x509.ParseECPrivateKey(derPrefix(rest)); err == nil {
			return i, true
		}
		if _, err := x509.ParsePKCS1PrivateKey(derPrefix(rest)); err == nil {
			return i, true
		}
	}
	return 0, false
}

// derPrefix cuts b to the length its first DER header claims, so parsers
// that reject trailing data still see an embedded structure.
func derPrefix(b []byte) []byte {
	if len(b) < 2 {
		return b
	}
	n, h := int(b[1]), 2
	if n&0x80 != 0 {
		k := n & 0x7f
		if k == 0 || k > 3 || len(b) < 2+k {
			return b
		}
		n = 0
		for j := 0; j < k; j++ {
			n = n<<8 | int(b[2+j])
		}
		h = 2 + k
	}
	if h+n > len(b) {
		return b
	}
	return b[:h+n]
}

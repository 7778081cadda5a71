package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent/keystore/softhsmtest"
)

// TestPKIWithOpenSSL drives a real server through the operator CLI and
// checks the results with openssl and curl, which no one here wrote: the
// chain verifies, OCSP says good then revoked with the reason, the CRL
// lists the serial and verifies against the issuing CA.
func TestPKIWithOpenSSL(t *testing.T) {
	openssl := requirePeer(t, "openssl", "openssl")
	curl := requirePeer(t, "curl", "curl")
	dir := t.TempDir()
	p := startServer(t, dir)
	w := func(args ...string) string {
		t.Helper()
		out, errs, code := ward(t, nil, append([]string{"--data", dir}, args...)...)
		if code != 0 {
			t.Fatalf("ward %v: exit %d: %s", args, code, errs)
		}
		return out
	}
	w("tenant", "create", "acme")
	w("tenant", "create", "globex")
	chain := w("ca", "chain", "--tenant", "acme")
	blocks := splitPEM(t, chain)
	if len(blocks) != 2 {
		t.Fatalf("chain has %d certificates, want issuing + root", len(blocks))
	}
	work := t.TempDir()
	issuing, root := filepath.Join(work, "issuing.pem"), filepath.Join(work, "root.pem")
	os.WriteFile(issuing, blocks[0], 0o644)
	os.WriteFile(root, blocks[1], 0o644)

	key, csr, cert := filepath.Join(work, "dev.key"), filepath.Join(work, "dev.csr"), filepath.Join(work, "dev.pem")
	mustRun(t, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", key, "-out", csr, "-subj", "/CN=sensor-1", "-addext", "subjectAltName=URI:urn:ward:acme:device:sensor-1")
	w("cert", "issue", "--tenant", "acme", "--device", "sensor-1", "--csr", csr, "--out", cert)

	out := mustRun(t, openssl, "verify", "-CAfile", root, "-untrusted", issuing, cert)
	if !strings.Contains(out, ": OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	text := mustRun(t, openssl, "x509", "-in", cert, "-noout", "-text", "-serial")
	serial := strings.ToLower(regexp.MustCompile(`serial=([0-9A-F]+)`).FindStringSubmatch(text)[1])
	ocspURL := regexp.MustCompile(`OCSP - URI:(\S+)`).FindStringSubmatch(text)[1]
	crlURL := regexp.MustCompile(`URI:(http\S+\.crl)`).FindStringSubmatch(text)[1]
	for _, want := range []string{"TLS Web Client Authentication", "URI:urn:ward:acme:device:sensor-1", "Digital Signature"} {
		if !strings.Contains(text, want) {
			t.Errorf("certificate lacks %q", want)
		}
	}

	ocsp := func(extra ...string) string {
		t.Helper()
		return mustRun(t, openssl, append([]string{"ocsp", "-issuer", issuing, "-cert", cert, "-url", ocspURL,
			"-CAfile", root, "-verify_other", issuing}, extra...)...)
	}
	for _, nonce := range [][]string{nil, {"-no_nonce"}} {
		if out := ocsp(nonce...); !strings.Contains(out, cert+": good") || !strings.Contains(out, "Response verify OK") {
			t.Fatalf("ocsp %v before revocation: %s", nonce, out)
		}
	}
	w("cert", "revoke", strings.TrimLeft(serial, "0"), "--tenant", "acme", "--reason", "keyCompromise")
	for _, nonce := range [][]string{nil, {"-no_nonce"}} {
		out := ocsp(nonce...)
		if !strings.Contains(out, cert+": revoked") || !strings.Contains(out, "Reason: keyCompromise") {
			t.Fatalf("ocsp %v after revocation: %s", nonce, out)
		}
	}
	// The CRL is regenerated in the background after a revocation: poll.
	crl := filepath.Join(work, "crl.der")
	deadline := time.Now().Add(10 * time.Second)
	for {
		mustRun(t, curl, "-sSf", "-o", crl, crlURL)
		out := mustRun(t, openssl, "crl", "-in", crl, "-inform", "DER", "-noout", "-text")
		if strings.Contains(strings.ToLower(out), "serial number: "+strings.TrimLeft(serial, "0")) || strings.Contains(strings.ToLower(out), "serial number: "+serial) {
			if !strings.Contains(out, "Key Compromise") {
				t.Fatalf("CRL entry without its reason:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CRL never listed serial %s:\n%s", serial, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := mustRun(t, openssl, "crl", "-in", crl, "-inform", "DER", "-CAfile", issuing, "-noout", "-verify"); !strings.Contains(out, "verify OK") {
		t.Fatalf("CRL signature: %s", out)
	}
	// Another tenant's chain does not verify this certificate.
	gchain := splitPEM(t, w("ca", "chain", "--tenant", "globex"))
	groot := filepath.Join(work, "groot.pem")
	os.WriteFile(groot, gchain[1], 0o644)
	if out, err := run(t, openssl, "verify", "-CAfile", groot, "-untrusted", issuing, cert); err == nil {
		t.Fatalf("certificate verified against another tenant's root: %s", out)
	}
	_ = p
}

// TestCertIssueRefusals: each bad request gets a clear error and leaves no
// certificate record.
func TestCertIssueRefusals(t *testing.T) {
	openssl := requirePeer(t, "openssl", "openssl")
	dir := t.TempDir()
	startServer(t, dir)
	ward(t, nil, "--data", dir, "tenant", "create", "acme")
	work := t.TempDir()
	good, key := filepath.Join(work, "good.csr"), filepath.Join(work, "k.pem")
	mustRun(t, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
		"-out", good, "-subj", "/CN=d1")
	otherTenant := filepath.Join(work, "other.csr")
	mustRun(t, openssl, "req", "-new", "-key", key, "-out", otherTenant, "-subj", "/CN=d1", "-addext",
		"subjectAltName=URI:urn:ward:globex:device:d1")
	goodPEM, _ := os.ReadFile(good)
	b, _ := pem.Decode(goodPEM)
	der := append([]byte(nil), b.Bytes...)
	der[len(der)-5] ^= 0xff // inside the signature
	badSig := filepath.Join(work, "badsig.csr")
	os.WriteFile(badSig, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644)
	malformed := filepath.Join(work, "malformed.csr")
	os.WriteFile(malformed, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("not a CSR")}), 0o644)
	huge := filepath.Join(work, "huge.csr")
	os.WriteFile(huge, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: make([]byte, 40000)}), 0o644)

	cases := map[string]struct{ csr, want string }{
		"fail/bad-signature": {badSig, "signature"},
		"fail/malformed":     {malformed, "400"},
		"fail/oversized":     {huge, "413"},
		"fail/other-tenant":  {otherTenant, "403"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, errs, code := ward(t, nil, "--data", dir, "cert", "issue", "--tenant", "acme", "--device", "d1", "--csr", tc.csr)
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, stderr %q (want %q)", code, errs, tc.want)
			}
		})
	}
	out, _, _ := ward(t, nil, "--data", dir, "cert", "list", "--tenant", "acme", "--device", "d1", "-o", "json")
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("refused requests left records: %s", out)
	}
	// The good CSR still works: the refusals were about the requests.
	if _, errs, code := ward(t, nil, "--data", dir, "cert", "issue", "--tenant", "acme", "--device", "d1", "--csr", good); code != 0 {
		t.Fatalf("good CSR refused: %s", errs)
	}
}

func splitPEM(t *testing.T, s string) [][]byte {
	t.Helper()
	var out [][]byte
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			t.Fatal(err)
		}
		out = append(out, pem.EncodeToMemory(b))
	}
	return out
}

// TestRootOffline: the root key leaves the server through the CLI into a
// 0600 file; issuance continues from the issuing CA; a new issuing CA needs
// the root key handed back.
func TestRootOffline(t *testing.T) {
	openssl := requirePeer(t, "openssl", "openssl")
	dir := t.TempDir()
	startServer(t, dir)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")
	work := t.TempDir()
	keyFile := filepath.Join(work, "root.key")
	w("ca", "root-offline", "--tenant", "acme", "--out", keyFile)
	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key file: %v %v", fi, err)
	}
	if out := mustRun(t, openssl, "pkey", "-in", keyFile, "-noout", "-text"); !strings.Contains(out, "Private-Key") {
		t.Fatalf("exported key: %s", out)
	}
	csr := filepath.Join(work, "d.csr")
	mustRun(t, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(work, "k.pem"),
		"-out", csr, "-subj", "/CN=d1")
	w("cert", "issue", "--tenant", "acme", "--device", "d1", "--csr", csr)
	if _, errs, code := ward(t, nil, "--data", dir, "ca", "new-issuing", "--tenant", "acme"); code == 0 {
		t.Fatal("a new issuing CA was made without the offline root key")
	} else if !strings.Contains(errs, "offline") {
		t.Fatalf("unclear refusal: %s", errs)
	}
	w("ca", "new-issuing", "--tenant", "acme", "--root-key", keyFile)
	chain := splitPEM(t, w("ca", "chain", "--tenant", "acme"))
	if len(chain) != 2 {
		t.Fatalf("chain after rotation has %d certificates", len(chain))
	}
	w("cert", "issue", "--tenant", "acme", "--device", "d1", "--csr", csr)
}

// TestPKCS11CAKeys runs a server whose tenant CA keys live in a PKCS#11
// token (Debian's softhsm2): certificates verify with openssl, and no CA
// private key is anywhere in the data directory or the database.
func TestPKCS11CAKeys(t *testing.T) {
	openssl := requirePeer(t, "openssl", "openssl")
	tok := softhsmtest.New(t, "ward-ca")
	dir := t.TempDir()
	pin := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pin, []byte(tok.PIN), 0o600)
	startServer(t, dir, "--ca-keys", "pkcs11", "--pkcs11-module", tok.Module, "--pkcs11-token", tok.Label, "--pkcs11-pin-file", pin)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")
	work := t.TempDir()
	csr, cert := filepath.Join(work, "d.csr"), filepath.Join(work, "d.pem")
	mustRun(t, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(work, "k.pem"),
		"-out", csr, "-subj", "/CN=d1")
	w("cert", "issue", "--tenant", "acme", "--device", "d1", "--csr", csr, "--out", cert)
	chain := splitPEM(t, w("ca", "chain", "--tenant", "acme"))
	os.WriteFile(filepath.Join(work, "issuing.pem"), chain[0], 0o644)
	os.WriteFile(filepath.Join(work, "root.pem"), chain[1], 0o644)
	if out := mustRun(t, openssl, "verify", "-CAfile", filepath.Join(work, "root.pem"), "-untrusted", filepath.Join(work, "issuing.pem"), cert); !strings.Contains(out, ": OK") {
		t.Fatalf("verify: %s", out)
	}
	// The root key cannot be exported from the token.
	if _, errs, code := ward(t, nil, "--data", dir, "ca", "root-offline", "--tenant", "acme", "--out", filepath.Join(work, "root.key")); code == 0 {
		t.Fatal("exported a root key from the HSM")
	} else if !strings.Contains(strings.ToLower(errs), "export") {
		t.Fatalf("unclear refusal: %s", errs)
	}
	// No private key of any CA is in the data directory or the database.
	filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), "PRIVATE KEY") {
			t.Errorf("%s holds a PEM private key", path)
		}
		return nil
	})
}

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/est/esttest"
)

// TestESTWithGlobalsignClient: the EST client of globalsign/est, which no
// one here wrote, gets the CA certificates, enrolls with a one-time token
// and re-enrolls with a new key over mTLS against a real ward server; the
// certificates verify with openssl against the tenant chain. Re-enrolling
// with the same key (estclient's default renew) is refused.
func TestESTWithGlobalsignClient(t *testing.T) {
	openssl := requirePeer(t, "openssl", "openssl")
	estclient := esttest.BuildEstclient(t)
	dir := t.TempDir()
	p := startServer(t, dir)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")
	tok := strings.TrimSpace(w("token", "create", "--enroll", "--tenant", "acme", "--device", "gs-1", "--ttl", "1h"))

	work := t.TempDir()
	in := func(name string) string { return filepath.Join(work, name) }
	common := []string{"-server", p.apiAddr, "-aps", "acme", "-explicit", filepath.Join(dir, "ca.pem"), "-timeout", "30s"}
	est := func(op string, args ...string) (string, error) {
		cmd := exec.Command(estclient, append(append([]string{op}, common...), args...)...)
		cmd.Dir = work
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mustEST := func(op string, args ...string) string {
		t.Helper()
		out, err := est(op, args...)
		if err != nil {
			t.Fatalf("estclient %s: %v\n%s", op, err, out)
		}
		return out
	}

	mustEST("cacerts", "-out", in("cacerts.pem"))
	chain := splitPEM(t, w("ca", "chain", "--tenant", "acme"))
	got, _ := os.ReadFile(in("cacerts.pem"))
	if certs := splitPEM(t, string(got)); len(certs) != 2 || string(certs[0]) != string(chain[0]) || string(certs[1]) != string(chain[1]) {
		t.Fatalf("cacerts differs from the tenant chain")
	}
	os.WriteFile(in("issuing.pem"), chain[0], 0o644)
	os.WriteFile(in("root.pem"), chain[1], 0o644)

	mustRun(t, openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", in("key1.pem"))
	mustEST("enroll", "-key", in("key1.pem"), "-cn", "gs-1", "-headers", "Authorization:Bearer "+tok, "-out", in("cert1.pem"))
	if out := mustRun(t, openssl, "verify", "-CAfile", in("root.pem"), "-untrusted", in("issuing.pem"), "-purpose", "sslclient", in("cert1.pem")); !strings.Contains(out, ": OK") {
		t.Fatalf("enrolled certificate: %s", out)
	}

	// The same token again: refused.
	if out, err := est("enroll", "-key", in("key1.pem"), "-cn", "gs-1", "-headers", "Authorization:Bearer "+tok, "-out", in("again.pem")); err == nil || !strings.Contains(out, "already used") {
		t.Fatalf("reused token: err=%v %s", err, out)
	}

	// estclient's plain reenroll keeps the key: renewal must rotate.
	if out, err := est("reenroll", "-certs", in("cert1.pem"), "-key", in("key1.pem"), "-out", in("same.pem")); err == nil || !strings.Contains(out, "new key") {
		t.Fatalf("re-enroll with the same key: err=%v %s", err, out)
	}

	// Re-key: a new key, the subject and SAN of the current certificate.
	subj := strings.TrimSpace(strings.TrimPrefix(mustRun(t, openssl, "x509", "-in", in("cert1.pem"), "-noout", "-subject", "-nameopt", "RFC2253"), "subject="))
	mustRun(t, openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", in("key2.pem"))
	mustRun(t, openssl, "req", "-new", "-key", in("key2.pem"), "-out", in("rekey.csr"), "-subj", "/"+strings.ReplaceAll(reverseRDN(subj), ",", "/"),
		"-addext", "subjectAltName=URI:urn:ward:acme:device:gs-1")
	mustEST("reenroll", "-certs", in("cert1.pem"), "-key", in("key1.pem"), "-csr", in("rekey.csr"), "-out", in("cert2.pem"))
	if out := mustRun(t, openssl, "verify", "-CAfile", in("root.pem"), "-untrusted", in("issuing.pem"), in("cert2.pem")); !strings.Contains(out, ": OK") {
		t.Fatalf("renewed certificate: %s", out)
	}
	k2 := mustRun(t, openssl, "pkey", "-in", in("key2.pem"), "-pubout")
	c2 := mustRun(t, openssl, "x509", "-in", in("cert2.pem"), "-noout", "-pubkey")
	if k2 != c2 {
		t.Fatal("the renewed certificate does not certify the new key")
	}
	audit := w("audit", "list", "--tenant", "acme")
	for _, want := range []string{"est.enroll", "est.reenroll", "cert.issue"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
}

// TestESTWithCurlAndOpenSSL speaks EST by hand: openssl makes the CSR, curl
// posts it in base64, openssl pkcs7 reads the certs-only answer.
func TestESTWithCurlAndOpenSSL(t *testing.T) {
	openssl := requirePeer(t, "openssl", "openssl")
	curl := requirePeer(t, "curl", "curl")
	dir := t.TempDir()
	p := startServer(t, dir)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")
	tok := strings.TrimSpace(w("token", "create", "--enroll", "--tenant", "acme", "--device", "c-1", "--ttl", "1h"))
	work := t.TempDir()
	in := func(name string) string { return filepath.Join(work, name) }
	base := "https://" + p.apiAddr + "/.well-known/est/acme/"

	mustRun(t, curl, "-sSf", "--cacert", filepath.Join(dir, "ca.pem"), "-o", in("cacerts.b64"), base+"cacerts")
	mustRun(t, openssl, "base64", "-d", "-in", in("cacerts.b64"), "-out", in("cacerts.p7"))
	if out := mustRun(t, openssl, "pkcs7", "-inform", "DER", "-in", in("cacerts.p7"), "-print_certs"); strings.Count(out, "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("cacerts: %s", out)
	}
	mustRun(t, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", in("k.pem"),
		"-out", in("c.csr"), "-outform", "DER", "-subj", "/CN=c-1")
	mustRun(t, openssl, "base64", "-in", in("c.csr"), "-out", in("c.b64"))
	// Without credentials: 401 and a challenge.
	out := mustRun(t, curl, "-s", "-o", "/dev/null", "-D", "-", "--cacert", filepath.Join(dir, "ca.pem"),
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@"+in("c.b64"), base+"simpleenroll")
	if !strings.Contains(out, " 401") || !strings.Contains(strings.ToLower(out), "www-authenticate") {
		t.Fatalf("no credentials: %s", out)
	}
	mustRun(t, curl, "-sSf", "--cacert", filepath.Join(dir, "ca.pem"), "-H", "Content-Type: application/pkcs10",
		"-H", "Authorization: Bearer "+tok, "--data-binary", "@"+in("c.b64"), "-o", in("cert.b64"), base+"simpleenroll")
	mustRun(t, openssl, "base64", "-d", "-in", in("cert.b64"), "-out", in("cert.p7"))
	mustRun(t, openssl, "pkcs7", "-inform", "DER", "-in", in("cert.p7"), "-print_certs", "-out", in("cert.pem"))
	chain := splitPEM(t, w("ca", "chain", "--tenant", "acme"))
	os.WriteFile(in("issuing.pem"), chain[0], 0o644)
	os.WriteFile(in("root.pem"), chain[1], 0o644)
	if out := mustRun(t, openssl, "verify", "-CAfile", in("root.pem"), "-untrusted", in("issuing.pem"), in("cert.pem")); !strings.Contains(out, ": OK") {
		t.Fatalf("verify: %s", out)
	}
}

// reverseRDN turns openssl's RFC 2253 subject (most specific first) into
// the order -subj expects.
func reverseRDN(s string) string {
	parts := strings.Split(s, ",")
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, ",")
}

// wardCLI returns a function that runs the ward CLI against the server in
// dir and fails the test on a non-zero exit.
func wardCLI(t *testing.T, dir string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		out, errs, code := ward(t, nil, append([]string{"--data", dir}, args...)...)
		if code != 0 {
			t.Fatalf("ward %v: exit %d: %s", args, code, errs)
		}
		return out
	}
}

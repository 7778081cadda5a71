package est_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/wire"
)

// TestCurlOpenSSL enrolls with nothing but curl and openssl, the way an
// operator would by hand: openssl makes the key and CSR, curl speaks HTTP,
// openssl decodes the base64 certs-only response and verifies the chain.
// It then re-enrolls over mTLS with curl's --cert/--key.
func TestCurlOpenSSL(t *testing.T) {
	curl := esttest.RequireTool(t, "curl")
	openssl := esttest.RequireTool(t, "openssl")
	dir := t.TempDir()
	ca := esttest.NewCA(t, label)
	ca.AddToken("tok-curl", "dev-c")
	addr := estServer(t, ca, dir)
	base := "https://" + addr
	curlArgs := func(args ...string) []string {
		return append([]string{"-sS", "--fail-with-body", "--cacert", "server.pem", "--max-time", "20"}, args...)
	}

	// CA certificates: base64 -> DER -> PEM.
	mustRun(t, dir, curl, curlArgs("-o", "cacerts.b64", base+wire.ESTPath(label, wire.ESTCACerts))...)
	mustRun(t, dir, openssl, "base64", "-d", "-in", "cacerts.b64", "-out", "cacerts.p7")
	mustRun(t, dir, openssl, "pkcs7", "-inform", "DER", "-in", "cacerts.p7", "-print_certs", "-out", "cacerts.pem")
	cacerts := readCerts(t, filepath.Join(dir, "cacerts.pem"))
	if len(cacerts) != 2 || !cacerts[0].Equal(ca.Issuing) || !cacerts[1].Equal(ca.Root) {
		t.Fatalf("openssl printed %d CA certificates, want issuing CA then root", len(cacerts))
	}
	writePEM(t, filepath.Join(dir, "root.pem"), "CERTIFICATE", ca.Root.Raw)
	writePEM(t, filepath.Join(dir, "issuing.pem"), "CERTIFICATE", ca.Issuing.Raw)

	// Enroll: openssl makes a P-256 key and a DER CSR, base64 encodes it.
	mustRun(t, dir, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-keyout", "key.pem", "-subj", "/CN=dev-c", "-outform", "DER", "-out", "csr.der")
	mustRun(t, dir, openssl, "base64", "-in", "csr.der", "-out", "csr.b64")
	mustRun(t, dir, curl, curlArgs("-o", "cert.b64",
		"-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64",
		"-H", "Authorization: Bearer tok-curl", "--data-binary", "@csr.b64",
		base+wire.ESTPath(label, wire.ESTSimpleEnroll))...)
	mustRun(t, dir, openssl, "base64", "-d", "-in", "cert.b64", "-out", "cert.p7")
	mustRun(t, dir, openssl, "pkcs7", "-inform", "DER", "-in", "cert.p7", "-print_certs", "-out", "cert.pem")
	if out := mustRun(t, dir, openssl, "verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "-purpose", "sslclient", "cert.pem"); !strings.Contains(out, "OK") {
		t.Fatalf("openssl verify: %s", out)
	}
	leaf := readCerts(t, filepath.Join(dir, "cert.pem"))
	if len(leaf) != 1 || len(leaf[0].URIs) != 1 || leaf[0].URIs[0].String() != wire.DeviceURI(label, "dev-c") {
		t.Fatalf("enrolled %d certificates with URIs %v", len(leaf), leaf[0].URIs)
	}

	// Missing credentials: 401 with both challenges.
	out, ok := runPeer(t, dir, curl, "-sS", "-i", "--cacert", "server.pem", "--max-time", "20",
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@csr.b64", base+wire.ESTPath(label, wire.ESTSimpleEnroll))
	if !ok || !strings.Contains(out, "HTTP/1.1 401") && !strings.Contains(out, "HTTP/2 401") ||
		!strings.Contains(out, `Basic realm="ward-est"`) || !strings.Contains(out, `Bearer realm="ward-est"`) {
		t.Fatalf("enroll without credentials:\n%s", out)
	}

	// Re-enroll over mTLS, keeping the key: a CSR with the same subject
	// and the certificate's URI SAN.
	mustRun(t, dir, openssl, "req", "-new", "-key", "key.pem", "-subj", "/CN=dev-c",
		"-addext", "subjectAltName=URI:"+wire.DeviceURI(label, "dev-c"), "-outform", "DER", "-out", "re.der")
	mustRun(t, dir, openssl, "base64", "-in", "re.der", "-out", "re.b64")
	mustRun(t, dir, curl, curlArgs("-o", "re.b64.out", "--cert", "cert.pem", "--key", "key.pem",
		"-H", "Content-Type: application/pkcs10", "--data-binary", "@re.b64",
		base+wire.ESTPath(label, wire.ESTSimpleReenroll))...)
	body, err := os.ReadFile(filepath.Join(dir, "re.b64.out"))
	if err != nil {
		t.Fatal(err)
	}
	renewed := decodeCerts(t, body)
	if len(renewed) != 1 || renewed[0].SerialNumber.Cmp(leaf[0].SerialNumber) == 0 {
		t.Fatalf("re-enrollment returned %d certificates or the old one", len(renewed))
	}
	checkIssued(t, ca, renewed[0], "dev-c", leaf[0].PublicKey)
}

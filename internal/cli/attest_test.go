package cli_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/attest"
)

const refDoc = `{"ward_attest": {"schema": 1, "hw_model": "wardboard-1", "release": "1.0.0", "hash": "sha256",
  "stages": [{"name": "kernel", "pcr": 4, "event": "0xd", "sha256": "` + "4a1c2f3b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708" + `"}]}}`

// TestReleaseRefValuesCommands: set the tenant's reference-value key,
// import a signed release, refuse a forged one; attest an unknown device.
func TestReleaseRefValuesCommands(t *testing.T) {
	dir, _ := startServer(t)
	mustRun(t, "--data", dir, "tenant", "create", "acme")
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	files := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(files, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyFile := write("ref.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	sig, err := attest.SignRefValues([]byte(refDoc), priv)
	if err != nil {
		t.Fatal(err)
	}
	docFile, sigFile := write("rv.json", []byte(refDoc)), write("rv.sig", sig)
	forged := write("forged.json", []byte(strings.Replace(refDoc, "4a1c", "0000", 1)))

	code, _, stderr := run(t, "--data", dir, "release", "refvalues", "import", "--tenant", "acme", "--file", docFile, "--sig", sigFile)
	if code != 1 || !strings.Contains(stderr, "reference-value key") {
		t.Fatalf("import without a key: exit %d %s", code, stderr)
	}
	mustRun(t, "--data", dir, "release", "refvalues", "set-key", "--tenant", "acme", "--key", keyFile)
	if out := mustRun(t, "--data", dir, "release", "refvalues", "import", "--tenant", "acme", "--file", docFile, "--sig", sigFile); !strings.Contains(out, "wardboard-1 1.0.0 approved") {
		t.Fatalf("import: %s", out)
	}
	code, _, stderr = run(t, "--data", dir, "release", "refvalues", "import", "--tenant", "acme", "--file", forged, "--sig", sigFile)
	if code != 1 || !strings.Contains(stderr, "signature") {
		t.Fatalf("forged import: exit %d %s", code, stderr)
	}
	code, _, stderr = run(t, "--data", dir, "device", "attest", "--tenant", "acme", "ghost-1")
	if code != 1 || !strings.Contains(stderr, "404") {
		t.Fatalf("attest unknown device: exit %d %s", code, stderr)
	}
}

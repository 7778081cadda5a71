package agent_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/internal/est/esttest"
)

// TestStateChainVerifiesWithOpenSSL checks that what identity.json holds
// is standard PEM that openssl accepts: the device certificate verifies
// against the cacerts root with the stored intermediates, for client
// authentication.
func TestStateChainVerifiesWithOpenSSL(t *testing.T) {
	openssl := esttest.RequireTool(t, "openssl")
	e := newEnv(t, nil)
	e.enroll(t)
	b, err := os.ReadFile(filepath.Join(e.cfg.StateDir, agent.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Certificate string `json:"certificate"`
		CACerts     string `json:"ca_certs"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	chain := write("chain.pem", st.Certificate)
	cas := write("cacerts.pem", st.CACerts)
	out, err := exec.Command(openssl, "verify", "-purpose", "sslclient", "-CAfile", cas, "-untrusted", chain, chain).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}

package e2e

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/agent/keystore/softhsmtest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
)

func agent(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

type agentStatus struct {
	Device  string `json:"device"`
	Tenant  string `json:"tenant"`
	Serial  string `json:"serial"`
	KeyName string `json:"key"`
}

// TestAgentEnrollAndRenew runs the real ward-agent binary against a real
// ward server with each keystore: it enrolls with a one-time token, renews
// (rotating the key), and the certificate always certifies the key held in
// the keystore. For the TPM (swtpm) and PKCS#11 (softhsm2) keystores the
// key is created inside the device and never leaves it.
func TestAgentEnrollAndRenew(t *testing.T) {
	dir := t.TempDir()
	p := startServer(t, dir)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")

	backends := map[string]func(t *testing.T, work string) string{
		"file": func(t *testing.T, work string) string { return "file:" + filepath.Join(work, "keys") },
		"pkcs11": func(t *testing.T, work string) string {
			tok := softhsmtest.New(t, "ward-e2e")
			pin := filepath.Join(work, "pin")
			os.WriteFile(pin, []byte(tok.PIN), 0o600)
			return "pkcs11:module=" + tok.Module + ";token=" + tok.Label + ";pin-source=" + pin
		},
		"tpm": func(t *testing.T, work string) string { return tpmtest.StartSim(t).Spec() },
	}
	for name, spec := range backends {
		t.Run(name, func(t *testing.T) {
			work := t.TempDir()
			ks := spec(t, work)
			device := "agent-" + name
			state := filepath.Join(work, "state")
			tok := strings.TrimSpace(w("token", "create", "--enroll", "--tenant", "acme", "--device", device, "--ttl", "1h"))
			env := []string{"WARD_ENROLL_TOKEN=" + tok, "SOFTHSM2_CONF=" + os.Getenv("SOFTHSM2_CONF")}
			if _, errs, code := agent(t, env, "enroll", "--server", "https://"+p.apiAddr, "--ca", filepath.Join(dir, "ca.pem"),
				"--tenant", "acme", "--device", device, "--keystore", ks, "--state", state); code != 0 {
				t.Fatalf("enroll: exit %d: %s", code, errs)
			}
			st1 := status(t, env, state)
			checkCertMatchesKey(t, ks, state, st1.KeyName)
			if _, errs, code := agent(t, env, "renew", "--state", state); code != 0 {
				t.Fatalf("renew: exit %d: %s", code, errs)
			}
			st2 := status(t, env, state)
			if st2.Serial == st1.Serial || st2.KeyName == st1.KeyName {
				t.Fatalf("renewal did not rotate: %+v -> %+v", st1, st2)
			}
			checkCertMatchesKey(t, ks, state, st2.KeyName)
			// The old key is gone from the keystore.
			k, err := keystore.Open(ks, keystore.WithStateDir(filepath.Join(state, "tpm-keys")))
			if err == nil {
				if _, err := k.Load(t.Context(), st1.KeyName); err == nil {
					t.Errorf("old key %s survived the renewal", st1.KeyName)
				}
				k.Close()
			}
			// The server saw both certificates for the device.
			certs := w("cert", "list", "--tenant", "acme", "--device", device)
			if strings.Count(certs, "good") != 2 {
				t.Fatalf("server records: %s", certs)
			}
		})
	}
}

func status(t *testing.T, env []string, state string) agentStatus {
	t.Helper()
	out, errs, code := agent(t, env, "status", "--state", state, "--output", "json")
	if code != 0 {
		t.Fatalf("status: %s", errs)
	}
	var st agentStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	return st
}

// checkCertMatchesKey opens the keystore the agent used and compares the
// key it holds with the certificate in the agent's state.
func checkCertMatchesKey(t *testing.T, spec, state, keyName string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var id struct {
		Chain string `json:"certificate"`
	}
	json.Unmarshal(b, &id)
	blk, _ := pem.Decode([]byte(id.Chain))
	if blk == nil {
		t.Fatalf("no certificate in identity.json: %s", b)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.Open(spec, keystore.WithStateDir(filepath.Join(state, "tpm-keys")))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	k, err := ks.Load(t.Context(), keyName)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		t.Fatal("the certificate does not certify the keystore's key")
	}
}

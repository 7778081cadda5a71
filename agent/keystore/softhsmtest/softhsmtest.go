// Package softhsmtest creates a private SoftHSM v2 token for a test: a real
// PKCS#11 module, configured through a SOFTHSM2_CONF and token directory
// in the test's temporary directory so it never touches the system's
// tokens.
//
// Tests skip when softhsm2 is not installed unless the environment
// variable CI is non-empty, in which case they fail.
package softhsmtest

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/agent/internal/peertest"
)

// modulePaths are where Debian and Fedora install the module.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
}

// Token is an initialised SoftHSM token.
type Token struct {
	Module string // path of libsofthsm2.so
	Label  string
	PIN    string // user PIN, random per token
	SOPIN  string
	Conf   string // SOFTHSM2_CONF file
}

// Spec returns the keystore spec for the token with an inline PIN.
func (tk *Token) Spec() string {
	return fmt.Sprintf("pkcs11:module=%s;token=%s;pin=%s", tk.Module, tk.Label, tk.PIN)
}

// New initialises a fresh token labelled label and points SOFTHSM2_CONF at
// it for the rest of the test (t.Setenv: such tests cannot be parallel).
// SoftHSM reads SOFTHSM2_CONF when the module is initialised, so every
// PKCS#11 context of the previous token must be closed before New.
func New(t testing.TB, label string) *Token {
	t.Helper()
	util := peertest.Require(t, "softhsm2-util", "softhsm2")
	tk := &Token{Label: label, PIN: randomDigits(t, 8), SOPIN: randomDigits(t, 8)}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			tk.Module = p
			break
		}
	}
	if tk.Module == "" {
		peertest.Missing(t, "libsofthsm2.so not found; install the Debian package softhsm2")
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	tk.Conf = filepath.Join(dir, "softhsm2.conf")
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(tk.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", tk.Conf)
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", tk.PIN, "--so-pin", tk.SOPIN)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return tk
}

func randomDigits(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = '0' + b[i]%10
	}
	return string(b)
}

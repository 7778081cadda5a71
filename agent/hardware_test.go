package agent_test

import (
	"context"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/agent/keystore/softhsmtest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
)

// enrollAndRenew runs the device's life on a hardware-backed keystore:
// enroll, restart, renew at two thirds of the lifetime, restart again.
func enrollAndRenew(t *testing.T, ks keystore.Keystore, kind string) {
	e := newEnv(t, nil)
	e.cfg.Keystore = ks
	id := e.enroll(t)
	ctx := context.Background()
	key, err := ks.Load(ctx, "device-1")
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(id.Certificate.PublicKey) {
		t.Fatal("certificate does not certify the hardware key")
	}
	a, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if s := a.Status(); s.KeystoreKind != kind {
		t.Errorf("keystore kind %q, want %q", s.KeystoreKind, kind)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go a.Run(runCtx)
	next := a.Status().NextRenewal
	e.clock.waitTimer(t, next)
	e.clock.Set(next) // the re-enrollment handshake is signed inside the keystore
	waitFor(t, "renewal", func() bool { return a.Status().Generation == 2 })
	waitFor(t, "old key deletion", func() bool {
		_, err := ks.Load(ctx, "device-1")
		return errors.Is(err, keystore.ErrNotFound)
	})
	checkCredential(t, e.ca, a, e.clock.Now())
	cancel()

	b, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Identity().KeyName != "device-2" {
		t.Errorf("restart loaded %s", b.Identity().KeyName)
	}
	checkCredential(t, e.ca, b, e.clock.Now())
}

func TestEnrollAndRenewTPM(t *testing.T) {
	sim := tpmtest.StartSim(t)
	ks, err := keystore.Open(sim.Spec(), keystore.WithStateDir(filepath.Join(t.TempDir(), "tpm")))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	enrollAndRenew(t, ks, keystore.KindTPM)
}

func TestEnrollAndRenewPKCS11(t *testing.T) {
	tk := softhsmtest.New(t, "ward-agent")
	pin := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pin, []byte(tk.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.Open("pkcs11:module=" + tk.Module + ";token=" + tk.Label + ";pin-source=" + pin)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	enrollAndRenew(t, ks, keystore.KindPKCS11)
}

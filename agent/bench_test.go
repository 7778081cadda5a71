package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/agent"
)

// BenchmarkEnroll measures one enrollment against an in-process EST
// server with a file keystore: cacerts, key generation, CSR, simpleenroll,
// verification and an fsynced state file.
func BenchmarkEnroll(b *testing.B) {
	e := newEnv(b, nil)
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		dev := fmt.Sprintf("bench-%d", i)
		e.ca.AddToken("tok-"+dev, dev)
		cfg := e.cfg
		cfg.Device = dev
		dir := b.TempDir()
		cfg.StateDir = filepath.Join(dir, "state")
		cfg.Keystore = openFileKeystore(b, filepath.Join(dir, "keys"))
		if _, err := agent.Enroll(ctx, cfg, agent.Token("tok-"+dev)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenew measures one renewal: cacerts, key generation, mutual
// TLS simplereenroll, state write and old key deletion.
func BenchmarkRenew(b *testing.B) {
	e := newEnv(b, nil)
	e.enroll(b)
	a, err := agent.New(e.cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	for b.Loop() {
		if err := a.Renew(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

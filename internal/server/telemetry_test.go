package server_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

const tempSchema = `{"type":"object","properties":{"celsius":{"type":"number"},"serial":{"type":"string","x-ward-classification":"confidential"}},"required":["celsius"]}`

// enrollAgent enrolls a device with the real agent package against the
// in-process server and returns the agent.
func (e *estEnv) enrollAgent(t *testing.T, device string) *agent.Agent {
	t.Helper()
	a, err := e.enroll(t, device)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// enroll is enrollAgent returning its error, so goroutines can use it.
func (e *estEnv) enroll(t *testing.T, device string) (*agent.Agent, error) {
	dir := t.TempDir()
	ks, err := keystore.Open("file:" + filepath.Join(dir, "keys"))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { ks.Close() })
	ca, err := os.ReadFile(filepath.Join(e.dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	tok, _, err := e.srv.Tokens.Create(ctx, nil, tenant.NewTokenRequest{Kind: store.TokenEnroll, Tenant: "acme", Device: device, TTL: time.Hour})
	if err != nil {
		return nil, err
	}
	cfg := agent.Config{Server: "https://" + e.srv.APIAddr(), CABundle: ca, Tenant: "acme", Device: device, Keystore: ks,
		StateDir: filepath.Join(dir, "state")}
	if _, err := agent.Enroll(ctx, cfg, agent.Token(tok)); err != nil {
		return nil, fmt.Errorf("enroll %s: %w", device, err)
	}
	a, err := agent.New(agent.Config{Keystore: ks, StateDir: cfg.StateDir})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { a.Close() })
	return a, nil
}

// TestSignedTelemetryOverMQTT: a device signs readings with its key and
// publishes them through the gateway; the server verifies, stores (with
// the confidential field sealed) and refuses a tampered or replayed
// envelope with a security event.
func TestSignedTelemetryOverMQTT(t *testing.T) {
	e := newESTEnv(t)
	if err := e.srv.RegisterSchema(ctx, "test", "acme", "temp", 1, []byte(tempSchema)); err != nil {
		t.Fatal(err)
	}
	a := e.enrollAgent(t, "sensor-1")
	conn, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.PublishTelemetry("env", "temp", 1, []byte(`{"celsius":21.5,"serial":"SN-42"}`)); err != nil {
		t.Fatal(err)
	}
	var rs []*store.Reading
	waitUntil(t, "the reading to be stored", func() bool {
		e.srv.FlushTelemetry(ctx)
		rs, _ = e.srv.Store().RecentReadings(ctx, "acme", "sensor-1", 10)
		return len(rs) == 1
	})
	if strings.Contains(string(rs[0].Payload), "SN-42") || len(rs[0].Sealed) == 0 {
		t.Fatalf("confidential field stored in clear: %s", rs[0].Payload)
	}

	t.Run("tampered", func(t *testing.T) {
		c, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		env, _ := a.SignTelemetry("temp", 1, []byte(`{"celsius":22.0}`))
		env[len(env)-10] ^= 1
		if err := c.Publish(wire.TopicTelemetry+"/env", env, 1); err == nil {
			t.Fatal("a tampered envelope was accepted")
		}
	})
	t.Run("replayed", func(t *testing.T) {
		env, _ := a.SignTelemetry("temp", 1, []byte(`{"celsius":23.0}`))
		c1, _ := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
		if err := c1.Publish(wire.TopicTelemetry+"/env", env, 1); err != nil {
			t.Fatal(err)
		}
		c1.Close()
		c2, _ := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
		defer c2.Close()
		if err := c2.Publish(wire.TopicTelemetry+"/env", env, 1); err == nil {
			t.Fatal("a replayed envelope was accepted")
		}
	})
	e.srv.Monitor.Flush(ctx)
	evs, _ := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "telemetry"})
	reasons := map[string]bool{}
	for _, ev := range evs {
		reasons[ev.Reason] = true
	}
	if !reasons["bad_signature"] || !reasons["replay"] {
		t.Fatalf("rejection events %v", reasons)
	}
	e.srv.FlushTelemetry(ctx)
	if rs, _ := e.srv.Store().RecentReadings(ctx, "acme", "sensor-1", 10); len(rs) != 2 {
		t.Fatalf("%d readings stored, want the first and the replayed one's original", len(rs))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := poll(what, cond); err != nil {
		t.Fatal(err)
	}
}

// poll is waitUntil returning its error, so goroutines can use it.
func poll(what string, cond func() bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

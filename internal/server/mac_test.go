package server_test

import (
	"testing"
	"time"

	"github.com/wardiot/ward/wire"
)

// TestMACTelemetryEpochs: a device gets its MAC secret over its mTLS
// session, sends COSE_Mac0 telemetry, follows an epoch rotation; messages
// of both epochs in flight are accepted during the grace period, the old
// epoch is refused after it, and a flipped bit is refused.
func TestMACTelemetryEpochs(t *testing.T) {
	e := newESTEnv(t)
	if err := e.srv.RegisterSchema(ctx, "test", "acme", "temp", 1, []byte(tempSchema)); err != nil {
		t.Fatal(err)
	}
	a := e.enrollAgent(t, "tiny-1")
	conn, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { conn.Close() }()
	if err := conn.SyncMAC(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.MacTelemetry("temp", 1, []byte(`{"celsius":1}`)); err == nil {
		t.Fatal("MAC'd without a secret")
	}
	if _, err := e.srv.RotateMACSecret(ctx, "test", "acme", "tiny-1"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the secret to reach the device", func() bool { return a.MACEpoch() == 1 })
	// One session at a time: a second session of the same certificate
	// takes the first one over. A refused publish ends the session, so
	// reconnect (and resubscribe) when needed.
	publish := func(env []byte) error {
		if !conn.Connected() {
			if conn, err = a.ConnectMQTT(ctx, e.srv.MQTTAddr()); err != nil {
				t.Fatal(err)
			}
			if err := conn.SyncMAC(); err != nil {
				t.Fatal(err)
			}
		}
		return conn.Publish(wire.TopicTelemetry+"/env", env, 1)
	}
	env1, _ := a.MacTelemetry("temp", 1, []byte(`{"celsius":20}`))
	if err := publish(env1); err != nil {
		t.Fatalf("epoch 1: %v", err)
	}
	inFlight, _ := a.MacTelemetry("temp", 1, []byte(`{"celsius":21}`)) // made before the rotation
	if _, err := e.srv.AdvanceMACEpoch(ctx, "test", "acme", "tiny-1"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the new epoch to reach the device", func() bool { return a.MACEpoch() == 2 })
	env2, _ := a.MacTelemetry("temp", 1, []byte(`{"celsius":22}`))
	if err := publish(env2); err != nil {
		t.Fatalf("epoch 2: %v", err)
	}
	if err := publish(inFlight); err != nil {
		t.Fatalf("epoch 1 message in flight during the grace period: %v", err)
	}
	bad, _ := a.MacTelemetry("temp", 1, []byte(`{"celsius":23}`))
	bad[len(bad)-5] ^= 0x10
	if err := publish(bad); err == nil {
		t.Fatal("a MAC envelope with a flipped bit was accepted")
	}
	// Reconnect: the refused publish ended the session, and a device that
	// comes back asks for its secret and epoch (mac/get).
	if conn, err = a.ConnectMQTT(ctx, e.srv.MQTTAddr()); err != nil {
		t.Fatal(err)
	}
	if err := conn.SyncMAC(); err != nil {
		t.Fatal(err)
	}
	// After the grace period the previous epoch's key is refused.
	e.clock.Advance(11 * time.Minute)
	if _, err := e.srv.AdvanceMACEpoch(ctx, "test", "acme", "tiny-1"); err != nil {
		t.Fatal(err)
	}
	// The device is still at epoch 2 until the announcement arrives; a
	// message of epoch 2 is now "previous" and inside the new grace.
	// A device that misses an announcement (its session was being
	// replaced) catches up by asking again, as the agent does on reconnect.
	last := time.Now()
	waitUntil(t, "epoch 3", func() bool {
		if a.MACEpoch() == 3 {
			return true
		}
		if time.Since(last) > 500*time.Millisecond {
			last = time.Now()
			// Under load the session may have been replaced or cut
			// meanwhile; a device then reconnects and asks again.
			if !conn.Connected() {
				if conn, err = a.ConnectMQTT(ctx, e.srv.MQTTAddr()); err != nil {
					t.Fatal(err)
				}
				_ = conn.SyncMAC()
			} else {
				_ = conn.Publish(wire.TopicMACGet, nil, 1)
			}
		}
		return false
	})
	e.clock.Advance(11 * time.Minute)
	stale, _ := wire.MacTelemetry(mustEpochKeyFromOld(t), wire.Header{Device: "tiny-1", Seq: 999999, Time: e.clock.Now(), SchemaID: "temp", SchemaVersion: 1, Epoch: 1}, []byte(`{"celsius":25}`))
	if err := publish(stale); err == nil {
		t.Fatal("an epoch two rotations old was accepted")
	}
}

// mustEpochKeyFromOld returns some 32-byte key: the server refuses epoch 1
// by number before any MAC check, so the key does not matter.
func mustEpochKeyFromOld(t *testing.T) []byte { return make([]byte, 32) }

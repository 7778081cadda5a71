package server_test

import (
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/wardiot/ward/internal/twin"
)

// TestTwinOfflineDeviceGetsOneDelta: three desired changes while the device
// is offline reach it as one correct delta when it reconnects; it reports
// back and the delta empties. A stale If-Match is a conflict.
func TestTwinOfflineDeviceGetsOneDelta(t *testing.T) {
	e := newESTEnv(t)
	a := e.enrollAgent(t, "thermo-1")
	for _, p := range []string{`{"setpoint":20}`, `{"mode":"eco","setpoint":21}`, `{"fan":"auto","mode":null}`} {
		if _, err := e.srv.PatchDesired(ctx, "acme", "thermo-1", "", []byte(p), twin.AnyVersion); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var deltas []map[string]any
	conn, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.SyncTwin("", func(delta json.RawMessage) (json.RawMessage, error) {
		var m map[string]any
		json.Unmarshal(delta, &m)
		mu.Lock()
		deltas = append(deltas, m)
		mu.Unlock()
		return delta, nil // apply everything as asked
	})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the delta to be applied and reported", func() bool {
		tw, _ := e.srv.GetTwin(ctx, "acme", "thermo-1", "")
		d, _ := tw.Delta()
		return tw.Reported.Version > 0 && d == nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(deltas) != 1 {
		t.Fatalf("%d deltas, want exactly one: %v", len(deltas), deltas)
	}
	got, _ := json.Marshal(deltas[0])
	if string(got) != `{"fan":"auto","setpoint":21}` {
		t.Fatalf("delta %s, want the combined change", got)
	}
	tw, _ := e.srv.GetTwin(ctx, "acme", "thermo-1", "")
	if _, err := e.srv.PatchDesired(ctx, "acme", "thermo-1", "", []byte(`{"setpoint":19}`), tw.Desired.Version-1); !errors.Is(err, twin.ErrVersionConflict) {
		t.Fatalf("stale If-Match: %v", err)
	}
}

package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
)

func init() { extra["telemetry/schemas-and-window"] = testTelemetry }

func testTelemetry(t *testing.T, s store.Store) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	mustTx(t, s, func(tx store.Tx) error {
		for v := uint32(1); v <= 2; v++ {
			if err := tx.PutSchema(ctx, &store.Schema{Tenant: "acme", ID: "temp", Version: v, Doc: []byte(`{}`), CreatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err := s.InTx(ctx, func(tx store.Tx) error {
		return tx.PutSchema(ctx, &store.Schema{Tenant: "acme", ID: "temp", Version: 2, Doc: []byte(`{}`), CreatedAt: now})
	}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate schema version: %v", err)
	}
	if l, _ := s.ListSchemas(ctx, "acme"); len(l) != 2 || l[1].Version != 2 {
		t.Fatalf("schemas: %v", l)
	}
	mk := func(seq uint64, recv time.Time) *store.Reading {
		return &store.Reading{Tenant: "acme", Device: "d1", Stream: "env", Seq: seq, Time: recv, Received: recv, SchemaID: "temp",
			SchemaVersion: 2, Payload: []byte(`{"t":1}`)}
	}
	mustTx(t, s, func(tx store.Tx) error {
		return tx.PutReadings(ctx, []*store.Reading{mk(1, now.Add(-2*time.Hour)), mk(2, now), mk(3, now), mk(2, now)})
	})
	rs, err := s.RecentReadings(ctx, "acme", "d1", 10)
	if err != nil || len(rs) != 3 || rs[0].Seq != 3 || rs[0].Sealed != nil {
		t.Fatalf("readings %v %v", rs, err)
	}
	var n int64
	mustTx(t, s, func(tx store.Tx) error {
		var err error
		n, err = tx.PruneReadings(ctx, now.Add(-time.Hour))
		return err
	})
	if n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
}

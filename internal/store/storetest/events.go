package storetest

import (
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
)

func init() { extra["events/aggregate-and-list"] = testEvents }

func testEvents(t *testing.T, s store.Store) {
	base := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	rec := func(e store.Event) bool {
		t.Helper()
		var created bool
		mustTx(t, s, func(tx store.Tx) error {
			var err error
			created, err = tx.RecordEvent(ctx, &e, time.Minute)
			return err
		})
		return created
	}
	ev := store.Event{Tenant: "acme", Type: "tls.handshake_failed", Severity: "low", Device: "d1", Reason: "unknown CA", Remote: "10.0.0.1:1", FirstAt: base}
	if !rec(ev) {
		t.Fatal("first event not created")
	}
	ev.FirstAt, ev.Remote, ev.Count = base.Add(30*time.Second), "10.0.0.2:2", 4
	if rec(ev) {
		t.Fatal("repeat inside the window created a new row")
	}
	ev.FirstAt, ev.Count = base.Add(5*time.Minute), 1
	if !rec(ev) {
		t.Fatal("repeat after the window did not create a new row")
	}
	rec(store.Event{Tenant: "acme", Type: "cert.shared", Severity: "high", Device: "d2", FirstAt: base.Add(time.Second)})
	rec(store.Event{Tenant: "globex", Type: "cert.shared", Severity: "high", Device: "d2", FirstAt: base})
	rec(store.Event{Tenant: "", Type: "tls.handshake_failed", Severity: "low", Reason: "unknown CA", FirstAt: base})

	all, err := s.ListEvents(ctx, store.EventFilter{Tenant: "acme"})
	if err != nil || len(all) != 3 {
		t.Fatalf("acme events: %v %v", all, err)
	}
	if all[0].LastAt != base.Add(5*time.Minute) {
		t.Fatalf("not newest first: %+v", all[0])
	}
	agg := all[1] // last seen at +30s: between the newer repeat and cert.shared
	if agg.Type != "tls.handshake_failed" || agg.Count != 5 || agg.Remote != "10.0.0.2:2" || !agg.FirstAt.Equal(base) {
		t.Fatalf("aggregated event %+v", agg)
	}
	if l, _ := s.ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "cert.shared"}); len(l) != 1 || l[0].Device != "d2" {
		t.Fatalf("type filter: %v", l)
	}
	if l, _ := s.ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "cert"}); len(l) != 1 || l[0].Type != "cert.shared" {
		t.Fatalf("type family filter: %v", l)
	}
	if l, _ := s.ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "cert.sh"}); len(l) != 0 {
		t.Fatalf("partial type matched: %v", l)
	}
	if l, _ := s.ListEvents(ctx, store.EventFilter{}); len(l) != 1 || l[0].Tenant != "" {
		t.Fatalf("tenant-less events: %v", l)
	}
	if l, _ := s.ListEvents(ctx, store.EventFilter{AnyTenant: true}); len(l) != 5 {
		t.Fatalf("all events: %d", len(l))
	}
}

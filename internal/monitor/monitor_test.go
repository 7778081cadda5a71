package monitor_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/storetest"
)

func TestFloodBecomesOneAuditedRow(t *testing.T) {
	s := storetest.SQLite(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := monitor.New(ctx, s, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now)
	for i := 0; i < 2000; i++ {
		m.Emit(monitor.Event{Type: monitor.TLSHandshakeFailed, Tenant: "acme", Reason: "unknown certificate authority", Remote: "127.0.0.1:1"})
	}
	m.Emit(monitor.Event{Type: monitor.CertShared, Tenant: "acme", Device: "d1", Reason: "second session"})
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	evs, err := s.ListEvents(ctx, store.EventFilter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range evs {
		if e.Type == monitor.TLSHandshakeFailed {
			total += e.Count
		}
	}
	if total != 2000 || len(evs) > 4 {
		t.Fatalf("%d rows, %d handshake failures counted; want 2000 in a few rows", len(evs), total)
	}
	recs, _ := s.ListAudit(ctx, store.AuditFilter{Tenant: "acme"})
	audited := map[string]int{}
	for _, r := range recs {
		audited[r.Action]++
	}
	if audited["event.cert.shared"] != 1 || audited["event.tls.handshake_failed"] < 1 || audited["event.tls.handshake_failed"] > 4 {
		t.Fatalf("audit entries %v", audited)
	}
	if m.Dropped() != 0 {
		t.Fatalf("%d dropped", m.Dropped())
	}
}

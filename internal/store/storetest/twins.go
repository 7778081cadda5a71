package storetest

import (
	"errors"
	"testing"

	"github.com/wardiot/ward/internal/store"
)

func init() { extra["twins/compare-and-swap"] = testTwins }

func testTwins(t *testing.T, s store.Store) {
	if _, _, err := s.GetTwin(ctx, "acme", "d1", "default"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing twin: %v", err)
	}
	mustTx(t, s, func(tx store.Tx) error { return tx.PutTwin(ctx, "acme", "d1", "default", []byte(`{"a":1}`), 0) })
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.PutTwin(ctx, "acme", "d1", "default", []byte(`{}`), 0) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create: %v", err)
	}
	mustTx(t, s, func(tx store.Tx) error { return tx.PutTwin(ctx, "acme", "d1", "default", []byte(`{"a":2}`), 1) })
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.PutTwin(ctx, "acme", "d1", "default", []byte(`{"a":3}`), 1) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale revision: %v", err)
	}
	doc, rev, err := s.GetTwin(ctx, "acme", "d1", "default")
	if err != nil || rev != 2 || string(doc) != `{"a":2}` {
		t.Fatalf("twin %s rev %d %v", doc, rev, err)
	}
}

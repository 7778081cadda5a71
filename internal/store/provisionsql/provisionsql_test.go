package provisionsql_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/provisiontest"
	"github.com/wardiot/ward/internal/store/provisionsql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/internal/store/storetest"
)

func newStore(open func(testing.TB) *sqlstore.DB) func(t *testing.T) provision.Store {
	return func(t *testing.T) provision.Store {
		db := open(t)
		return provisionsql.New(db.SQL(), db.SQLDialect())
	}
}

func TestStoreConformanceSQLite(t *testing.T) {
	provisiontest.RunStoreTests(t, newStore(storetest.SQLite))
}

func TestStoreConformancePostgres(t *testing.T) {
	storetest.PostgresDSN(t)
	provisiontest.RunStoreTests(t, newStore(storetest.Postgres))
}

// TestPrune checks that expired nonces and tokens go and live ones stay.
func TestPrune(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := context.Background()
		s := provisionsql.New(db.SQL(), db.SQLDialect())
		now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
		s.ConsumeNonce(ctx, "old", now.Add(-time.Second), now.Add(-time.Minute))
		s.ConsumeNonce(ctx, "live", now.Add(time.Minute), now)
		s.PutGroupToken(ctx, &provision.GroupToken{ID: "00000000000000aa", Tenant: "t", Group: "g", Device: "d", Hash: []byte{1}, ExpiresAt: now.Add(-time.Second)})
		s.PutGroupToken(ctx, &provision.GroupToken{ID: "00000000000000bb", Tenant: "t", Group: "g", Device: "d", Hash: []byte{1}, ExpiresAt: now.Add(time.Hour)})
		n, err := s.Prune(ctx, now)
		if err != nil || n != 2 {
			t.Fatalf("Prune = %d, %v; want 2 rows", n, err)
		}
		if err := s.ConsumeNonce(ctx, "live", now.Add(time.Minute), now); !errors.Is(err, provision.ErrConflict) {
			t.Fatalf("live nonce was pruned: %v", err)
		}
		if _, err := s.GetGroupToken(ctx, "00000000000000bb"); err != nil {
			t.Fatalf("live token was pruned: %v", err)
		}
		if _, err := s.GetGroupToken(ctx, "00000000000000aa"); !errors.Is(err, provision.ErrNotFound) {
			t.Fatalf("expired token kept: %v", err)
		}
	})
}

func TestNonceKeyBound(t *testing.T) {
	db := storetest.SQLite(t)
	s := provisionsql.New(db.SQL(), db.SQLDialect())
	now := time.Now()
	if err := s.ConsumeNonce(context.Background(), strings.Repeat("k", 201), now.Add(time.Minute), now); err == nil {
		t.Fatal("201-byte nonce key accepted")
	}
}

// TestClaimIDUnique checks the partial unique index: many records without
// a claim ID, but never two with the same one.
func TestClaimIDUnique(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := context.Background()
		s := provisionsql.New(db.SQL(), db.SQLDialect())
		for _, id := range []string{"a", "b"} {
			if err := s.CreateDevice(ctx, &provision.Device{Tenant: "t", ID: id, State: provision.StateProvisioned}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.CreateDevice(ctx, &provision.Device{Tenant: "pool", ID: "c", State: provision.StateClaimable, ClaimID: "CLAIM123"}); err != nil {
			t.Fatal(err)
		}
		err := s.CreateDevice(ctx, &provision.Device{Tenant: "pool2", ID: "d", State: provision.StateClaimable, ClaimID: "CLAIM123"})
		if !errors.Is(err, provision.ErrConflict) {
			t.Fatalf("duplicate claim ID: %v, want ErrConflict", err)
		}
	})
}

package attestsql_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/attest/attesttest"
	"github.com/wardiot/ward/internal/store/attestsql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/internal/store/storetest"
)

func open(db *sqlstore.DB) *attestsql.Store { return attestsql.New(db.SQL(), db.SQLDialect()) }

func subject(db *sqlstore.DB) attesttest.Subject {
	s := open(db)
	return attesttest.Subject{Store: s, SetPolicy: s.SetPolicy}
}

func TestStoreSQLite(t *testing.T) {
	attesttest.RunStoreTests(t, func(t *testing.T) attesttest.Subject { return subject(storetest.SQLite(t)) })
}

func TestStorePostgres(t *testing.T) {
	storetest.PostgresDSN(t)
	attesttest.RunStoreTests(t, func(t *testing.T) attesttest.Subject { return subject(storetest.Postgres(t)) })
}

// TestRefValuesMustMatchDocument: what is stored is the signed document,
// so values that disagree with it are refused rather than silently
// replaced by the document's on read.
func TestRefValuesMustMatchDocument(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		s := open(db)
		ctx := context.Background()
		r, err := attest.ParseRefValues([]byte(`{"ward_attest":{"schema":1,"hw_model":"gw-100","release":"fw@1",
			"hash":"sha256","pcrs":{"7":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}`))
		if err != nil {
			t.Fatal(err)
		}
		r.Tenant = "t1"
		bad := *r
		bad.Release = "fw@2"
		if err := s.PutRefValues(ctx, bad); err == nil {
			t.Fatal("stored reference values whose document names another release")
		}
		noDoc := *r
		noDoc.Doc = nil
		if err := s.PutRefValues(ctx, noDoc); err == nil {
			t.Fatal("stored reference values without their document")
		}
		if _, err := s.RefValues(ctx, "t1", "gw-100", "fw@2"); !errors.Is(err, attest.ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
	})
}

func TestRefValueKey(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		s := open(db)
		ctx := context.Background()
		if _, err := s.RefValueKey(ctx, "t1"); !errors.Is(err, attest.ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
		pub, _, _ := ed25519.GenerateKey(nil)
		if err := s.SetRefValueKey(ctx, "t1", pub); err != nil {
			t.Fatal(err)
		}
		k, err := s.RefValueKey(ctx, "t1")
		if err != nil {
			t.Fatal(err)
		}
		if !pub.Equal(k) {
			t.Fatal("key read back differs")
		}
		if _, err := s.RefValueKey(ctx, "t2"); !errors.Is(err, attest.ErrNotFound) {
			t.Fatalf("other tenant: got %v, want ErrNotFound", err)
		}
	})
}

func TestDeleteTenant(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		s := open(db)
		ctx := context.Background()
		for _, tenant := range []string{"t1", "t2"} {
			if err := s.PutAK(ctx, attest.AKRecord{Tenant: tenant, Device: "d1", Public: []byte("ak")}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.AdvanceCounters(ctx, tenant, "d1", attest.Counters{Clock: 1}); err != nil {
				t.Fatal(err)
			}
			if err := s.SetPolicy(ctx, tenant, "", attest.DefaultPolicy()); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.DeleteTenant(ctx, "t1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AK(ctx, "t1", "d1"); !errors.Is(err, attest.ErrNotFound) {
			t.Fatalf("deleted tenant's AK: %v", err)
		}
		if _, found, _ := s.Counters(ctx, "t1", "d1"); found {
			t.Fatal("deleted tenant's counters remain")
		}
		if _, err := s.Policy(ctx, "t1", ""); !errors.Is(err, attest.ErrNotFound) {
			t.Fatalf("deleted tenant's policy: %v", err)
		}
		if _, err := s.AK(ctx, "t2", "d1"); err != nil {
			t.Fatalf("other tenant's AK: %v", err)
		}
	})
}

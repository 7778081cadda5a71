package postgres_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/postgres"
	"github.com/wardiot/ward/internal/store/storetest"
)

// TestConformance runs the store suite against a real PostgreSQL named by
// WARD_TEST_POSTGRES (CI sets it to the local server). Each subtest gets
// its own schema, dropped afterwards.
func TestConformance(t *testing.T) {
	dsn := os.Getenv("WARD_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("set WARD_TEST_POSTGRES=postgres://user@host:port/db to run the store suite on PostgreSQL")
	}
	storetest.Run(t, func(t *testing.T) store.Store {
		return Fresh(t, dsn)
	})
}

// Fresh returns a store in a new, empty schema of the database at dsn.
func Fresh(t *testing.T, dsn string) store.Store {
	t.Helper()
	ctx := context.Background()
	var b [6]byte
	rand.Read(b[:])
	schema := "wardtest_" + hex.EncodeToString(b[:])
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema (is PostgreSQL at WARD_TEST_POSTGRES running?): %v", err)
	}
	t.Cleanup(func() {
		a, err := sql.Open("pgx", dsn)
		if err == nil {
			a.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
			a.Close()
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	s, err := postgres.Open(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

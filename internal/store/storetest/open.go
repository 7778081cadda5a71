package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/internal/store/postgres"
	"github.com/wardiot/ward/internal/store/sqlite"
	"github.com/wardiot/ward/internal/store/sqlstore"
)

// SQLite returns a fresh SQLite store in a temporary directory.
func SQLite(t testing.TB) *sqlstore.DB {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// PostgresDSN returns WARD_TEST_POSTGRES or skips the test with a message.
func PostgresDSN(t testing.TB) string {
	dsn := os.Getenv("WARD_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("PostgreSQL tests skipped: set WARD_TEST_POSTGRES=postgres://user@host:port/db")
	}
	return dsn
}

// Postgres returns a store in a new, empty schema of the database named by
// WARD_TEST_POSTGRES (skipping if unset); the schema is dropped afterwards.
func Postgres(t testing.TB) *sqlstore.DB {
	t.Helper()
	dsn := PostgresDSN(t)
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

// Each runs fn against every available engine: SQLite always, PostgreSQL
// when WARD_TEST_POSTGRES is set.
func Each(t *testing.T, fn func(t *testing.T, s *sqlstore.DB)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLite(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, Postgres(t)) })
}

// Package sqlite opens Ward's embedded default store: a SQLite database file
// in the data directory, through the pure-Go modernc.org/sqlite driver, so
// a server needs no setup and no cgo.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"

	"github.com/pressly/goose/v3"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/wardiot/ward/internal/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Dialect is the SQLite dialect of the shared SQL.
var Dialect = sqlstore.Dialect{
	Name: "sqlite",
	// Write transactions start with BEGIN IMMEDIATE (see Open), so a
	// transaction that read the audit head already excludes other writers.
	ForUpdate:    "",
	SerialWrites: true,
	IsUnique: func(err error) bool {
		var e *sqlite.Error
		if errors.As(err, &e) {
			return e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
		}
		return false
	},
	// SQLite answers BUSY without waiting for busy_timeout when waiting
	// could deadlock (a connection upgrading its read snapshot to write);
	// seen under load as "begin transaction: database is locked". The
	// transaction is rolled back, so running it again is safe.
	IsRetryable: func(err error) bool {
		var e *sqlite.Error
		if errors.As(err, &e) {
			switch e.Code() & 0xff {
			case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
				return true
			}
		}
		return false
	},
}

// maxConns bounds the pool: readers run in parallel under WAL, writers
// queue on busy_timeout.
const maxConns = 8

// Open opens (creating with mode 0600 if needed) the database at path and
// applies pending migrations.
func Open(ctx context.Context, path string) (*sqlstore.DB, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open database file: %w", err)
	}
	f.Close()
	// synchronous(FULL): an acknowledged write survives power loss, not
	// just a process crash. busy_timeout: writers queue instead of failing.
	// secure_delete(1): deleted rows are overwritten with zeros, so a
	// deleted tenant's wrapped data key does not linger in free pages.
	// _txlock=immediate: write transactions take the write lock up front, so
	// read-then-write sequences (audit head) cannot deadlock or interleave.
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(1)&_pragma=secure_delete(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// Keep connections: opening one re-runs the pragmas and re-prepares
	// every cached statement. Writers are serialised by SQLite anyway, so
	// a handful of connections serves any number of concurrent requests.
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxIdleTime(0)
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	s := sqlstore.New(db, Dialect)
	s.Scrub = func(ctx context.Context) error {
		// Fold the write-ahead log into the database and truncate it, so
		// old page images (holding deleted rows) leave the WAL file too.
		_, err := db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
		return err
	}
	return s, nil
}

func migrate(ctx context.Context, db *sql.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, sub, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("prepare migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

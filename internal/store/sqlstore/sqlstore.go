// Package sqlstore implements store.Store on database/sql. The SQL is
// shared by every engine; a Dialect supplies the few differences
// (placeholders, lock syntax, how a unique-key violation is reported).
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/store"
)

// Dialect describes one SQL engine.
type Dialect struct {
	// Name is "sqlite" or "postgres".
	Name string
	// Dollar placeholders ($1, $2) instead of '?'.
	Dollar bool
	// ForUpdate is appended to SELECTs that must lock the rows they read
	// ("" where the transaction already excludes other writers).
	ForUpdate string
	// IsUnique reports whether err is a unique-constraint violation.
	IsUnique func(error) bool
	// SerialWrites makes the store run one write transaction at a time in
	// this process. SQLite allows one writer anyway; queueing writers on a
	// mutex instead of in SQLite's busy handler (which polls with growing
	// sleeps and holds a pooled connection while it waits) keeps latency
	// low and never starves readers of connections.
	SerialWrites bool
	// IsRetryable reports whether a transaction failed only because of
	// contention (SQLite busy, PostgreSQL serialization failure or
	// deadlock) and may simply be run again.
	IsRetryable func(error) bool
}

// DB is a store.Store over a *sql.DB.
type DB struct {
	q
	db      *sql.DB
	writeMu sync.Mutex
	// Scrub, if set, removes residues of deleted rows from the engine's
	// files (see store.Scrubber).
	Scrub func(ctx context.Context) error
}

// ScrubDeleted implements store.Scrubber.
func (s *DB) ScrubDeleted(ctx context.Context) error {
	if s.Scrub == nil {
		return nil
	}
	return s.Scrub(ctx)
}

var _ store.Store = (*DB)(nil)

// New wraps db. The schema must already be migrated.
func New(db *sql.DB, d Dialect) *DB {
	c := &stmtCache{db: db, m: map[string]*sql.Stmt{}}
	return &DB{q: q{x: db, d: &d, c: c}, db: db}
}

// SQL returns the underlying handle, for migrations and tests.
func (s *DB) SQL() *sql.DB { return s.db }

// SQLDialect returns the engine's dialect, so that stores of other
// packages (provisionsql, deviceauthsql) can share the handle and write
// the same portable SQL.
func (s *DB) SQLDialect() Dialect { return *s.d }

// Dialect implements store.Store.
func (s *DB) Dialect() string { return s.d.Name }

// Ping implements store.Store.
func (s *DB) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close implements store.Store.
func (s *DB) Close() error {
	s.c.mu.Lock()
	for _, st := range s.c.m {
		st.Close()
	}
	s.c.m = map[string]*sql.Stmt{}
	s.c.mu.Unlock()
	return s.db.Close()
}

// maxTxAttempts bounds retries of a transaction that lost to contention.
const maxTxAttempts = 8

// InTx implements store.Store. A transaction that fails only because of
// contention is run again (fn must therefore have no effects outside the
// transaction that a second run would duplicate).
func (s *DB) InTx(ctx context.Context, fn func(store.Tx) error) error {
	if s.d.SerialWrites {
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
	}
	for attempt := 1; ; attempt++ {
		err := s.inTx(ctx, fn)
		if err == nil || s.d.IsRetryable == nil || !s.d.IsRetryable(err) || attempt == maxTxAttempts {
			return err
		}
		// Jittered, growing pause: 1-2 ms, 2-4 ms, ... up to ~128 ms.
		d := time.Duration(1<<attempt) * time.Millisecond / 2
		d += time.Duration(rand.Int64N(int64(d) + 1))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(d):
		}
	}
}

func (s *DB) inTx(ctx context.Context, fn func(store.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	t := &txq{q: q{x: tx, d: s.d, c: s.c, tx: tx, local: map[string]*sql.Stmt{}}}
	if err := fn(t); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// q holds the queries shared by DB and a transaction.
type q struct {
	x  execer
	d  *Dialect
	c  *stmtCache
	tx *sql.Tx // nil outside a transaction
	// local holds statements prepared on the transaction's own connection
	// for queries not in the shared cache yet (closed with the tx).
	local map[string]*sql.Stmt
}

// stmtCache keeps prepared statements so that hot queries are parsed once
// per connection instead of on every call (parsing was the largest single
// cost of an enrollment on SQLite). database/sql re-prepares a statement
// on each pooled connection on first use and remembers it there.
type stmtCache struct {
	db *sql.DB
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

// maxCachedStmts bounds the cache; queries with formatted parts (LIMIT n)
// beyond it run unprepared.
const maxCachedStmts = 256

func (c *stmtCache) get(ctx context.Context, query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m[query]; ok {
		return st
	}
	if len(c.m) >= maxCachedStmts {
		return nil
	}
	st, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		return nil // run unprepared; the error resurfaces there
	}
	c.m[query] = st
	return st
}

// stmt returns the cached statement for query, bound to the transaction
// if there is one, or nil to run the query unprepared.
func (q q) stmt(ctx context.Context, query string) *sql.Stmt {
	if q.c == nil {
		return nil
	}
	if q.tx != nil {
		// Inside a transaction, never prepare through the pool: that needs
		// a second connection while this one holds the write lock, and
		// with every pooled connection waiting for that lock it deadlocks.
		// A statement already cached is re-bound to the transaction's own
		// connection.
		if st := q.c.lookup(query); st != nil {
			return q.tx.StmtContext(ctx, st)
		}
		if st, ok := q.local[query]; ok {
			return st
		}
		// Prepared on the transaction's connection: no second connection
		// needed, and a batch of inserts parses its statement once.
		st, err := q.tx.PrepareContext(ctx, query)
		if err != nil {
			return nil
		}
		q.local[query] = st
		return st
	}
	return q.c.get(ctx, query)
}

func (c *stmtCache) lookup(query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[query]
}

type txq struct{ q }

var _ store.Tx = (*txq)(nil)

var rebound sync.Map // query text -> dollar-placeholder text

// sql rewrites '?' placeholders for engines that want $n. Queries in this
// package never contain '?' inside string literals.
func (q q) sql(s string) string { return q.d.Rebind(s) }

// Rebind rewrites the '?' placeholders of s for engines that want $n. The
// query must not contain '?' inside string literals.
func (d *Dialect) Rebind(s string) string {
	if !d.Dollar {
		return s
	}
	if v, ok := rebound.Load(s); ok {
		return v.(string)
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(s[i])
	}
	rebound.Store(s, b.String())
	return b.String()
}

func (q q) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	var err error
	if st := q.stmt(ctx, q.sql(query)); st != nil {
		res, err = st.ExecContext(ctx, args...)
	} else {
		res, err = q.x.ExecContext(ctx, q.sql(query), args...)
	}
	if err != nil && q.d.IsUnique != nil && q.d.IsUnique(err) {
		return nil, fmt.Errorf("%w: %v", store.ErrConflict, err)
	}
	return res, err
}

func (q q) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := q.stmt(ctx, q.sql(query)); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return q.x.QueryContext(ctx, q.sql(query), args...)
}

func (q q) row(ctx context.Context, query string, args ...any) *sql.Row {
	if st := q.stmt(ctx, q.sql(query)); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return q.x.QueryRowContext(ctx, q.sql(query), args...)
}

// Times are stored as Unix nanoseconds (0 = unset) so that both engines
// compare and order them identically.
func ts(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromTS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func notFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	return err
}

func affectedOne(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	return nil
}

// blob keeps empty byte slices from being written as NULL (drivers differ
// on whether a nil or zero-length []byte is NULL).
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

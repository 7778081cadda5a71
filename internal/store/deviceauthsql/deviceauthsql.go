// Package deviceauthsql implements deviceauth.Store in SQL, on the handle
// and dialect of the server's store (SQLite or PostgreSQL), over the
// tables of migration 00008.
//
// Single use holds across server nodes because each guarantee is one
// conditional statement: a refresh token is spent by one UPDATE ... WHERE
// used_at = 0, an assertion ID by one INSERT ... ON CONFLICT DO UPDATE
// WHERE expired. Revocation is a row in its own table that every lookup
// consults, so a token written into a family while it is being revoked is
// refused as well.
package deviceauthsql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/internal/store/sqlstore"
)

// maxPutTokens bounds one PutTokens call; a grant writes two tokens, so
// more means a caller bug, not a reason to hold a write lock for long.
const maxPutTokens = 16

// Store is a deviceauth.Store over a *sql.DB.
type Store struct {
	db *sql.DB
	d  sqlstore.Dialect
}

var _ deviceauth.Store = (*Store)(nil)

// New returns a Store on db, whose schema must be migrated (sqlite.Open and
// postgres.Open do it). Pass the server store's handle and dialect:
// deviceauthsql.New(s.SQL(), s.SQLDialect()).
func New(db *sql.DB, d sqlstore.Dialect) *Store { return &Store{db: db, d: d} }

const tokenCols = `hash, kind, family, tenant_id, device, cert_serial, issued_at, expires_at, family_expires_at`

// notRevoked is the condition every lookup of device_tokens adds.
const notRevoked = `NOT EXISTS (SELECT 1 FROM device_token_revocations r WHERE r.family = device_tokens.family)`

// PutTokens implements deviceauth.Store, in one transaction.
func (s *Store) PutTokens(ctx context.Context, toks []deviceauth.Token) error {
	if len(toks) > maxPutTokens {
		return fmt.Errorf("deviceauthsql: %d tokens in one call, at most %d", len(toks), maxPutTokens)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("deviceauthsql: begin transaction: %w", err)
	}
	defer tx.Rollback()
	for _, t := range toks {
		var revoked int
		err := tx.QueryRowContext(ctx, s.d.Rebind(`SELECT COUNT(*) FROM device_token_revocations WHERE family = ?`), t.Family).Scan(&revoked)
		if err != nil {
			return fmt.Errorf("deviceauthsql: %w", err)
		}
		if revoked > 0 {
			return fmt.Errorf("deviceauthsql: token family %s is revoked", t.Family)
		}
		if _, err := tx.ExecContext(ctx, s.d.Rebind(`INSERT INTO device_tokens (`+tokenCols+`, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)`),
			t.Hash[:], int64(t.Kind), t.Family, t.Tenant, t.Device, t.CertSerial,
			ts(t.IssuedAt), ts(t.ExpiresAt), ts(t.FamilyExpiresAt)); err != nil {
			if s.d.IsUnique != nil && s.d.IsUnique(err) {
				return errors.New("deviceauthsql: a token with this hash exists")
			}
			return fmt.Errorf("deviceauthsql: put token: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("deviceauthsql: commit: %w", err)
	}
	return nil
}

type scanner interface{ Scan(...any) error }

func scanToken(sc scanner, extra ...any) (*deviceauth.Token, error) {
	var t deviceauth.Token
	var hash []byte
	var kind, issued, expires, famExpires int64
	dest := append([]any{&hash, &kind, &t.Family, &t.Tenant, &t.Device, &t.CertSerial, &issued, &expires, &famExpires}, extra...)
	if err := sc.Scan(dest...); err != nil {
		return nil, err
	}
	if len(hash) != len(t.Hash) {
		return nil, fmt.Errorf("deviceauthsql: stored hash is %d bytes", len(hash))
	}
	copy(t.Hash[:], hash)
	t.Kind = deviceauth.Kind(kind)
	t.IssuedAt, t.ExpiresAt, t.FamilyExpiresAt = fromTS(issued), fromTS(expires), fromTS(famExpires)
	return &t, nil
}

// AccessToken implements deviceauth.Store.
func (s *Store) AccessToken(ctx context.Context, h deviceauth.Hash) (*deviceauth.Token, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx, s.d.Rebind(`SELECT `+tokenCols+` FROM device_tokens
		WHERE hash = ? AND kind = ? AND `+notRevoked), h[:], int64(deviceauth.KindAccess)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, deviceauth.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("deviceauthsql: %w", err)
	}
	return t, nil
}

// UseRefreshToken implements deviceauth.Store: one UPDATE ... RETURNING
// spends the token; only when it changes nothing does a read tell reuse
// from absence. used_at only ever goes from 0 to a time, so that read
// cannot mistake a reuse for a first use.
func (s *Store) UseRefreshToken(ctx context.Context, h deviceauth.Hash, now time.Time) (*deviceauth.Token, error) {
	at := now.UnixNano()
	if at == 0 {
		return nil, errors.New("deviceauthsql: zero time")
	}
	t, err := scanToken(s.db.QueryRowContext(ctx, s.d.Rebind(`UPDATE device_tokens SET used_at = ?
		WHERE hash = ? AND kind = ? AND used_at = 0 AND `+notRevoked+` RETURNING `+tokenCols),
		at, h[:], int64(deviceauth.KindRefresh)))
	if err == nil {
		return t, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("deviceauthsql: %w", err)
	}
	var used int64
	t, err = scanToken(s.db.QueryRowContext(ctx, s.d.Rebind(`SELECT `+tokenCols+`, used_at FROM device_tokens
		WHERE hash = ? AND kind = ?`), h[:], int64(deviceauth.KindRefresh)), &used)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, deviceauth.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("deviceauthsql: %w", err)
	}
	if used != 0 {
		return t, deviceauth.ErrReused
	}
	return nil, deviceauth.ErrNotFound // unused, of a revoked family
}

// RevokeFamily implements deviceauth.Store. The revocation row keeps the
// family's absolute deadline so Prune knows when it can go.
func (s *Store) RevokeFamily(ctx context.Context, family string) error {
	_, err := s.db.ExecContext(ctx, s.d.Rebind(`INSERT INTO device_token_revocations (family, expires_at)
		SELECT ?, COALESCE(MAX(family_expires_at), 0) FROM device_tokens WHERE family = ?
		ON CONFLICT (family) DO NOTHING`), family, family)
	if err != nil {
		return fmt.Errorf("deviceauthsql: revoke family: %w", err)
	}
	return nil
}

// UseAssertionID implements deviceauth.Store: one upsert that overwrites a
// key only once its record has expired.
func (s *Store) UseAssertionID(ctx context.Context, k deviceauth.Hash, expiresAt, now time.Time) error {
	res, err := s.db.ExecContext(ctx, s.d.Rebind(`INSERT INTO device_assertion_ids (k, expires_at) VALUES (?, ?)
		ON CONFLICT (k) DO UPDATE SET expires_at = excluded.expires_at WHERE device_assertion_ids.expires_at <= ?`),
		k[:], expiresAt.UnixNano(), now.UnixNano())
	if err != nil {
		return fmt.Errorf("deviceauthsql: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("deviceauthsql: %w", err)
	}
	if n == 0 {
		return deviceauth.ErrReused
	}
	return nil
}

// Prune deletes what can no longer matter at now: tokens past ExpiresAt
// (a used refresh token is kept until then so its reuse is recognised),
// assertion IDs past their expiry, and revocations of families past their
// absolute deadline that have no tokens left. The server calls it
// periodically. It returns how many rows went.
func (s *Store) Prune(ctx context.Context, now time.Time) (int64, error) {
	var total int64
	for _, q := range []string{
		`DELETE FROM device_tokens WHERE expires_at <= ?`,
		`DELETE FROM device_assertion_ids WHERE expires_at <= ?`,
		`DELETE FROM device_token_revocations WHERE expires_at <> 0 AND expires_at <= ?
			AND NOT EXISTS (SELECT 1 FROM device_tokens t WHERE t.family = device_token_revocations.family)`,
	} {
		res, err := s.db.ExecContext(ctx, s.d.Rebind(q), now.UnixNano())
		if err != nil {
			return total, fmt.Errorf("deviceauthsql: prune: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

// Times are Unix nanoseconds, 0 for the zero time, as in sqlstore.
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

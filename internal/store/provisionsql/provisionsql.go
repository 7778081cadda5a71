// Package provisionsql implements provision.Store in SQL, on the handle and
// dialect of the server's store (SQLite or PostgreSQL), over the tables of
// migration 00007.
//
// Its device records (table provision_devices) are provisioning's registry:
// how a device ID was onboarded, its bootstrap-credential fingerprint, TPM
// attestation key and claim state. They are not the gateway's devices
// table (store.Device: active, disabled, quarantined, decommissioned). Both
// are keyed by (tenant, device ID); the server creates the store.Device
// when an enrollment succeeds, so a provisioned device has one row in each.
// A claimable device exists only here, in its maker's pool tenant.
//
// Every single-use guarantee is one conditional statement, so it holds
// across server nodes sharing a PostgreSQL database.
package provisionsql

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/store/sqlstore"
)

// maxNonceKey is the longest nonce key accepted (the provision.Store
// contract's bound), so a caller bug cannot fill the table with huge keys.
const maxNonceKey = 200

// Store is a provision.Store over a *sql.DB.
type Store struct {
	db *sql.DB
	d  sqlstore.Dialect
}

var _ provision.Store = (*Store)(nil)

// New returns a Store on db, whose schema must be migrated (sqlite.Open and
// postgres.Open do it). Pass the server store's handle and dialect:
// provisionsql.New(s.SQL(), s.SQLDialect()).
func New(db *sql.DB, d sqlstore.Dialect) *Store { return &Store{db: db, d: d} }

func (s *Store) exec(ctx context.Context, x execer, query string, args ...any) (sql.Result, error) {
	res, err := x.ExecContext(ctx, s.d.Rebind(query), args...)
	if err != nil && s.d.IsUnique != nil && s.d.IsUnique(err) {
		return nil, fmt.Errorf("%w: %v", provision.ErrConflict, err)
	}
	return res, err
}

func (s *Store) row(ctx context.Context, query string, args ...any) *sql.Row {
	return s.db.QueryRowContext(ctx, s.d.Rebind(query), args...)
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// PutGroup implements provision.Store. One upsert whose update applies only
// if the stored ID equals g.ID: no read-then-write window.
func (s *Store) PutGroup(ctx context.Context, g *provision.Group) error {
	if g.ID == "" {
		return errors.New("group has no ID")
	}
	doc, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("encode group %s/%s: %w", g.Tenant, g.Name, err)
	}
	res, err := s.exec(ctx, s.db, `INSERT INTO provision_groups (tenant_id, name, id, doc) VALUES (?, ?, ?, ?)
		ON CONFLICT (tenant_id, name) DO UPDATE SET doc = excluded.doc WHERE provision_groups.id = excluded.id`,
		g.Tenant, g.Name, g.ID, string(doc))
	if err != nil {
		return fmt.Errorf("put group %s/%s: %w", g.Tenant, g.Name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("group %s/%s exists with another ID: %w", g.Tenant, g.Name, provision.ErrConflict)
	}
	return nil
}

func decodeGroup(doc string) (*provision.Group, error) {
	var g provision.Group
	if err := json.Unmarshal([]byte(doc), &g); err != nil {
		return nil, fmt.Errorf("decode stored group: %w", err)
	}
	return &g, nil
}

// GetGroup implements provision.Store.
func (s *Store) GetGroup(ctx context.Context, tenant, name string) (*provision.Group, error) {
	var doc string
	err := s.row(ctx, `SELECT doc FROM provision_groups WHERE tenant_id = ? AND name = ?`, tenant, name).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("group %s/%s: %w", tenant, name, provision.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return decodeGroup(doc)
}

// ListGroups implements provision.Store.
func (s *Store) ListGroups(ctx context.Context, tenant string) ([]*provision.Group, error) {
	query, args := `SELECT doc FROM provision_groups ORDER BY tenant_id, name`, []any(nil)
	if tenant != "" {
		query, args = `SELECT doc FROM provision_groups WHERE tenant_id = ? ORDER BY name`, []any{tenant}
	}
	rows, err := s.db.QueryContext(ctx, s.d.Rebind(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*provision.Group
	for rows.Next() {
		var doc string
		if err := rows.Scan(&doc); err != nil {
			return nil, err
		}
		g, err := decodeGroup(doc)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// DeleteGroup implements provision.Store. The group and its tokens go in
// one transaction.
func (s *Store) DeleteGroup(ctx context.Context, tenant, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer tx.Rollback()
	res, err := s.exec(ctx, tx, `DELETE FROM provision_groups WHERE tenant_id = ? AND name = ?`, tenant, name)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("group %s/%s: %w", tenant, name, provision.ErrNotFound)
	}
	if _, err := s.exec(ctx, tx, `DELETE FROM provision_group_tokens WHERE tenant_id = ? AND grp = ?`, tenant, name); err != nil {
		return err
	}
	return tx.Commit()
}

const deviceCols = `tenant_id, id, grp, state, provisioned_at, fingerprint, ak_public, owner, claim_id, claim_salt, claim_hash`

func deviceArgs(d *provision.Device) []any {
	return []any{d.Tenant, d.ID, d.Group, d.State, ts(d.ProvisionedAt), d.Fingerprint, blob(d.AKPublic),
		d.Owner, d.ClaimID, blob(d.ClaimSalt), blob(d.ClaimHash)}
}

func (s *Store) device(ctx context.Context, where string, args ...any) (*provision.Device, error) {
	var d provision.Device
	var at int64
	err := s.row(ctx, `SELECT `+deviceCols+` FROM provision_devices WHERE `+where, args...).Scan(
		&d.Tenant, &d.ID, &d.Group, &d.State, &at, &d.Fingerprint, &d.AKPublic, &d.Owner, &d.ClaimID, &d.ClaimSalt, &d.ClaimHash)
	if err != nil {
		return nil, err
	}
	d.ProvisionedAt = fromTS(at)
	d.AKPublic, d.ClaimSalt, d.ClaimHash = nilIfEmpty(d.AKPublic), nilIfEmpty(d.ClaimSalt), nilIfEmpty(d.ClaimHash)
	return &d, nil
}

// GetDevice implements provision.Store.
func (s *Store) GetDevice(ctx context.Context, tenant, id string) (*provision.Device, error) {
	d, err := s.device(ctx, `tenant_id = ? AND id = ?`, tenant, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("device %s/%s: %w", tenant, id, provision.ErrNotFound)
	}
	return d, err
}

// CreateDevice implements provision.Store: one INSERT, so the primary key
// (and the unique claim ID) decide which of two racing enrollments wins.
func (s *Store) CreateDevice(ctx context.Context, d *provision.Device) error {
	if _, err := s.exec(ctx, s.db, `INSERT INTO provision_devices (`+deviceCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		deviceArgs(d)...); err != nil {
		return fmt.Errorf("create device %s/%s: %w", d.Tenant, d.ID, err)
	}
	return nil
}

// ReplaceDevice implements provision.Store: one UPDATE conditioned on the
// stored state. Only when it changes nothing does a read tell ErrNotFound
// from ErrConflict.
func (s *Store) ReplaceDevice(ctx context.Context, d *provision.Device, prevState string) error {
	args := deviceArgs(d)
	res, err := s.exec(ctx, s.db, `UPDATE provision_devices SET grp = ?, state = ?, provisioned_at = ?, fingerprint = ?,
		ak_public = ?, owner = ?, claim_id = ?, claim_salt = ?, claim_hash = ? WHERE tenant_id = ? AND id = ? AND state = ?`,
		append(args[2:], d.Tenant, d.ID, prevState)...)
	if err != nil {
		return fmt.Errorf("replace device %s/%s: %w", d.Tenant, d.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 1 {
		return nil
	}
	if _, err := s.GetDevice(ctx, d.Tenant, d.ID); err != nil {
		return err
	}
	return fmt.Errorf("device %s/%s is no longer %q: %w", d.Tenant, d.ID, prevState, provision.ErrConflict)
}

// DeviceByClaimID implements provision.Store.
func (s *Store) DeviceByClaimID(ctx context.Context, claimID string) (*provision.Device, error) {
	if claimID == "" {
		return nil, fmt.Errorf("empty claim ID: %w", provision.ErrNotFound)
	}
	d, err := s.device(ctx, `claim_id = ?`, claimID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("claim: %w", provision.ErrNotFound)
	}
	return d, err
}

// PutGroupToken implements provision.Store.
func (s *Store) PutGroupToken(ctx context.Context, t *provision.GroupToken) error {
	if _, err := s.exec(ctx, s.db, `INSERT INTO provision_group_tokens (id, tenant_id, grp, device, hash, created_at, expires_at, used_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, t.ID, t.Tenant, t.Group, t.Device, blob(t.Hash), ts(t.CreatedAt), ts(t.ExpiresAt), ts(t.UsedAt)); err != nil {
		return fmt.Errorf("put group token: %w", err)
	}
	return nil
}

// GetGroupToken implements provision.Store.
func (s *Store) GetGroupToken(ctx context.Context, id string) (*provision.GroupToken, error) {
	var t provision.GroupToken
	var created, expires, used int64
	err := s.row(ctx, `SELECT id, tenant_id, grp, device, hash, created_at, expires_at, used_at FROM provision_group_tokens WHERE id = ?`, id).
		Scan(&t.ID, &t.Tenant, &t.Group, &t.Device, &t.Hash, &created, &expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("group token: %w", provision.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	t.CreatedAt, t.ExpiresAt, t.UsedAt = fromTS(created), fromTS(expires), fromTS(used)
	return &t, nil
}

// UseGroupToken implements provision.Store: one UPDATE ... WHERE used_at =
// 0, so of racing redemptions on any nodes exactly one changes the row.
func (s *Store) UseGroupToken(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return errors.New("use group token: zero time")
	}
	res, err := s.exec(ctx, s.db, `UPDATE provision_group_tokens SET used_at = ? WHERE id = ? AND used_at = 0`, ts(at), id)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 1 {
		return nil
	}
	if _, err := s.GetGroupToken(ctx, id); err != nil {
		return err
	}
	return fmt.Errorf("group token already used: %w", provision.ErrConflict)
}

// ConsumeNonce implements provision.Store: one upsert that replaces the
// record only if it has expired.
func (s *Store) ConsumeNonce(ctx context.Context, key string, expires, now time.Time) error {
	if len(key) > maxNonceKey {
		return fmt.Errorf("nonce key is %d bytes, at most %d", len(key), maxNonceKey)
	}
	res, err := s.exec(ctx, s.db, `INSERT INTO provision_nonces (k, expires_at) VALUES (?, ?)
		ON CONFLICT (k) DO UPDATE SET expires_at = excluded.expires_at WHERE provision_nonces.expires_at <= ?`,
		key, expires.UnixNano(), now.UnixNano())
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("nonce already used: %w", provision.ErrConflict)
	}
	return nil
}

// Prune deletes nonce records and group tokens that expired before now;
// neither can be used any more. The server calls it periodically. It
// returns how many rows went.
func (s *Store) Prune(ctx context.Context, now time.Time) (int64, error) {
	var total int64
	for _, q := range []string{
		`DELETE FROM provision_nonces WHERE expires_at <= ?`,
		`DELETE FROM provision_group_tokens WHERE expires_at <= ?`,
	} {
		res, err := s.exec(ctx, s.db, q, now.UnixNano())
		if err != nil {
			return total, fmt.Errorf("prune provisioning records: %w", err)
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

// blob keeps nil byte slices out of NOT NULL columns.
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

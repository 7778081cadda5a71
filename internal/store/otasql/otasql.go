// Package otasql keeps OTA state in the server's SQL database, SQLite or
// PostgreSQL, so that several server nodes share one TUF repository,
// rollout state and anti-rollback floors. Its tables come from migration
// 00010. Each store is scoped to one tenant: the tables are shared and
// keyed by tenant_id.
//
// Target files (firmware images, 32 MiB and more) are deliberately not
// here: they stay in ota.DirBlobs in the data directory (or on storage
// shared by the nodes), named by their SHA-256. A database row of that
// size would be read whole into memory on every download, could not be
// served with HTTP Range requests without reading it all, and would bloat
// the WAL and backups; a content-addressed file needs no coordination
// between nodes since equal names mean equal bytes.
package otasql

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/rollout"
	"github.com/wardiot/ward/internal/ota/tufrepo"
	"github.com/wardiot/ward/internal/store/sqlstore"
)

type conn struct {
	db     *sql.DB
	d      sqlstore.Dialect
	tenant string
}

func (c conn) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return c.db.ExecContext(ctx, c.d.Rebind(q), args...)
}

func (c conn) row(ctx context.Context, q string, args ...any) *sql.Row {
	return c.db.QueryRowContext(ctx, c.d.Rebind(q), args...)
}

func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Metadata is a tufrepo.Store: TUF metadata documents and sealed online
// keys by name. Put is a single upsert, so readers on every node see the
// old or the new document, never a mix.
type Metadata struct{ c conn }

var _ tufrepo.Store = (*Metadata)(nil)

// NewMetadata returns the tenant's metadata store on db, whose schema
// must be migrated; d is the engine's dialect (sqlstore.DB.SQLDialect).
// A repository shared by every tenant uses tenant "".
func NewMetadata(db *sql.DB, d sqlstore.Dialect, tenant string) *Metadata {
	return &Metadata{conn{db, d, tenant}}
}

// Get implements tufrepo.Store.
func (m *Metadata) Get(ctx context.Context, name string) ([]byte, error) {
	var data []byte
	err := m.c.row(ctx, `SELECT data FROM ota_metadata WHERE tenant_id = ? AND name = ?`, m.c.tenant, name).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tufrepo.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("ota metadata %s: %w", name, err)
	}
	return data, nil
}

// Put implements tufrepo.Store.
func (m *Metadata) Put(ctx context.Context, name string, data []byte) error {
	if name == "" {
		return errors.New("ota metadata: empty name")
	}
	_, err := m.c.exec(ctx, `INSERT INTO ota_metadata (tenant_id, name, data) VALUES (?, ?, ?)
		ON CONFLICT (tenant_id, name) DO UPDATE SET data = excluded.data`, m.c.tenant, name, blob(data))
	if err != nil {
		return fmt.Errorf("store ota metadata %s: %w", name, err)
	}
	return nil
}

// Delete implements tufrepo.Deleter (a destroyed online key). SQLite
// overwrites the freed page (secure_delete); PostgreSQL keeps the dead
// tuple until VACUUM.
func (m *Metadata) Delete(ctx context.Context, name string) error {
	if _, err := m.c.exec(ctx, `DELETE FROM ota_metadata WHERE tenant_id = ? AND name = ?`, m.c.tenant, name); err != nil {
		return fmt.Errorf("delete ota metadata %s: %w", name, err)
	}
	return nil
}

// Rollouts is a rollout.Store: engine snapshots as JSON documents.
type Rollouts struct{ c conn }

var _ rollout.Store = (*Rollouts)(nil)

// NewRollouts returns the tenant's rollout store on db.
func NewRollouts(db *sql.DB, d sqlstore.Dialect, tenant string) *Rollouts {
	return &Rollouts{conn{db, d, tenant}}
}

// Save implements rollout.Store.
func (r *Rollouts) Save(ctx context.Context, s *rollout.Snapshot) error {
	if s.ID == "" {
		return errors.New("rollout: snapshot without an ID")
	}
	doc, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("rollout %s: %w", s.ID, err)
	}
	_, err = r.c.exec(ctx, `INSERT INTO ota_rollouts (tenant_id, id, snapshot) VALUES (?, ?, ?)
		ON CONFLICT (tenant_id, id) DO UPDATE SET snapshot = excluded.snapshot`, r.c.tenant, s.ID, doc)
	if err != nil {
		return fmt.Errorf("save rollout %s: %w", s.ID, err)
	}
	return nil
}

// Load implements rollout.Store.
func (r *Rollouts) Load(ctx context.Context, id string) (*rollout.Snapshot, error) {
	var doc []byte
	err := r.c.row(ctx, `SELECT snapshot FROM ota_rollouts WHERE tenant_id = ? AND id = ?`, r.c.tenant, id).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, rollout.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load rollout %s: %w", id, err)
	}
	var s rollout.Snapshot
	if err := json.Unmarshal(doc, &s); err != nil {
		return nil, fmt.Errorf("stored rollout %s: %w", id, err)
	}
	return &s, nil
}

// List implements rollout.Store; IDs are in ascending order.
func (r *Rollouts) List(ctx context.Context) ([]string, error) {
	rows, err := r.c.db.QueryContext(ctx, r.c.d.Rebind(`SELECT id FROM ota_rollouts WHERE tenant_id = ? ORDER BY id`), r.c.tenant)
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	// ORDER BY on text follows the database collation; sort bytewise so
	// both engines list alike.
	sort.Strings(ids)
	return ids, nil
}

// Floors is an ota.Floors: each device's anti-rollback floor, which
// never goes down.
type Floors struct{ c conn }

var _ ota.Floors = (*Floors)(nil)

// NewFloors returns the tenant's floor store on db.
func NewFloors(db *sql.DB, d sqlstore.Dialect, tenant string) *Floors {
	return &Floors{conn{db, d, tenant}}
}

// floorKey encodes a floor so that byte order is numeric order over all
// of uint64 (a signed BIGINT would not hold the top half).
func floorKey(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// LastFloor implements ota.Floors.
func (f *Floors) LastFloor(ctx context.Context, device string) (uint64, bool, error) {
	var b []byte
	err := f.c.row(ctx, `SELECT floor_sv FROM ota_floors WHERE tenant_id = ? AND device_id = ?`, f.c.tenant, device).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("anti-rollback floor of %s: %w", device, err)
	}
	if len(b) != 8 {
		return 0, false, fmt.Errorf("anti-rollback floor of %s: stored value is %d bytes, want 8", device, len(b))
	}
	return binary.BigEndian.Uint64(b), true, nil
}

// SetFloor implements ota.Floors with one conditional upsert that writes
// only a higher floor.
func (f *Floors) SetFloor(ctx context.Context, device string, floor uint64) error {
	_, err := f.c.exec(ctx, `INSERT INTO ota_floors (tenant_id, device_id, floor_sv) VALUES (?, ?, ?)
		ON CONFLICT (tenant_id, device_id) DO UPDATE SET floor_sv = excluded.floor_sv
		WHERE excluded.floor_sv > ota_floors.floor_sv`, f.c.tenant, device, floorKey(floor))
	if err != nil {
		return fmt.Errorf("store anti-rollback floor of %s: %w", device, err)
	}
	return nil
}

// tenantMinimumRow is the device_id under which ota_floors keeps the
// tenant's minimum security version: no device can have it
// (wire.ValidateDeviceID refuses the empty ID), and the tenant minimum
// shares the floors' "never lower" upsert.
const tenantMinimumRow = ""

// TenantMinimum is the tenant's minimum security version (0 if never
// raised): every Director assignment carries at least this.
func (f *Floors) TenantMinimum(ctx context.Context) (uint64, error) {
	v, _, err := f.LastFloor(ctx, tenantMinimumRow)
	if err != nil {
		return 0, fmt.Errorf("tenant minimum security version: %w", err)
	}
	return v, nil
}

// RaiseTenantMinimum raises the tenant's minimum security version to v;
// a lower or equal v changes nothing. It returns the minimum now stored.
func (f *Floors) RaiseTenantMinimum(ctx context.Context, v uint64) (uint64, error) {
	if err := f.SetFloor(ctx, tenantMinimumRow, v); err != nil {
		return 0, err
	}
	return f.TenantMinimum(ctx)
}

// Tables lists this package's tables, each keyed by tenant_id: deleting a
// tenant must empty them too.
var Tables = []string{"ota_metadata", "ota_rollouts", "ota_floors"}

// DeleteTenant removes all of a tenant's OTA state from db.
func DeleteTenant(ctx context.Context, db *sql.DB, d sqlstore.Dialect, tenant string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, t := range Tables {
		if _, err := tx.ExecContext(ctx, d.Rebind(`DELETE FROM `+t+` WHERE tenant_id = ?`), tenant); err != nil {
			return fmt.Errorf("delete tenant OTA state: %w", err)
		}
	}
	return tx.Commit()
}

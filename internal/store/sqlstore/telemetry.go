package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/store"
)

func (q q) schemas(ctx context.Context, query string, args ...any) ([]*store.Schema, error) {
	rows, err := q.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Schema
	for rows.Next() {
		var s store.Schema
		var v int64
		var created int64
		if err := rows.Scan(&s.Tenant, &s.ID, &v, &s.Doc, &created); err != nil {
			return nil, err
		}
		s.Version, s.CreatedAt = uint32(v), fromTS(created)
		out = append(out, &s)
	}
	return out, rows.Err()
}

func (q q) ListSchemas(ctx context.Context, tenant string) ([]*store.Schema, error) {
	return q.schemas(ctx, `SELECT tenant_id, id, version, doc, created_at FROM schemas WHERE tenant_id = ? ORDER BY id, version`, tenant)
}

func (q q) ForEachSchema(ctx context.Context, fn func(*store.Schema) error) error {
	all, err := q.schemas(ctx, `SELECT tenant_id, id, version, doc, created_at FROM schemas ORDER BY tenant_id, id, version`)
	if err != nil {
		return err
	}
	for _, s := range all {
		if err := fn(s); err != nil {
			return err
		}
	}
	return nil
}

func (t *txq) PutSchema(ctx context.Context, s *store.Schema) error {
	if _, err := t.exec(ctx, `INSERT INTO schemas (tenant_id, id, version, doc, created_at) VALUES (?, ?, ?, ?, ?)`,
		s.Tenant, s.ID, int64(s.Version), blob(s.Doc), ts(s.CreatedAt)); err != nil {
		return fmt.Errorf("put schema %s v%d: %w", s.ID, s.Version, err)
	}
	return nil
}

func (q q) RecentReadings(ctx context.Context, tenant, device string, limit int) ([]*store.Reading, error) {
	if limit <= 0 || limit > 10000 {
		limit = 100
	}
	rows, err := q.query(ctx, `SELECT tenant_id, device_id, stream, seq, at, received_at, schema_id, schema_ver, payload, sealed
		FROM telemetry WHERE tenant_id = ? AND device_id = ? ORDER BY seq DESC LIMIT `+fmt.Sprint(limit), tenant, device)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Reading
	for rows.Next() {
		var r store.Reading
		var seq, at, recv, ver int64
		if err := rows.Scan(&r.Tenant, &r.Device, &r.Stream, &seq, &at, &recv, &r.SchemaID, &ver, &r.Payload, &r.Sealed); err != nil {
			return nil, err
		}
		r.Seq, r.Time, r.Received, r.SchemaVersion = uint64(seq), fromTS(at), fromTS(recv), uint32(ver)
		out = append(out, &r)
	}
	return out, rows.Err()
}

func (t *txq) PutReadings(ctx context.Context, rs []*store.Reading) error {
	for _, r := range rs {
		var sealed any
		if len(r.Sealed) > 0 {
			sealed = r.Sealed
		}
		if _, err := t.exec(ctx, `INSERT INTO telemetry (tenant_id, device_id, stream, seq, at, received_at, schema_id, schema_ver, payload, sealed)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, device_id, seq) DO NOTHING`,
			r.Tenant, r.Device, r.Stream, int64(r.Seq), ts(r.Time), ts(r.Received), r.SchemaID, int64(r.SchemaVersion), blob(r.Payload), sealed); err != nil {
			return err
		}
	}
	return nil
}

func (t *txq) PruneReadings(ctx context.Context, before time.Time) (int64, error) {
	res, err := t.exec(ctx, `DELETE FROM telemetry WHERE received_at < ?`, ts(before))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

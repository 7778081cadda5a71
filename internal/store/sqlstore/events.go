package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/store"
)

const eventCols = `id, tenant_id, type, severity, device_id, remote, reason, detail, first_at, last_at, count`

func (q q) ListEvents(ctx context.Context, f store.EventFilter) ([]*store.Event, error) {
	query, args := `SELECT `+eventCols+` FROM events WHERE 1 = 1`, []any{}
	if f.Tenant != "" || !f.AnyTenant {
		query += ` AND tenant_id = ?`
		args = append(args, f.Tenant)
	}
	if f.Type != "" {
		// A type or a family of types: "attestation" matches
		// "attestation.failed" and "attestation.flagged".
		query += ` AND (type = ? OR substr(type, 1, ?) = ?)`
		args = append(args, f.Type, len(f.Type)+1, f.Type+".")
	}
	if f.Device != "" {
		query += ` AND device_id = ?`
		args = append(args, f.Device)
	}
	limit := f.Limit
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	rows, err := q.query(ctx, query+fmt.Sprintf(` ORDER BY last_at DESC, id DESC LIMIT %d`, limit), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Event
	for rows.Next() {
		var e store.Event
		var first, last int64
		if err := rows.Scan(&e.ID, &e.Tenant, &e.Type, &e.Severity, &e.Device, &e.Remote, &e.Reason, &e.Detail, &first, &last, &e.Count); err != nil {
			return nil, err
		}
		e.FirstAt, e.LastAt = fromTS(first), fromTS(last)
		out = append(out, &e)
	}
	return out, rows.Err()
}

func (t *txq) RecordEvent(ctx context.Context, e *store.Event, window time.Duration) (bool, error) {
	if e.Count <= 0 {
		e.Count = 1
	}
	if e.LastAt.IsZero() {
		e.LastAt = e.FirstAt
	}
	var id int64
	err := t.row(ctx, `SELECT id FROM events WHERE tenant_id = ? AND type = ? AND device_id = ? AND reason = ? AND last_at >= ?
		ORDER BY last_at DESC LIMIT 1`, e.Tenant, e.Type, e.Device, e.Reason, ts(e.FirstAt.Add(-window))).Scan(&id)
	switch {
	case err == nil:
		_, err = t.exec(ctx, `UPDATE events SET count = count + ?, last_at = ?, remote = ?, detail = ? WHERE id = ?`,
			e.Count, ts(e.LastAt), e.Remote, e.Detail, id)
		e.ID = id
		return false, err
	case !errors.Is(err, sql.ErrNoRows):
		return false, err
	}
	// RETURNING works on both engines (SQLite 3.35+).
	err = t.row(ctx, `INSERT INTO events (tenant_id, type, severity, device_id, remote, reason, detail, first_at, last_at, count)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		e.Tenant, e.Type, e.Severity, e.Device, e.Remote, e.Reason, e.Detail, ts(e.FirstAt), ts(e.LastAt), e.Count).Scan(&e.ID)
	return err == nil, err
}

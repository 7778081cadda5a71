package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/store"
)

const deviceCols = `tenant_id, id, state, grp, tags, created_at, updated_at`

func scanDevice(sc interface{ Scan(...any) error }) (*store.Device, error) {
	var d store.Device
	var tags string
	var created, updated int64
	if err := sc.Scan(&d.Tenant, &d.ID, &d.State, &d.Group, &tags, &created, &updated); err != nil {
		return nil, err
	}
	d.CreatedAt, d.UpdatedAt = fromTS(created), fromTS(updated)
	if err := json.Unmarshal([]byte(tags), &d.Tags); err != nil {
		return nil, fmt.Errorf("device %s/%s tags: %w", d.Tenant, d.ID, err)
	}
	return &d, nil
}

func (q q) GetDevice(ctx context.Context, tenant, id string) (*store.Device, error) {
	d, err := scanDevice(q.row(ctx, `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND id = ?`, tenant, id))
	if err != nil {
		return nil, notFound(err, "device "+tenant+"/"+id)
	}
	return d, nil
}

func (q q) ListDevices(ctx context.Context, f store.DeviceFilter) ([]*store.Device, error) {
	query, args := `SELECT `+deviceCols+` FROM devices WHERE tenant_id = ? AND id > ?`, []any{f.Tenant, f.After}
	if f.State != "" {
		query += ` AND state = ?`
		args = append(args, f.State)
	}
	if f.Group != "" {
		query += ` AND grp = ?`
		args = append(args, f.Group)
	}
	limit := f.Limit
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	return q.devices(ctx, query+fmt.Sprintf(` ORDER BY id LIMIT %d`, limit), args...)
}

func (q q) devices(ctx context.Context, query string, args ...any) ([]*store.Device, error) {
	rows, err := q.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (q q) ForEachDevice(ctx context.Context, fn func(*store.Device) error) error {
	tenant, id := "", ""
	for {
		page, err := q.devices(ctx, `SELECT `+deviceCols+` FROM devices WHERE (tenant_id > ? OR (tenant_id = ? AND id > ?))
			ORDER BY tenant_id, id LIMIT 5000`, tenant, tenant, id)
		if err != nil {
			return err
		}
		for _, d := range page {
			if err := fn(d); err != nil {
				return err
			}
		}
		if len(page) < 5000 {
			return nil
		}
		tenant, id = page[len(page)-1].Tenant, page[len(page)-1].ID
	}
}

func (t *txq) CreateDevice(ctx context.Context, d *store.Device) error {
	tags := d.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	b, err := json.Marshal(tags)
	if err != nil {
		return err
	}
	if _, err := t.exec(ctx, `INSERT INTO devices (`+deviceCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		d.Tenant, d.ID, d.State, d.Group, string(b), ts(d.CreatedAt), ts(d.CreatedAt)); err != nil {
		return fmt.Errorf("create device %s/%s: %w", d.Tenant, d.ID, err)
	}
	return nil
}

func (t *txq) SetDeviceState(ctx context.Context, tenant, id, state string, at time.Time) error {
	res, err := t.exec(ctx, `UPDATE devices SET state = ?, updated_at = ? WHERE tenant_id = ? AND id = ?`, state, ts(at), tenant, id)
	if err != nil {
		return err
	}
	return affectedOne(res, "device "+tenant+"/"+id)
}

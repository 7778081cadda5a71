package sqlstore

import (
	"context"

	"github.com/wardiot/ward/internal/store"
)

func (q q) GetDeviceSecret(ctx context.Context, tenant, device string) (*store.DeviceSecret, error) {
	var d store.DeviceSecret
	var epoch, since int64
	err := q.row(ctx, `SELECT tenant_id, device_id, secret, prev_secret, epoch, since FROM device_secrets WHERE tenant_id = ? AND device_id = ?`,
		tenant, device).Scan(&d.Tenant, &d.Device, &d.Sealed, &d.PrevSealed, &epoch, &since)
	if err != nil {
		return nil, notFound(err, "device secret")
	}
	d.Epoch, d.Since = uint64(epoch), fromTS(since)
	if len(d.PrevSealed) == 0 {
		d.PrevSealed = nil
	}
	return &d, nil
}

func (t *txq) PutDeviceSecret(ctx context.Context, d *store.DeviceSecret) error {
	var prev any
	if len(d.PrevSealed) > 0 {
		prev = d.PrevSealed
	}
	_, err := t.exec(ctx, `INSERT INTO device_secrets (tenant_id, device_id, secret, prev_secret, epoch, since) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (tenant_id, device_id) DO UPDATE SET secret = excluded.secret, prev_secret = excluded.prev_secret,
		epoch = excluded.epoch, since = excluded.since`, d.Tenant, d.Device, blob(d.Sealed), prev, int64(d.Epoch), ts(d.Since))
	return err
}

package sqlstore

import (
	"context"
	"fmt"

	"github.com/wardiot/ward/internal/store"
)

func (q q) GetTwin(ctx context.Context, tenant, device, name string) ([]byte, uint64, error) {
	var doc []byte
	var rev int64
	err := q.row(ctx, `SELECT doc, revision FROM twins WHERE tenant_id = ? AND device_id = ? AND name = ?`, tenant, device, name).Scan(&doc, &rev)
	if err != nil {
		return nil, 0, notFound(err, "twin")
	}
	return doc, uint64(rev), nil
}

// PutTwin is only a transaction method in the store contract, but the twin
// service writes twins outside other work, so the DB has it too (each call
// is its own statement, atomic on both engines).
func (q q) PutTwin(ctx context.Context, tenant, device, name string, doc []byte, expect uint64) error {
	if expect == 0 {
		_, err := q.exec(ctx, `INSERT INTO twins (tenant_id, device_id, name, revision, doc) VALUES (?, ?, ?, 1, ?)`, tenant, device, name, blob(doc))
		if err != nil {
			return fmt.Errorf("twin: %w", err)
		}
		return nil
	}
	res, err := q.exec(ctx, `UPDATE twins SET revision = revision + 1, doc = ? WHERE tenant_id = ? AND device_id = ? AND name = ? AND revision = ?`,
		blob(doc), tenant, device, name, int64(expect))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("twin changed concurrently: %w", store.ErrConflict)
	}
	return nil
}

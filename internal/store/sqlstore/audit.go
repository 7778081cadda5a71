package sqlstore

import (
	"context"
	"fmt"

	"github.com/wardiot/ward/internal/store"
)

const auditCols = `seq, at, actor, action, target, tenant_id, result, detail, prev_hash, hash`

func scanAudit(sc interface{ Scan(...any) error }) (*store.AuditRecord, error) {
	var r store.AuditRecord
	var at int64
	if err := sc.Scan(&r.Seq, &at, &r.Actor, &r.Action, &r.Target, &r.Tenant, &r.Result, &r.Detail, &r.PrevHash, &r.Hash); err != nil {
		return nil, err
	}
	r.Time = fromTS(at)
	return &r, nil
}

func (q q) ListAudit(ctx context.Context, f store.AuditFilter) ([]*store.AuditRecord, error) {
	query := `SELECT ` + auditCols + ` FROM audit WHERE seq > ?`
	args := []any{f.AfterSeq}
	if f.Tenant != "" {
		query += ` AND tenant_id = ?`
		args = append(args, f.Tenant)
	}
	limit := f.Limit
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	query += fmt.Sprintf(` ORDER BY seq LIMIT %d`, limit)
	rows, err := q.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.AuditRecord
	for rows.Next() {
		r, err := scanAudit(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// auditPage bounds how many rows ScanAudit holds open at once.
const auditPage = 1000

func (q q) ScanAudit(ctx context.Context, fn func(*store.AuditRecord) error) error {
	// Paged by the ordering column rather than one long cursor, so a scan
	// of a large log never pins a read transaction for its whole length.
	// Rows with a NULL or out-of-order seq still surface: the page query
	// orders by seq and the caller checks continuity.
	after := int64(-1 << 62)
	for {
		rows, err := q.query(ctx, `SELECT `+auditCols+` FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`, after, auditPage)
		if err != nil {
			return err
		}
		n := 0
		for rows.Next() {
			r, err := scanAudit(rows)
			if err != nil {
				rows.Close()
				return err
			}
			n++
			after = r.Seq
			if err := fn(r); err != nil {
				rows.Close()
				return err
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return err
		}
		if n < auditPage {
			return nil
		}
	}
}

func (q q) AuditHead(ctx context.Context) (int64, []byte, error) {
	var seq int64
	var hash []byte
	err := q.row(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&seq, &hash)
	if err != nil {
		return 0, nil, fmt.Errorf("read audit head: %w", err)
	}
	return seq, hash, nil
}

func (t *txq) LockAuditHead(ctx context.Context) (int64, []byte, error) {
	var seq int64
	var hash []byte
	err := t.row(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`+t.d.ForUpdate).Scan(&seq, &hash)
	if err != nil {
		return 0, nil, fmt.Errorf("lock audit head: %w", err)
	}
	return seq, hash, nil
}

func (t *txq) AppendAudit(ctx context.Context, r *store.AuditRecord) error {
	_, err := t.exec(ctx, `INSERT INTO audit (`+auditCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Seq, ts(r.Time), r.Actor, r.Action, r.Target, r.Tenant, r.Result, r.Detail, blob(r.PrevHash), blob(r.Hash))
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	res, err := t.exec(ctx, `UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1 AND seq = ?`, r.Seq, blob(r.Hash), r.Seq-1)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("append audit: head moved: %w", store.ErrConflict)
	}
	return nil
}

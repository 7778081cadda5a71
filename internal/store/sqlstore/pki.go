package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/store"
)

const caCols = `id, tenant_id, kind, parent_id, cert_der, key_ref, status, created_at`

func scanCA(sc interface{ Scan(...any) error }) (*store.CA, error) {
	var c store.CA
	var created int64
	if err := sc.Scan(&c.ID, &c.Tenant, &c.Kind, &c.ParentID, &c.CertDER, &c.KeyRef, &c.Status, &created); err != nil {
		return nil, err
	}
	c.Created = fromTS(created)
	if len(c.KeyRef) == 0 {
		c.KeyRef = nil
	}
	return &c, nil
}

func (q q) ListCAs(ctx context.Context, tenant string) ([]*store.CA, error) {
	query, args := `SELECT `+caCols+` FROM cas`, []any{}
	if tenant != "" {
		query += ` WHERE tenant_id = ?`
		args = append(args, tenant)
	}
	rows, err := q.query(ctx, query+` ORDER BY created_at, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.CA
	for rows.Next() {
		c, err := scanCA(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// keyRef stores a nil key reference as SQL NULL: an offline CA has none.
func keyRef(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

func (t *txq) PutCA(ctx context.Context, c *store.CA) error {
	_, err := t.exec(ctx, `INSERT INTO cas (`+caCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		c.ID, c.Tenant, c.Kind, c.ParentID, blob(c.CertDER), keyRef(c.KeyRef), c.Status, ts(c.Created))
	if err != nil {
		return fmt.Errorf("put CA %s: %w", c.ID, err)
	}
	return nil
}

func (t *txq) UpdateCA(ctx context.Context, c *store.CA) error {
	res, err := t.exec(ctx, `UPDATE cas SET key_ref = ?, status = ? WHERE id = ?`, keyRef(c.KeyRef), c.Status, c.ID)
	if err != nil {
		return err
	}
	return affectedOne(res, "CA "+c.ID)
}

func (t *txq) NextCRLNumber(ctx context.Context, caID string) (int64, error) {
	res, err := t.exec(ctx, `UPDATE cas SET crl_number = crl_number + 1 WHERE id = ?`, caID)
	if err != nil {
		return 0, err
	}
	if err := affectedOne(res, "CA "+caID); err != nil {
		return 0, err
	}
	var n int64
	if err := t.row(ctx, `SELECT crl_number FROM cas WHERE id = ?`, caID).Scan(&n); err != nil {
		return 0, err
	}
	return n, nil
}

const certCols = `serial, tenant_id, device_id, ca_id, profile, spki_sha256, not_before, not_after, status, revoked_at, reason, cert_der`

func scanCert(sc interface{ Scan(...any) error }) (*store.Cert, error) {
	var c store.Cert
	var nb, na, ra int64
	if err := sc.Scan(&c.Serial, &c.Tenant, &c.Device, &c.CAID, &c.Profile, &c.SPKISHA256, &nb, &na, &c.Status, &ra, &c.Reason, &c.CertDER); err != nil {
		return nil, err
	}
	c.NotBefore, c.NotAfter, c.RevokedAt = fromTS(nb), fromTS(na), fromTS(ra)
	return &c, nil
}

func (q q) GetCert(ctx context.Context, serial string) (*store.Cert, error) {
	c, err := scanCert(q.row(ctx, `SELECT `+certCols+` FROM certs WHERE serial = ?`, serial))
	if err != nil {
		return nil, notFound(err, "certificate "+serial)
	}
	return c, nil
}

func (q q) ListCerts(ctx context.Context, f store.CertFilter) ([]*store.Cert, error) {
	query, args := `SELECT `+certCols+` FROM certs WHERE 1 = 1`, []any{}
	for _, c := range []struct{ col, v string }{{"tenant_id", f.Tenant}, {"device_id", f.Device}, {"ca_id", f.CAID}, {"status", f.Status}} {
		if c.v != "" {
			query += ` AND ` + c.col + ` = ?`
			args = append(args, c.v)
		}
	}
	query += ` ORDER BY not_before, serial`
	if f.Limit > 0 {
		query += fmt.Sprintf(` LIMIT %d`, f.Limit)
	}
	rows, err := q.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Cert
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// revokedPage bounds the rows ForEachRevoked holds at once.
const revokedPage = 10000

func (q q) ForEachRevoked(ctx context.Context, caID string, fn func(*store.Cert) error) error {
	after := ""
	for {
		query, args := `SELECT `+certCols+` FROM certs WHERE status = 'revoked' AND serial > ?`, []any{after}
		if caID != "" {
			query += ` AND ca_id = ?`
			args = append(args, caID)
		}
		rows, err := q.query(ctx, query+fmt.Sprintf(` ORDER BY serial LIMIT %d`, revokedPage), args...)
		if err != nil {
			return err
		}
		var page []*store.Cert
		for rows.Next() {
			c, err := scanCert(rows)
			if err != nil {
				rows.Close()
				return err
			}
			page = append(page, c)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return err
		}
		// fn runs after the page's rows are closed, so it may query too.
		for _, c := range page {
			if err := fn(c); err != nil {
				return err
			}
		}
		if len(page) < revokedPage {
			return nil
		}
		after = page[len(page)-1].Serial
	}
}

func (t *txq) RecordCert(ctx context.Context, c *store.Cert) error {
	_, err := t.exec(ctx, `INSERT INTO certs (`+certCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.Serial, c.Tenant, c.Device, c.CAID, c.Profile, blob(c.SPKISHA256), ts(c.NotBefore), ts(c.NotAfter), c.Status,
		ts(c.RevokedAt), c.Reason, blob(c.CertDER))
	if err != nil {
		return fmt.Errorf("record certificate %s: %w", c.Serial, err)
	}
	return nil
}

func (t *txq) RevokeCert(ctx context.Context, serial string, reason int, at time.Time) (*store.Cert, error) {
	res, err := t.exec(ctx, `UPDATE certs SET status = 'revoked', revoked_at = ?, reason = ? WHERE serial = ? AND status <> 'revoked'`,
		ts(at), reason, serial)
	if err != nil {
		return nil, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, err
	}
	c, err := t.GetCert(ctx, serial)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return c, fmt.Errorf("certificate %s already revoked: %w", serial, store.ErrConflict)
	}
	return c, nil
}

package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/store"
)

const tenantCols = `id, name, created_at, wrapped_key`

func scanTenant(sc interface{ Scan(...any) error }) (*store.Tenant, error) {
	var t store.Tenant
	var created int64
	if err := sc.Scan(&t.ID, &t.Name, &created, &t.WrappedKey); err != nil {
		return nil, err
	}
	t.CreatedAt = fromTS(created)
	return &t, nil
}

func (q q) GetTenant(ctx context.Context, id string) (*store.Tenant, error) {
	t, err := scanTenant(q.row(ctx, `SELECT `+tenantCols+` FROM tenants WHERE id = ?`, id))
	if err != nil {
		return nil, notFound(err, "tenant "+id)
	}
	return t, nil
}

func (q q) ListTenants(ctx context.Context) ([]*store.Tenant, error) {
	rows, err := q.query(ctx, `SELECT `+tenantCols+` FROM tenants ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Tenant
	for rows.Next() {
		t, err := scanTenant(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func (t *txq) CreateTenant(ctx context.Context, tn *store.Tenant) error {
	_, err := t.exec(ctx, `INSERT INTO tenants (id, name, created_at, wrapped_key) VALUES (?, ?, ?, ?)`,
		tn.ID, tn.Name, ts(tn.CreatedAt), blob(tn.WrappedKey))
	if err != nil {
		return fmt.Errorf("create tenant %s: %w", tn.ID, err)
	}
	return nil
}

func (t *txq) DeleteTenant(ctx context.Context, id string) error {
	for _, table := range []string{"tokens", "certs", "cas", "events", "devices", "schemas", "telemetry", "twins", "policies", "policy_assignments", "device_secrets"} {
		if _, err := t.exec(ctx, `DELETE FROM `+table+` WHERE tenant_id = ?`, id); err != nil {
			return err
		}
	}
	res, err := t.exec(ctx, `DELETE FROM tenants WHERE id = ?`, id)
	if err != nil {
		return err
	}
	return affectedOne(res, "tenant "+id)
}

const tokenCols = `id, hash, kind, tenant_id, role, device_id, name, created_by, created_at, expires_at, revoked_at, used_at`

func scanToken(sc interface{ Scan(...any) error }) (*store.Token, error) {
	var tk store.Token
	var created, expires, revoked, used int64
	if err := sc.Scan(&tk.ID, &tk.Hash, &tk.Kind, &tk.Tenant, &tk.Role, &tk.Device, &tk.Name, &tk.CreatedBy,
		&created, &expires, &revoked, &used); err != nil {
		return nil, err
	}
	tk.CreatedAt, tk.ExpiresAt, tk.RevokedAt, tk.UsedAt = fromTS(created), fromTS(expires), fromTS(revoked), fromTS(used)
	return &tk, nil
}

func (q q) GetToken(ctx context.Context, id string) (*store.Token, error) {
	tk, err := scanToken(q.row(ctx, `SELECT `+tokenCols+` FROM tokens WHERE id = ?`, id))
	if err != nil {
		return nil, notFound(err, "token")
	}
	return tk, nil
}

func (q q) ListTokens(ctx context.Context, kind, tenant string) ([]*store.Token, error) {
	query := `SELECT ` + tokenCols + ` FROM tokens WHERE kind = ?`
	args := []any{kind}
	if tenant != "" {
		query += ` AND tenant_id = ?`
		args = append(args, tenant)
	}
	rows, err := q.query(ctx, query+` ORDER BY created_at, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Token
	for rows.Next() {
		tk, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, tk)
	}
	return out, rows.Err()
}

func (t *txq) CreateToken(ctx context.Context, tk *store.Token) error {
	_, err := t.exec(ctx, `INSERT INTO tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		tk.ID, blob(tk.Hash), tk.Kind, tk.Tenant, tk.Role, tk.Device, tk.Name, tk.CreatedBy,
		ts(tk.CreatedAt), ts(tk.ExpiresAt), ts(tk.RevokedAt), ts(tk.UsedAt))
	if err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	return nil
}

func (t *txq) RevokeToken(ctx context.Context, id string, at time.Time) error {
	res, err := t.exec(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at = 0`, ts(at), id)
	if err != nil {
		return err
	}
	if err := affectedOne(res, "token"); err != nil {
		if _, gerr := t.GetToken(ctx, id); gerr != nil {
			return gerr
		}
		return fmt.Errorf("token already revoked: %w", store.ErrConflict)
	}
	return nil
}

func (t *txq) UseToken(ctx context.Context, id string, at time.Time) error {
	res, err := t.exec(ctx, `UPDATE tokens SET used_at = ? WHERE id = ? AND used_at = 0`, ts(at), id)
	if err != nil {
		return err
	}
	if err := affectedOne(res, "token"); err != nil {
		if _, gerr := t.GetToken(ctx, id); gerr != nil {
			return gerr
		}
		return fmt.Errorf("token already used: %w", store.ErrConflict)
	}
	return nil
}

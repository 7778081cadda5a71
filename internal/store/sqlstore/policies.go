package sqlstore

import (
	"context"

	"github.com/wardiot/ward/internal/store"
)

func (q q) policies(ctx context.Context, query string, args ...any) ([]*store.PolicyDoc, error) {
	rows, err := q.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.PolicyDoc
	for rows.Next() {
		var p store.PolicyDoc
		var at int64
		if err := rows.Scan(&p.Tenant, &p.Name, &p.Doc, &at); err != nil {
			return nil, err
		}
		p.UpdatedAt = fromTS(at)
		out = append(out, &p)
	}
	return out, rows.Err()
}

func (q q) ListPolicies(ctx context.Context, tenant string) ([]*store.PolicyDoc, error) {
	return q.policies(ctx, `SELECT tenant_id, name, doc, updated_at FROM policies WHERE tenant_id = ? ORDER BY name`, tenant)
}

func (q q) ForEachPolicy(ctx context.Context, fn func(*store.PolicyDoc) error) error {
	all, err := q.policies(ctx, `SELECT tenant_id, name, doc, updated_at FROM policies ORDER BY tenant_id, name`)
	if err != nil {
		return err
	}
	for _, p := range all {
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

func (q q) assignments(ctx context.Context, query string, args ...any) ([]*store.PolicyAssignment, error) {
	rows, err := q.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.PolicyAssignment
	for rows.Next() {
		var a store.PolicyAssignment
		if err := rows.Scan(&a.Tenant, &a.Kind, &a.Target, &a.Policy); err != nil {
			return nil, err
		}
		out = append(out, &a)
	}
	return out, rows.Err()
}

func (q q) ListPolicyAssignments(ctx context.Context, tenant string) ([]*store.PolicyAssignment, error) {
	return q.assignments(ctx, `SELECT tenant_id, kind, target, policy FROM policy_assignments WHERE tenant_id = ? ORDER BY kind, target`, tenant)
}

func (q q) ForEachPolicyAssignment(ctx context.Context, fn func(*store.PolicyAssignment) error) error {
	all, err := q.assignments(ctx, `SELECT tenant_id, kind, target, policy FROM policy_assignments ORDER BY tenant_id, kind, target`)
	if err != nil {
		return err
	}
	for _, a := range all {
		if err := fn(a); err != nil {
			return err
		}
	}
	return nil
}

func (t *txq) PutPolicy(ctx context.Context, p *store.PolicyDoc) error {
	_, err := t.exec(ctx, `INSERT INTO policies (tenant_id, name, doc, updated_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (tenant_id, name) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at`,
		p.Tenant, p.Name, blob(p.Doc), ts(p.UpdatedAt))
	return err
}

func (t *txq) DeletePolicy(ctx context.Context, tenant, name string) error {
	if _, err := t.exec(ctx, `DELETE FROM policy_assignments WHERE tenant_id = ? AND policy = ?`, tenant, name); err != nil {
		return err
	}
	res, err := t.exec(ctx, `DELETE FROM policies WHERE tenant_id = ? AND name = ?`, tenant, name)
	if err != nil {
		return err
	}
	return affectedOne(res, "policy "+name)
}

func (t *txq) AssignPolicy(ctx context.Context, a *store.PolicyAssignment) error {
	if a.Policy == "" {
		_, err := t.exec(ctx, `DELETE FROM policy_assignments WHERE tenant_id = ? AND kind = ? AND target = ?`, a.Tenant, a.Kind, a.Target)
		return err
	}
	_, err := t.exec(ctx, `INSERT INTO policy_assignments (tenant_id, kind, target, policy) VALUES (?, ?, ?, ?)
		ON CONFLICT (tenant_id, kind, target) DO UPDATE SET policy = excluded.policy`, a.Tenant, a.Kind, a.Target, a.Policy)
	return err
}

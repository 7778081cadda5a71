package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/store"
)

// pkiStore adapts the store to pki.Store. Each write is its own
// transaction: the authority records a certificate durably before it
// hands it out, and audits right after.
type pkiStore struct {
	s   store.Store
	now func() time.Time
	// recorded, if set, hears of every certificate recorded (the
	// telemetry key cache drops the device's entry).
	recorded func(tenant, device string)
}

var (
	_ pki.Store         = pkiStore{}
	_ pki.AuditingStore = pkiStore{}
)

func mapErr(err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w: %v", pki.ErrNotFound, err)
	case errors.Is(err, store.ErrConflict):
		return fmt.Errorf("%w: %v", pki.ErrConflict, err)
	}
	return err
}

func caToStore(c pki.CA) *store.CA {
	return &store.CA{ID: c.ID, Tenant: c.Tenant, Kind: string(c.Kind), ParentID: c.ParentID, CertDER: c.CertDER,
		KeyRef: c.KeyRef, Status: string(c.Status), Created: c.Created}
}

func caFromStore(c *store.CA) pki.CA {
	return pki.CA{ID: c.ID, Tenant: c.Tenant, Kind: pki.CAKind(c.Kind), ParentID: c.ParentID, CertDER: c.CertDER,
		KeyRef: c.KeyRef, Status: pki.CAStatus(c.Status), Created: c.Created}
}

func certToStore(c pki.CertRecord) *store.Cert {
	return &store.Cert{Serial: c.Serial, Tenant: c.Tenant, Device: c.Device, CAID: c.CAID, Profile: c.Profile,
		SPKISHA256: c.SPKISHA256, NotBefore: c.NotBefore, NotAfter: c.NotAfter, Status: string(c.Status),
		RevokedAt: c.RevokedAt, Reason: int(c.Reason), CertDER: c.CertDER}
}

func certFromStore(c *store.Cert) pki.CertRecord {
	return pki.CertRecord{Serial: c.Serial, Tenant: c.Tenant, Device: c.Device, CAID: c.CAID, Profile: c.Profile,
		SPKISHA256: c.SPKISHA256, NotBefore: c.NotBefore, NotAfter: c.NotAfter, Status: pki.CertStatus(c.Status),
		RevokedAt: c.RevokedAt, Reason: pki.Reason(c.Reason), CertDER: c.CertDER}
}

func (p pkiStore) PutCA(ctx context.Context, ca pki.CA) error {
	return mapErr(p.s.InTx(ctx, func(tx store.Tx) error { return tx.PutCA(ctx, caToStore(ca)) }))
}

func (p pkiStore) UpdateCA(ctx context.Context, ca pki.CA) error {
	return mapErr(p.s.InTx(ctx, func(tx store.Tx) error { return tx.UpdateCA(ctx, caToStore(ca)) }))
}

func (p pkiStore) ListCAs(ctx context.Context, tenant string) ([]pki.CA, error) {
	cas, err := p.s.ListCAs(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make([]pki.CA, len(cas))
	for i, c := range cas {
		out[i] = caFromStore(c)
	}
	return out, nil
}

func (p pkiStore) RecordCert(ctx context.Context, rec pki.CertRecord) error {
	return mapErr(p.s.InTx(ctx, func(tx store.Tx) error { return tx.RecordCert(ctx, certToStore(rec)) }))
}

func (p pkiStore) GetCert(ctx context.Context, serial string) (pki.CertRecord, error) {
	c, err := p.s.GetCert(ctx, serial)
	if err != nil {
		return pki.CertRecord{}, mapErr(err)
	}
	return certFromStore(c), nil
}

func (p pkiStore) ListCerts(ctx context.Context, f pki.CertFilter) ([]pki.CertRecord, error) {
	cs, err := p.s.ListCerts(ctx, store.CertFilter{Tenant: f.Tenant, Device: f.Device, CAID: f.CAID, Status: string(f.Status), Limit: f.Limit})
	if err != nil {
		return nil, err
	}
	out := make([]pki.CertRecord, len(cs))
	for i, c := range cs {
		out[i] = certFromStore(c)
	}
	return out, nil
}

func (p pkiStore) RevokeCert(ctx context.Context, serial string, reason pki.Reason, at time.Time) (pki.CertRecord, error) {
	var rec *store.Cert
	err := p.s.InTx(ctx, func(tx store.Tx) error {
		var err error
		rec, err = tx.RevokeCert(ctx, serial, int(reason), at)
		return err
	})
	if errors.Is(err, store.ErrConflict) && rec != nil {
		return certFromStore(rec), pki.ErrAlreadyRevoked
	}
	if err != nil {
		return pki.CertRecord{}, mapErr(err)
	}
	return certFromStore(rec), nil
}

func (p pkiStore) ForEachRevoked(ctx context.Context, caID string, fn func(pki.Revoked) error) error {
	return p.s.ForEachRevoked(ctx, caID, func(c *store.Cert) error {
		return fn(pki.Revoked{Serial: c.Serial, CAID: c.CAID, Tenant: c.Tenant, Device: c.Device, NotAfter: c.NotAfter,
			RevokedAt: c.RevokedAt, Reason: pki.Reason(c.Reason)})
	})
}

func (p pkiStore) NextCRLNumber(ctx context.Context, caID string) (int64, error) {
	var n int64
	err := p.s.InTx(ctx, func(tx store.Tx) error {
		var err error
		n, err = tx.NextCRLNumber(ctx, caID)
		return err
	})
	return n, mapErr(err)
}

// pkiAuditor writes the authority's events to the audit log, naming the
// actor the request context carries.
type pkiAuditor struct {
	s   store.Store
	now func() time.Time
}

func (a pkiAuditor) Audit(ctx context.Context, e pki.Event) error {
	return a.s.InTx(ctx, func(tx store.Tx) error {
		_, err := audit.Append(ctx, tx, a.now(), pkiEntry(ctx, e))
		return err
	})
}

// RecordCertAudited implements pki.AuditingStore: the certificate and its
// audit entry commit together.
func (p pkiStore) RecordCertAudited(ctx context.Context, rec pki.CertRecord, ev pki.Event) error {
	err := mapErr(p.s.InTx(ctx, func(tx store.Tx) error {
		if hook, ok := ctx.Value(issueHookKey{}).(func(store.Tx) error); ok {
			if err := hook(tx); err != nil {
				return &hookError{err}
			}
		}
		if err := tx.RecordCert(ctx, certToStore(rec)); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, p.now(), pkiEntry(ctx, ev))
		return err
	}))
	if err == nil && p.recorded != nil {
		p.recorded(rec.Tenant, rec.Device)
	}
	return err
}

// pkiEntry turns an authority event into an audit entry, naming the actor
// (and, for issuance, the action and note) the request context carries.
func pkiEntry(ctx context.Context, e pki.Event) audit.Entry {
	target := "ca:" + e.CAID
	detail := ""
	if e.Serial != "" {
		target = "cert:" + e.Serial
		detail = "ca=" + e.CAID
		if e.Device != "" {
			detail += " device=" + e.Device
		}
		if e.Profile != "" {
			detail += " profile=" + e.Profile
		}
	}
	if e.Action == "cert.revoke" {
		detail += " reason=" + e.Reason.String()
	}
	action := e.Action
	if e.Action == "cert.issue" {
		if a, note, ok := audit.IssueFrom(ctx); ok {
			action = a
			detail = note + " " + detail
		}
	}
	return audit.Entry{Actor: audit.ActorFrom(ctx), Action: action, Target: target, Tenant: e.Tenant, Detail: detail}
}

type issueHookKey struct{}

// withIssueHook makes the transaction that records the next certificate
// issued under ctx run hook first: EST spends the enrollment token there,
// so the token is spent exactly when the certificate is recorded.
func withIssueHook(ctx context.Context, hook func(store.Tx) error) context.Context {
	return context.WithValue(ctx, issueHookKey{}, hook)
}

// hookError marks a failure of the issue hook, so callers can tell "the
// token could not be spent" from a store failure.
type hookError struct{ err error }

func (h *hookError) Error() string { return h.err.Error() }
func (h *hookError) Unwrap() error { return h.err }

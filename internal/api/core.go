package api

import (
	_ "embed"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
)

//go:embed openapi.json
var openapiDoc []byte

// OpenAPI returns the OpenAPI document describing the routes.
func OpenAPI() []byte { return openapiDoc }

func (a *API) coreRoutes() {
	a.Handle("GET /api/v1/whoami", tenant.PermRead, ScopeAny, "The calling token's identity", a.whoami)
	a.Handle("GET /api/v1/openapi.json", tenant.PermRead, ScopeAny, "This API's OpenAPI document", a.openapi)
	a.Handle("GET /api/v1/tenants", tenant.PermRead, ScopeGlobal, "List tenants", a.listTenants)
	a.Handle("POST /api/v1/tenants", tenant.PermAdmin, ScopeGlobal, "Create a tenant", a.createTenant)
	a.Handle("GET /api/v1/tenants/{tenant}", tenant.PermRead, ScopeTenant, "Show a tenant", a.getTenant)
	a.Handle("DELETE /api/v1/tenants/{tenant}", tenant.PermAdmin, ScopeGlobal, "Delete a tenant and destroy its data key", a.deleteTenant)
	a.Handle("GET /api/v1/tokens", tenant.PermAdmin, ScopeAny, "List API tokens", a.listTokens)
	a.Handle("POST /api/v1/tokens", tenant.PermWrite, ScopeAny, "Create an API or enrollment token", a.createToken)
	a.Handle("DELETE /api/v1/tokens/{id}", tenant.PermWrite, ScopeAny, "Revoke a token", a.revokeToken)
	a.Handle("GET /api/v1/audit", tenant.PermAudit, ScopeAny, "List audit entries", a.listAudit)
	a.Handle("GET /api/v1/audit/verify", tenant.PermAudit, ScopeGlobal, "Verify the audit chain", a.verifyAudit)
}

// WhoAmI is the body of GET /api/v1/whoami.
type WhoAmI struct {
	TokenID string `json:"token_id"`
	Role    string `json:"role"`
	Tenant  string `json:"tenant,omitempty"`
	Name    string `json:"name,omitempty"`
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	WriteJSON(w, http.StatusOK, WhoAmI{TokenID: p.TokenID, Role: p.Role, Tenant: p.Tenant, Name: p.Name})
	return nil
}

func (a *API) openapi(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openapiDoc)
	return err
}

// Tenant is the JSON form of a tenant.
type Tenant struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

func tenantJSON(t *store.Tenant) Tenant {
	return Tenant{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt}
}

func (a *API) listTenants(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	ts, err := a.d.Store.ListTenants(r.Context())
	if err != nil {
		return err
	}
	out := make([]Tenant, 0, len(ts))
	for _, t := range ts {
		out = append(out, tenantJSON(t))
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// CreateTenantRequest is the body of POST /api/v1/tenants.
type CreateTenantRequest struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

func (a *API) createTenant(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req CreateTenantRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	t, err := a.d.Tenants.Create(r.Context(), p.Actor(), req.ID, req.Name)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusCreated, tenantJSON(t))
	return nil
}

func (a *API) getTenant(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	t, err := a.d.Store.GetTenant(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, tenantJSON(t))
	return nil
}

func (a *API) deleteTenant(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := a.d.Tenants.Delete(r.Context(), p.Actor(), r.PathValue("tenant")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Token is the JSON form of a token (never its secret, except once in
// CreatedToken).
type Token struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	Role      string     `json:"role,omitempty"`
	Tenant    string     `json:"tenant,omitempty"`
	Device    string     `json:"device,omitempty"`
	Name      string     `json:"name,omitempty"`
	CreatedBy string     `json:"created_by"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	UsedAt    *time.Time `json:"used_at,omitempty"`
}

func opt(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func tokenJSON(t *store.Token) Token {
	return Token{ID: t.ID, Kind: t.Kind, Role: t.Role, Tenant: t.Tenant, Device: t.Device, Name: t.Name,
		CreatedBy: t.CreatedBy, CreatedAt: t.CreatedAt, ExpiresAt: opt(t.ExpiresAt), RevokedAt: opt(t.RevokedAt), UsedAt: opt(t.UsedAt)}
}

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	Kind   string `json:"kind,omitempty"` // "api" (default) or "enroll"
	Role   string `json:"role,omitempty"`
	Tenant string `json:"tenant,omitempty"`
	Device string `json:"device,omitempty"`
	Name   string `json:"name,omitempty"`
	TTL    string `json:"ttl,omitempty"` // Go duration, e.g. "24h"
}

// CreatedToken is the response to POST /api/v1/tokens: the only time the
// secret is shown.
type CreatedToken struct {
	Token
	Secret string `json:"token"`
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req CreateTokenRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	var ttl time.Duration
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return Invalid(errors.New("ttl must be a duration such as 90m or 24h"))
		}
	}
	if req.Tenant == "" && p.Tenant != "" {
		req.Tenant = p.Tenant
	}
	secret, tk, err := a.d.Tokens.Create(r.Context(), p, tenant.NewTokenRequest{
		Kind: req.Kind, Role: req.Role, Tenant: req.Tenant, Device: req.Device, Name: req.Name, TTL: ttl})
	if err != nil {
		if errors.Is(err, tenant.ErrValidation) {
			return Invalid(err)
		}
		return err
	}
	WriteJSON(w, http.StatusCreated, CreatedToken{Token: tokenJSON(tk), Secret: secret})
	return nil
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	kind := r.URL.Query().Get("kind")
	if kind == "" {
		kind = store.TokenAPI
	}
	tks, err := a.d.Store.ListTokens(r.Context(), kind, p.Tenant)
	if err != nil {
		return err
	}
	out := make([]Token, 0, len(tks))
	for _, t := range tks {
		out = append(out, tokenJSON(t))
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) revokeToken(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := a.d.Tokens.Revoke(r.Context(), p, r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// AuditEntry is the JSON form of an audit record.
type AuditEntry struct {
	Seq      int64     `json:"seq"`
	Time     time.Time `json:"time"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	Target   string    `json:"target,omitempty"`
	Tenant   string    `json:"tenant,omitempty"`
	Result   string    `json:"result"`
	Detail   string    `json:"detail,omitempty"`
	PrevHash string    `json:"prev_hash"`
	Hash     string    `json:"hash"`
}

func (a *API) listAudit(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	q := r.URL.Query()
	f := store.AuditFilter{Tenant: q.Get("tenant"), Limit: 1000}
	if p.Tenant != "" {
		if f.Tenant != "" && f.Tenant != p.Tenant {
			return &Error{Status: http.StatusForbidden, Title: "Forbidden", Detail: "this token may read only its own tenant's audit entries"}
		}
		f.Tenant = p.Tenant
	}
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return Invalid(errors.New("after must be a non-negative entry number"))
		}
		f.AfterSeq = n
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 10000 {
			return Invalid(errors.New("limit must be between 1 and 10000"))
		}
		f.Limit = n
	}
	recs, err := a.d.Store.ListAudit(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]AuditEntry, 0, len(recs))
	for _, e := range recs {
		out = append(out, AuditEntry{Seq: e.Seq, Time: e.Time, Actor: e.Actor, Action: e.Action, Target: e.Target,
			Tenant: e.Tenant, Result: e.Result, Detail: e.Detail, PrevHash: hex.EncodeToString(e.PrevHash), Hash: hex.EncodeToString(e.Hash)})
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// AuditVerification is the body of GET /api/v1/audit/verify.
type AuditVerification struct {
	OK       bool   `json:"ok"`
	Entries  int64  `json:"entries"`
	Head     string `json:"head,omitempty"`
	BrokenAt int64  `json:"broken_at,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func (a *API) verifyAudit(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	rep, err := audit.Verify(r.Context(), a.d.Store)
	var be *audit.BrokenError
	if errors.As(err, &be) {
		WriteJSON(w, http.StatusOK, AuditVerification{OK: false, BrokenAt: be.Seq, Reason: be.Reason})
		return nil
	}
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, AuditVerification{OK: true, Entries: rep.Entries, Head: hex.EncodeToString(rep.Head)})
	return nil
}

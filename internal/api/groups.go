package api

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// Groups manages enrollment groups (the server implements it).
type Groups interface {
	CreateGroupFromAPI(ctx context.Context, actor, tenant string, req CreateGroupRequest) (*provision.Group, []byte, error)
	ListGroups(ctx context.Context, tenant string) ([]*provision.Group, error)
	GetGroup(ctx context.Context, tenant, name string) (*provision.Group, error)
	DeleteGroup(ctx context.Context, actor, tenant, name string) error
	DeriveGroupDeviceKey(ctx context.Context, actor, tenant, group, device string) ([]byte, error)
	MintGroupToken(ctx context.Context, actor, tenant, group, device string, ttl time.Duration) (string, error)
	RegisterClaimable(ctx context.Context, actor, pool, group, device string) (string, error)
	Claim(ctx context.Context, actor, tenant, code string) (*provision.Device, error)
}

func (a *API) groupRoutes() {
	a.Handle("POST /api/v1/tenants/{tenant}/groups", tenant.PermAdmin, ScopeTenant, "Create an enrollment group", a.createGroup)
	a.Handle("GET /api/v1/tenants/{tenant}/groups", tenant.PermRead, ScopeTenant, "List enrollment groups", a.listGroups)
	a.Handle("GET /api/v1/tenants/{tenant}/groups/{group}", tenant.PermRead, ScopeTenant, "Show an enrollment group", a.getGroup)
	a.Handle("DELETE /api/v1/tenants/{tenant}/groups/{group}", tenant.PermAdmin, ScopeTenant, "Delete an enrollment group", a.deleteGroup)
	a.Handle("POST /api/v1/tenants/{tenant}/groups/{group}/device-keys", tenant.PermAdmin, ScopeTenant, "Derive a device key of a symmetric group (factory line)", a.deriveKey)
	a.Handle("POST /api/v1/tenants/{tenant}/groups/{group}/tokens", tenant.PermWrite, ScopeTenant, "Mint a one-time token of a token group", a.groupToken)
	a.Handle("POST /api/v1/tenants/{tenant}/groups/{group}/claimable", tenant.PermAdmin, ScopeTenant, "Register a device for claiming (maker's pool tenant)", a.claimable)
	a.Handle("POST /api/v1/tenants/{tenant}/claims", tenant.PermWrite, ScopeTenant, "Claim a pooled device with its claim code", a.claim)
}

// CreateGroupRequest is the body of POST .../groups.
type CreateGroupRequest struct {
	Name        string             `json:"name"`
	Mechanism   string             `json:"mechanism"` // x509, tpm, symmetric, token
	X509CAPEM   string             `json:"x509_ca_pem,omitempty"`
	IDFrom      string             `json:"id_from,omitempty"`   // x509: cn, serial, san-dns, san-uri
	IDPrefix    string             `json:"id_prefix,omitempty"` // x509: prefix to strip
	EKRootsPEM  string             `json:"ek_roots_pem,omitempty"`
	AllowedEKs  []string           `json:"allowed_eks,omitempty"`
	Template    provision.Template `json:"template"`
	Reprovision bool               `json:"reprovision,omitempty"`
	WebhookURL  string             `json:"webhook_url,omitempty"`
}

// Group is the JSON form of an enrollment group (no secrets).
type Group struct {
	Name        string             `json:"name"`
	Mechanism   string             `json:"mechanism"`
	Label       string             `json:"est_label"`
	Template    provision.Template `json:"template"`
	Reprovision bool               `json:"reprovision"`
	Enabled     bool               `json:"enabled"`
	Webhook     string             `json:"webhook_url,omitempty"`
	CreatedAt   time.Time          `json:"created_at"`
	// Secret is the symmetric group key (or the webhook secret), base64,
	// shown only in the creation response.
	Secret string `json:"secret,omitempty"`
}

func groupJSON(g *provision.Group) Group {
	out := Group{Name: g.Name, Mechanism: string(g.Mechanism), Label: g.Tenant + "." + g.Name, Template: g.Template,
		Reprovision: g.Reprovision, Enabled: g.Enabled, CreatedAt: g.CreatedAt}
	if g.Webhook != nil {
		out.Webhook = g.Webhook.URL
	}
	return out
}

func (a *API) createGroup(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req CreateGroupRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if _, err := a.d.Store.GetTenant(r.Context(), r.PathValue("tenant")); err != nil {
		return err
	}
	g, secret, err := a.d.Groups.CreateGroupFromAPI(r.Context(), p.Actor(), r.PathValue("tenant"), req)
	if err != nil {
		return err
	}
	out := groupJSON(g)
	if secret != nil {
		out.Secret = base64.StdEncoding.EncodeToString(secret)
	}
	WriteJSON(w, http.StatusCreated, out)
	return nil
}

func (a *API) listGroups(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	gs, err := a.d.Groups.ListGroups(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	out := make([]Group, 0, len(gs))
	for _, g := range gs {
		out = append(out, groupJSON(g))
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) getGroup(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	g, err := a.d.Groups.GetGroup(r.Context(), r.PathValue("tenant"), r.PathValue("group"))
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, groupJSON(g))
	return nil
}

func (a *API) deleteGroup(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := a.d.Groups.DeleteGroup(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("group")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// DeviceRequest names a device (derive-key, tokens, claimable).
type DeviceRequest struct {
	Device string `json:"device"`
	TTL    string `json:"ttl,omitempty"`
}

// SecretResponse carries a secret shown once.
type SecretResponse struct {
	Device string `json:"device"`
	Secret string `json:"secret"`
}

func (a *API) deriveKey(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req DeviceRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if err := wire.ValidateDeviceID(req.Device); err != nil {
		return err
	}
	k, err := a.d.Groups.DeriveGroupDeviceKey(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("group"), req.Device)
	if err != nil {
		return groupErr(err)
	}
	WriteJSON(w, http.StatusOK, SecretResponse{Device: req.Device, Secret: base64.StdEncoding.EncodeToString(k)})
	return nil
}

func (a *API) groupToken(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req DeviceRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	ttl := time.Hour
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl <= 0 {
			return Invalid(errors.New("ttl must be a positive duration"))
		}
	}
	tok, err := a.d.Groups.MintGroupToken(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("group"), req.Device, ttl)
	if err != nil {
		return groupErr(err)
	}
	WriteJSON(w, http.StatusCreated, SecretResponse{Device: req.Device, Secret: tok})
	return nil
}

func (a *API) claimable(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req DeviceRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	code, err := a.d.Groups.RegisterClaimable(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("group"), req.Device)
	if err != nil {
		return groupErr(err)
	}
	WriteJSON(w, http.StatusCreated, SecretResponse{Device: req.Device, Secret: code})
	return nil
}

// ClaimRequest is the body of POST .../claims.
type ClaimRequest struct {
	Code string `json:"code"`
}

func (a *API) claim(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req ClaimRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	d, err := a.d.Groups.Claim(r.Context(), p.Actor(), r.PathValue("tenant"), req.Code)
	if err != nil {
		if provision.ReasonOf(err) == provision.ReasonRateLimited {
			return &Error{Status: http.StatusTooManyRequests, Title: "Too many wrong codes", Detail: "wait and retry"}
		}
		if provision.ReasonOf(err) != "" {
			return &Error{Status: http.StatusBadRequest, Title: "Claim refused", Detail: "the claim code is not valid"}
		}
		return err
	}
	WriteJSON(w, http.StatusOK, map[string]string{"device": d.ID, "owner": d.Owner, "state": d.State})
	return nil
}

func groupErr(err error) error {
	if errors.Is(err, provision.ErrNotFound) {
		return &Error{Status: http.StatusNotFound, Title: "Not found", Detail: err.Error()}
	}
	if provision.ReasonOf(err) != "" || errors.Is(err, wire.ErrInvalidID) {
		return Invalid(err)
	}
	return err
}

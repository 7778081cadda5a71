package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/wardiot/ward/internal/policy"
	"github.com/wardiot/ward/internal/tenant"
)

// PolicyAdmin changes topic policies (the server implements it and
// reconnects affected devices).
type PolicyAdmin interface {
	PutPolicy(ctx context.Context, actor, tenant, name string, doc []byte) error
	DeletePolicy(ctx context.Context, actor, tenant, name string) error
	AssignPolicy(ctx context.Context, actor, tenant, kind, target, name string) error
}

func (a *API) policyRoutes() {
	a.Handle("GET /api/v1/tenants/{tenant}/policies", tenant.PermRead, ScopeTenant, "List topic policies and their assignments", a.listPolicies)
	a.Handle("PUT /api/v1/tenants/{tenant}/policies/{name}", tenant.PermWrite, ScopeTenant, "Create or replace a topic policy", a.putPolicy)
	a.Handle("DELETE /api/v1/tenants/{tenant}/policies/{name}", tenant.PermWrite, ScopeTenant, "Delete a topic policy", a.deletePolicy)
	a.Handle("PUT /api/v1/tenants/{tenant}/policy-assignments", tenant.PermWrite, ScopeTenant, "Assign a policy to a device or a group (empty policy: remove)", a.assignPolicy)
}

// Policies is the body of GET .../policies.
type Policies struct {
	Policies    []NamedPolicy      `json:"policies"`
	Assignments []PolicyAssignment `json:"assignments"`
}

// NamedPolicy is a stored policy.
type NamedPolicy struct {
	Name      string          `json:"name"`
	Document  json.RawMessage `json:"document"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// PolicyAssignment binds a policy to a device or a group.
type PolicyAssignment struct {
	Kind   string `json:"kind"` // device or group
	Target string `json:"target"`
	Policy string `json:"policy"`
}

func (a *API) listPolicies(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	tid := r.PathValue("tenant")
	ps, err := a.d.Store.ListPolicies(r.Context(), tid)
	if err != nil {
		return err
	}
	as, err := a.d.Store.ListPolicyAssignments(r.Context(), tid)
	if err != nil {
		return err
	}
	out := Policies{Policies: []NamedPolicy{}, Assignments: []PolicyAssignment{}}
	for _, x := range ps {
		out.Policies = append(out.Policies, NamedPolicy{Name: x.Name, Document: x.Doc, UpdatedAt: x.UpdatedAt})
	}
	for _, x := range as {
		out.Assignments = append(out.Assignments, PolicyAssignment{Kind: x.Kind, Target: x.Target, Policy: x.Policy})
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) putPolicy(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	doc, err := io.ReadAll(http.MaxBytesReader(w, r.Body, policy.MaxDocumentSize))
	if err != nil {
		return &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: "the policy document is too large"}
	}
	if err := a.d.Policies.PutPolicy(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("name"), doc); err != nil {
		if errors.Is(err, policy.ErrInvalidPolicy) {
			return Invalid(err)
		}
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) deletePolicy(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := a.d.Policies.DeletePolicy(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) assignPolicy(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req PolicyAssignment
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	err := a.d.Policies.AssignPolicy(r.Context(), p.Actor(), r.PathValue("tenant"), req.Kind, req.Target, req.Policy)
	if err != nil {
		return Invalid(err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

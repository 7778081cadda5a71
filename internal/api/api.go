// Package api serves Ward's REST API under /api/v1/: JSON in and out,
// errors as RFC 9457 problem+json with a safe message, every route
// authenticated with a bearer token and authorised by role and tenant.
//
// Routes are registered through [API.Handle], which records each route's
// permission and scope; the route sweep test walks that list, so a route
// cannot be added without being swept.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/fleet"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// Scope says which tenant a route's permission is checked against.
type Scope int

const (
	// ScopeGlobal routes act on the installation; tenant-scoped tokens
	// are refused.
	ScopeGlobal Scope = iota
	// ScopeTenant routes carry {tenant} in the path; the caller must be
	// global or scoped to that tenant.
	ScopeTenant
	// ScopeAny routes check the permission within the caller's own scope;
	// the handler narrows what it returns to that scope.
	ScopeAny
)

// Route describes one registered route.
type Route struct {
	Method  string
	Path    string // ServeMux pattern path, e.g. /api/v1/tenants/{tenant}
	Perm    tenant.Perm
	Scope   Scope
	Summary string
}

// HandlerFunc handles an authenticated, authorised request. A returned
// error is turned into a problem+json response by [WriteError].
type HandlerFunc func(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error

// Deps are what the API needs from the rest of the server.
type Deps struct {
	Store   store.Store
	Tenants *tenant.Service
	Tokens  *tenant.Tokens
	PKI     *pki.Authority
	// CAKeys returns a tenant's CA key manager (nil: file mode, sealed
	// with the tenant's data key).
	CAKeys   func(ctx context.Context, tenant string) (pki.KeyManager, error)
	Monitor  *monitor.Monitor
	Fleet    *fleet.Registry
	Schemas  SchemaRegistry
	Twins    Twins
	Policies PolicyAdmin
	Groups   Groups
	MAC      MACAdmin
	Attest   Attestation
	OTA      OTA      // ota.go
	Rollouts Rollouts // rollout.go
	Log      *slog.Logger
	Now      func() time.Time
}

// API is the REST API.
type API struct {
	d      Deps
	mux    *http.ServeMux
	routes []Route
}

// New builds the API with its core routes; other parts add theirs with Handle.
func New(d Deps) *API {
	a := &API{d: d, mux: http.NewServeMux()}
	a.coreRoutes()
	a.eventRoutes()
	if d.PKI != nil {
		a.pkiRoutes()
	}
	if d.Fleet != nil {
		a.deviceRoutes()
	}
	if d.Schemas != nil {
		a.telemetryRoutes()
	}
	if d.Twins != nil {
		a.twinRoutes()
	}
	if d.Policies != nil {
		a.policyRoutes()
	}
	if d.Groups != nil {
		a.groupRoutes()
	}
	if d.MAC != nil {
		a.macRoutes()
	}
	if d.Attest != nil {
		a.attestRoutes()
	}
	if d.OTA != nil {
		a.otaRoutes()
	}
	if d.Rollouts != nil {
		a.rolloutRoutes()
	}
	return a
}

// Routes lists every registered route.
func (a *API) Routes() []Route { return append([]Route(nil), a.routes...) }

// Handler returns the http.Handler serving /api/v1/.
func (a *API) Handler() http.Handler { return a.mux }

// maxAuthHeader bounds the Authorization header we look at.
const maxAuthHeader = 256

// Handle registers a route. pattern is "METHOD /path".
func (a *API) Handle(pattern string, perm tenant.Perm, scope Scope, summary string, h HandlerFunc) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		panic("api: pattern needs a method: " + pattern)
	}
	if scope == ScopeTenant && !strings.Contains(path, "{tenant}") {
		panic("api: tenant-scoped route without {tenant}: " + pattern)
	}
	a.routes = append(a.routes, Route{Method: method, Path: path, Perm: perm, Scope: scope, Summary: summary})
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		p, err := a.authenticate(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ward"`)
			WriteError(w, r, a.d.Log, &Error{Status: http.StatusUnauthorized, Title: "Unauthorized",
				Detail: "missing, invalid, expired or revoked token: send Authorization: Bearer <token>"})
			return
		}
		var target string
		switch scope {
		case ScopeTenant:
			target = r.PathValue("tenant")
			if err := wire.ValidateTenantID(target); err != nil {
				WriteError(w, r, a.d.Log, err)
				return
			}
		case ScopeAny:
			target = p.Tenant
		}
		if !p.Allows(perm, target) {
			a.denied(r, p, perm, target)
			WriteError(w, r, a.d.Log, &Error{Status: http.StatusForbidden, Title: "Forbidden",
				Detail: fmt.Sprintf("this token (role %s) may not %s here", p.Role, perm)})
			return
		}
		if slot, ok := r.Context().Value(slotKey{}).(**tenant.Principal); ok {
			*slot = p
		}
		ctx := audit.WithActor(withPrincipal(r.Context(), p), p.Actor())
		if err := h(w, r.WithContext(ctx), p); err != nil {
			WriteError(w, r, a.d.Log, err)
		}
	})
}

func (a *API) authenticate(r *http.Request) (*tenant.Principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" || len(h) > maxAuthHeader {
		return nil, tenant.ErrUnauthenticated
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, tenant.ErrUnauthenticated
	}
	return a.d.Tokens.Authenticate(r.Context(), strings.TrimSpace(tok))
}

// denied records an authorisation refusal: it is a security decision.
func (a *API) denied(r *http.Request, p *tenant.Principal, perm tenant.Perm, target string) {
	err := a.d.Store.InTx(r.Context(), func(tx store.Tx) error {
		_, err := audit.Append(r.Context(), tx, a.d.Now(), audit.Entry{
			Actor: p.Actor(), Action: "api.denied", Target: r.Method + " " + r.URL.Path, Tenant: target,
			Result: audit.ResultDenied, Detail: "needs " + perm.String() + ", role " + p.Role,
		})
		return err
	})
	if err != nil {
		a.d.Log.Error("audit write failed", "err", err)
	}
}

type principalKey struct{}

type slotKey struct{}

// WithPrincipalSlot returns a context in which the API records the
// authenticated principal for the caller that made the context (the
// server's access log, which wraps the API handler), and a getter.
func WithPrincipalSlot(ctx context.Context) (context.Context, func() *tenant.Principal) {
	var p *tenant.Principal
	return context.WithValue(ctx, slotKey{}, &p), func() *tenant.Principal { return p }
}

func withPrincipal(ctx context.Context, p *tenant.Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the authenticated caller of a request, if any.
func PrincipalFrom(ctx context.Context) *tenant.Principal {
	p, _ := ctx.Value(principalKey{}).(*tenant.Principal)
	return p
}

// maxBody bounds JSON request bodies.
const maxBody = 1 << 20

// Decode reads a JSON body into v strictly: unknown fields are errors.
func Decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large",
				Detail: fmt.Sprintf("request body is over %d bytes", maxBody)}
		}
		return &Error{Status: http.StatusBadRequest, Title: "Bad request", Detail: "invalid JSON body: " + safeJSONErr(err)}
	}
	return nil
}

// safeJSONErr keeps decoder messages short; they describe syntax and field
// names, never the caller's values.
func safeJSONErr(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// WriteJSON writes v with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

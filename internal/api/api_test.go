package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/storetest"
	"github.com/wardiot/ward/internal/tenant"
)

var ctx = context.Background()

type fixture struct {
	api    *api.API
	srv    *httptest.Server
	tokens map[string]string // name -> secret
	store  store.Store
}

// newFixture builds the API over a real store with tenants acme and globex
// and a token of every role in every scope.
func newFixture(t *testing.T) *fixture {
	s := storetest.SQLite(t)
	svc := tenant.NewService(s, tenant.NewMemoryKEK(), time.Now)
	toks := tenant.NewTokens(s, time.Now)
	a := api.New(api.Deps{Store: s, Tenants: svc, Tokens: toks, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now})
	f := &fixture{api: a, tokens: map[string]string{}, store: s}
	for _, id := range []string{"acme", "globex"} {
		if _, err := svc.Create(ctx, "test", id, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, role := range []string{tenant.RoleAdmin, tenant.RoleOperator, tenant.RoleViewer, tenant.RoleAuditor} {
		for _, scope := range []string{"", "acme", "globex"} {
			sec, _, err := toks.Create(ctx, nil, tenant.NewTokenRequest{Role: role, Tenant: scope})
			if err != nil {
				t.Fatal(err)
			}
			f.tokens[role+"@"+scope] = sec
		}
	}
	f.srv = httptest.NewServer(a.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path, token string) *http.Response {
	t.Helper()
	var body io.Reader
	if method == "POST" || method == "PUT" || method == "PATCH" {
		body = strings.NewReader(`{}`)
	}
	req, _ := http.NewRequest(method, f.srv.URL+path, body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// concrete fills a route pattern's wildcards.
func concrete(path, tenantID string) string {
	r := strings.NewReplacer("{tenant}", tenantID, "{id}", "0000000000000000", "{serial}", "01", "{device}", "dev-1",
		"{group}", "g1", "{name}", "n1", "{ca}", "ca1", "{label}", "l1")
	return r.Replace(path)
}

var rolePerms = map[string][]tenant.Perm{
	tenant.RoleAdmin:    {tenant.PermRead, tenant.PermWrite, tenant.PermAudit, tenant.PermAdmin},
	tenant.RoleOperator: {tenant.PermRead, tenant.PermWrite},
	tenant.RoleViewer:   {tenant.PermRead},
	tenant.RoleAuditor:  {tenant.PermRead, tenant.PermAudit},
}

func has(ps []tenant.Perm, p tenant.Perm) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// TestRouteSweep walks EVERY registered route: without a token, or with a
// bad one, it must answer 401; with a token of another tenant, a
// tenant-scoped token on a global route, or a role lacking the route's
// permission, 403. The list comes from the router itself, so a new route
// is swept the moment it is registered.
func TestRouteSweep(t *testing.T) {
	routes := newFixture(t).api.Routes()
	if len(routes) < 10 {
		t.Fatalf("only %d routes registered", len(routes))
	}
	for _, rt := range routes {
		name := rt.Method + " " + rt.Path
		t.Run(name, func(t *testing.T) {
			// A fresh fixture per route: the positive checks may delete
			// what later checks need.
			f := newFixture(t)
			path := concrete(rt.Path, "acme")
			if c := f.do(t, rt.Method, path, "").StatusCode; c != 401 {
				t.Errorf("no token: %d, want 401", c)
			}
			if c := f.do(t, rt.Method, path, "wardapi_0123456789abcdef_notarealsecret").StatusCode; c != 401 {
				t.Errorf("bad token: %d, want 401", c)
			}
			switch rt.Scope {
			case api.ScopeTenant:
				if c := f.do(t, rt.Method, path, f.tokens["admin@globex"]).StatusCode; c != 403 {
					t.Errorf("other tenant's admin: %d, want 403", c)
				}
			case api.ScopeGlobal:
				if c := f.do(t, rt.Method, path, f.tokens["admin@acme"]).StatusCode; c != 403 {
					t.Errorf("tenant-scoped admin on a global route: %d, want 403", c)
				}
			}
			for role, perms := range rolePerms {
				scope := ""
				if rt.Scope == api.ScopeTenant {
					scope = "acme"
				}
				c := f.do(t, rt.Method, path, f.tokens[role+"@"+scope]).StatusCode
				if !has(perms, rt.Perm) && c != 403 {
					t.Errorf("role %s lacks %s: %d, want 403", role, rt.Perm, c)
				}
				if has(perms, rt.Perm) && (c == 401 || c == 403) {
					t.Errorf("role %s has %s: %d", role, rt.Perm, c)
				}
			}
		})
	}
}

// TestOpenAPIMatchesRoutes checks that the OpenAPI document lists every
// route and no route that does not exist.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	inDoc := map[string]bool{}
	for p, ops := range doc.Paths {
		for m := range ops {
			if m == "parameters" {
				continue
			}
			inDoc[strings.ToUpper(m)+" "+p] = true
		}
	}
	f := newFixture(t)
	var missing []string
	for _, rt := range f.api.Routes() {
		k := rt.Method + " " + rt.Path
		if !inDoc[k] {
			missing = append(missing, k)
		}
		delete(inDoc, k)
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("routes missing from openapi.json: %v", missing)
	}
	if len(inDoc) > 0 {
		t.Errorf("openapi.json lists routes that do not exist: %v", inDoc)
	}
}

func TestProblemJSON(t *testing.T) {
	f := newFixture(t)
	req, _ := http.NewRequest("POST", f.srv.URL+"/api/v1/tenants", strings.NewReader(`{"id": "Not Valid!"}`))
	req.Header.Set("Authorization", "Bearer "+f.tokens["admin@"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	json.NewDecoder(resp.Body).Decode(&p)
	if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/problem+json" || p.Status != 400 || p.Detail == "" {
		t.Fatalf("got %d %s %+v", resp.StatusCode, resp.Header.Get("Content-Type"), p)
	}
	// Unknown fields are refused rather than ignored.
	req, _ = http.NewRequest("POST", f.srv.URL+"/api/v1/tenants", strings.NewReader(`{"id": "ok", "admin": true}`))
	req.Header.Set("Authorization", "Bearer "+f.tokens["admin@"])
	resp2, _ := http.DefaultClient.Do(req)
	resp2.Body.Close()
	if resp2.StatusCode != 400 {
		t.Fatalf("unknown field: %d", resp2.StatusCode)
	}
}

func TestDenialsAreAudited(t *testing.T) {
	f := newFixture(t)
	f.do(t, "DELETE", "/api/v1/tenants/acme", f.tokens["viewer@acme"])
	recs, err := f.store.ListAudit(ctx, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	last := recs[len(recs)-1]
	if last.Action != "api.denied" || last.Result != "denied" || !strings.Contains(last.Target, "/api/v1/tenants/acme") {
		t.Fatalf("last audit entry %+v", last)
	}
}

package server_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/server"
	"github.com/wardiot/ward/internal/tenant"
)

// sweepFixture is a real server (every part wired, every route registered)
// with tenants acme and globex and a token of every role in every scope.
type sweepFixture struct {
	srv    *server.Server
	tokens map[string]string
	http   *http.Client
	base   string
}

func newSweepFixture(t *testing.T) *sweepFixture {
	t.Helper()
	dir := t.TempDir()
	srv := start(t, dir, io.Discard)
	t.Cleanup(func() { srv.Close() })
	f := &sweepFixture{srv: srv, tokens: map[string]string{}, base: "https://" + srv.APIAddr(),
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool(t, dir)}}}}
	for _, id := range []string{"acme", "globex"} {
		if _, err := srv.Tenants.Create(ctx, "test", id, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, role := range []string{tenant.RoleAdmin, tenant.RoleOperator, tenant.RoleViewer, tenant.RoleAuditor} {
		for _, scope := range []string{"", "acme", "globex"} {
			sec, _, err := srv.Tokens.Create(ctx, nil, tenant.NewTokenRequest{Role: role, Tenant: scope})
			if err != nil {
				t.Fatal(err)
			}
			f.tokens[role+"@"+scope] = sec
		}
	}
	return f
}

func (f *sweepFixture) do(t *testing.T, method, path, token string) *http.Response {
	t.Helper()
	var body io.Reader
	if method == "POST" || method == "PUT" || method == "PATCH" {
		body = strings.NewReader(`{}`)
	}
	req, _ := http.NewRequest(method, f.base+path, body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.http.Do(req)
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
	routes := newSweepFixture(t).srv.API.Routes()
	if len(routes) < 10 {
		t.Fatalf("only %d routes registered", len(routes))
	}
	for _, rt := range routes {
		name := rt.Method + " " + rt.Path
		t.Run(name, func(t *testing.T) {
			// A fresh fixture per route: the positive checks may delete
			// what later checks need.
			f := newSweepFixture(t)
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
	f := newSweepFixture(t)
	var missing []string
	for _, rt := range f.srv.API.Routes() {
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

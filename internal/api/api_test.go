package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
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

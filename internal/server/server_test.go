package server_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/server"
)

var ctx = context.Background()

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, dir string, logw io.Writer) *server.Server {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.APIAddr, cfg.HTTPAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.LogLevel = "debug"
	log := slog.New(slog.NewJSONHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := server.Open(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return srv
}

// TestSecretsNeverLogged runs a server at debug level through first start,
// token minting, good and bad authentication and tenant creation, then
// searches every log line and every error body for the admin token, the
// minted tokens, and the key-encryption key in any encoding.
func TestSecretsNeverLogged(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	srv := start(t, dir, logs)
	defer srv.Close()

	adminTok, err := os.ReadFile(server.AdminTokenPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := client.FromFiles(srv.APIAddr(), server.AdminTokenPath(dir), server.CABundlePath(dir))
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{strings.TrimSpace(string(adminTok))}
	var bodies []string
	if err := admin.Do(ctx, "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: "acme"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, req := range []api.CreateTokenRequest{
		{Role: "operator", Tenant: "acme"},
		{Kind: "enroll", Tenant: "acme", Device: "dev-1", TTL: "1h"},
	} {
		var tk api.CreatedToken
		if err := admin.Do(ctx, "POST", "/api/v1/tokens", req, &tk); err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, tk.Secret)
	}
	ca, _ := os.ReadFile(server.CABundlePath(dir))
	for _, s := range secrets {
		// A near miss, a use as the wrong kind, a good use.
		for _, tok := range []string{s, s[:len(s)-2] + "xx"} {
			c, _ := client.New(srv.APIAddr(), tok, ca)
			err := c.Do(ctx, "GET", "/api/v1/tenants/acme", nil, nil)
			if err != nil {
				bodies = append(bodies, err.Error())
			}
			err = c.Do(ctx, "DELETE", "/api/v1/tenants/nope", nil, nil)
			if err != nil {
				bodies = append(bodies, err.Error())
			}
		}
	}
	kek, err := os.ReadFile(filepath.Join(dir, "kek.key"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	out := logs.String()
	if !strings.Contains(out, "http request") || !strings.Contains(out, `"token_id"`) {
		t.Fatal("debug access log (with token IDs) missing: the test would prove nothing")
	}
	needles := map[string]string{
		"kek (hex)":    hex.EncodeToString(kek),
		"kek (base64)": base64.StdEncoding.EncodeToString(kek),
		"kek (raw)":    string(kek),
	}
	for i, s := range secrets {
		needles["token "+string(rune('0'+i))] = s
		// The secret part alone, too.
		needles["token secret "+string(rune('0'+i))] = s[strings.LastIndex(s, "_")+1:]
	}
	for what, n := range needles {
		if strings.Contains(out, n) {
			t.Errorf("%s appears in the logs", what)
		}
		for _, b := range bodies {
			if strings.Contains(b, n) {
				t.Errorf("%s appears in an error response: %s", what, b)
			}
		}
	}
}

// TestRestartKeepsEverything stops and restarts a server on the same data
// directory: the tenant, the admin token, the CA bundle and the audit chain
// survive, and no second admin token is minted.
func TestRestartKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	srv := start(t, dir, io.Discard)
	admin, _ := client.FromFiles(srv.APIAddr(), server.AdminTokenPath(dir), server.CABundlePath(dir))
	if err := admin.Do(ctx, "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: "acme"}, nil); err != nil {
		t.Fatal(err)
	}
	ca1, _ := os.ReadFile(server.CABundlePath(dir))
	tok1, _ := os.ReadFile(server.AdminTokenPath(dir))
	srv.Close()

	srv = start(t, dir, io.Discard)
	defer srv.Close()
	ca2, _ := os.ReadFile(server.CABundlePath(dir))
	tok2, _ := os.ReadFile(server.AdminTokenPath(dir))
	if !bytes.Equal(ca1, ca2) || !bytes.Equal(tok1, tok2) {
		t.Fatal("CA bundle or admin token changed across restart")
	}
	admin, _ = client.FromFiles(srv.APIAddr(), server.AdminTokenPath(dir), server.CABundlePath(dir))
	var tn api.Tenant
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme", nil, &tn); err != nil {
		t.Fatalf("tenant lost across restart: %v", err)
	}
	var toks []api.Token
	if err := admin.Do(ctx, "GET", "/api/v1/tokens", nil, &toks); err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 {
		t.Fatalf("%d API tokens after restart, want only the initial admin token", len(toks))
	}
	var v api.AuditVerification
	if err := admin.Do(ctx, "GET", "/api/v1/audit/verify", nil, &v); err != nil || !v.OK {
		t.Fatalf("audit after restart: %+v %v", v, err)
	}
	for _, f := range []string{"kek.key", "admin.token", "platform-ca.key.seal", "ward.db"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
}

func caPool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(server.CABundlePath(dir))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

func readFile(t *testing.T, path string) ([]byte, error) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b, nil
}

package cli_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/cli"
	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/server"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = cli.Main(args, strings.NewReader(""), &o, &e)
	return code, o.String(), e.String()
}

// TestInvalidConfigReportsEveryProblem: one run, one clear message per
// problem, exit code 2, and nothing started or created.
func TestInvalidConfigReportsEveryProblem(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "never-created")
	code, _, stderr := run(t, "server", "--data", dir, "--api-addr", "nonsense", "--http-addr", "127.0.0.1:99999x",
		"--database", "mysql://x", "--log-level", "loud", "--log-format", "xml", "--public-url", "ftp://x")
	if code != 2 {
		t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{"6 problem(s)", "api_addr", "http_addr", "database", "log_level", "log_format", "public_url", "ward: hint:"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("the data directory was created despite the invalid configuration")
	}
}

func TestConfigFileUnknownKeyRefused(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ward.yaml")
	os.WriteFile(f, []byte("api_addr: 127.0.0.1:0\napi_adr: typo\n"), 0o600)
	code, _, stderr := run(t, "server", "--data", t.TempDir(), "--config", f)
	if code != 2 || !strings.Contains(stderr, "api_adr") {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
}

func TestUnknownFlagIsUsageError(t *testing.T) {
	code, _, stderr := run(t, "tenant", "list", "--nope")
	if code != 2 || !strings.HasPrefix(stderr, "ward: error:") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestClientWithoutAddressHints(t *testing.T) {
	t.Setenv("WARD_ADDR", "")
	t.Setenv("WARD_TOKEN", "")
	t.Setenv("WARD_CACERT", "")
	code, _, stderr := run(t, "tenant", "list")
	if code != 2 || !strings.Contains(stderr, "ward: hint: set WARD_ADDR") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestOperatorCommands drives the CLI against a real server: --data on the
// server host, then WARD_* variables with a scoped token.
func TestOperatorCommands(t *testing.T) {
	dir, srv := startServer(t)

	mustRun(t, "--data", dir, "tenant", "create", "acme", "--name", "Acme Corp")
	out := mustRun(t, "--data", dir, "tenant", "list", "-o", "json")
	var ts []map[string]any
	if err := json.Unmarshal([]byte(out), &ts); err != nil || len(ts) != 1 || ts[0]["id"] != "acme" {
		t.Fatalf("tenant list json: %q %v", out, err)
	}
	tok := strings.TrimSpace(mustRun(t, "--data", dir, "token", "create", "--role", "viewer", "--tenant", "acme", "--ttl", "1h"))
	t.Setenv("WARD_ADDR", srv.APIAddr())
	t.Setenv("WARD_CACERT", server.CABundlePath(dir))
	t.Setenv("WARD_TOKEN", tok)
	if out := mustRun(t, "whoami"); !strings.Contains(out, "viewer") || !strings.Contains(out, "acme") {
		t.Fatalf("whoami: %s", out)
	}
	code, _, stderr := run(t, "tenant", "delete", "acme")
	if code != 1 || !strings.Contains(stderr, "403") {
		t.Fatalf("viewer deleting a tenant: exit %d %s", code, stderr)
	}
	t.Setenv("WARD_TOKEN", "")
	if out := mustRun(t, "--data", dir, "audit", "verify"); !strings.Contains(out, "audit chain intact") {
		t.Fatalf("verify: %s", out)
	}
	if out := mustRun(t, "--data", dir, "audit", "list"); !strings.Contains(out, "tenant.create") || !strings.Contains(out, "api.denied") {
		t.Fatalf("audit list: %s", out)
	}
	// Tamper, then verify must exit non-zero naming the entry.
	db := srv.Store().(interface{ SQL() *sql.DB }).SQL()
	if _, err := db.Exec(`UPDATE audit SET detail = 'forged' WHERE seq = 2`); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = run(t, "--data", dir, "audit", "verify")
	if code != 1 || !strings.Contains(stderr, "broken at entry 2") {
		t.Fatalf("tampered verify: exit %d %s", code, stderr)
	}
}

// startServer runs a real server on loopback ports in a fresh data
// directory for the rest of the test.
func startServer(t *testing.T) (string, *server.Server) {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.APIAddr, cfg.HTTPAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	srv, err := server.Open(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return dir, srv
}

// mustRun runs the CLI and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := run(t, args...)
	if code != 0 {
		t.Fatalf("ward %v: exit %d\n%s", args, code, errs)
	}
	return out
}

package agentcli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/wire"
)

const tenant = "acme"

// server is a Ward-like test server: EST from esttest's CA, and POST
// /api/v1/tokens minting enrollment tokens into that CA.
type server struct {
	url, caFile, apiToken string
	ca                    *esttest.CA
	mu                    sync.Mutex
	minted                int
}

func newServer(t testing.TB, hosts ...string) *server {
	t.Helper()
	return newServerWith(t, nil, nil, hosts...)
}

// newServerWith is newServer with the EST CA wrapped by wrap and more
// routes added by routes (either may be nil).
func newServerWith(t testing.TB, wrap func(*esttest.CA) est.CA, routes func(*http.ServeMux), hosts ...string) *server {
	t.Helper()
	s := &server{ca: esttest.NewCA(t, tenant), apiToken: "api-" + rand.Text()}
	var ca est.CA = s.ca
	if wrap != nil {
		ca = wrap(s.ca)
	}
	h, err := est.New(ca)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(wire.ESTPrefix, h)
	mux.HandleFunc("POST /api/v1/tokens", s.mint)
	if routes != nil {
		routes(mux)
	}
	srv := httptest.NewUnstartedServer(mux)
	caPEM, cert := serverCert(t, hosts...)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	est.ConfigureTLS(srv.TLS)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s.url = srv.URL
	s.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(s.caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// mint follows the contract of internal/api's createToken, decoding the
// request into its own types.
func (s *server) mint(w http.ResponseWriter, r *http.Request) {
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+s.apiToken)) != 1 {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"type":"about:blank","title":"Unauthorized","status":401,"detail":"missing or invalid API token"}`)
		return
	}
	var req api.CreateTokenRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Kind != "enroll" || req.Tenant != tenant || req.TTL != "1h" || wire.ValidateDeviceID(req.Device) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	secret := "enr-" + rand.Text()
	s.ca.AddToken(secret, req.Device)
	s.mu.Lock()
	s.minted++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(api.CreatedToken{Secret: secret})
}

func serverCert(t testing.TB, hosts ...string) ([]byte, tls.Certificate) {
	t.Helper()
	now := time.Now()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "CLI Test Server CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour * 24 * 365), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour * 24 * 365),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if len(hosts) == 0 {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	} else {
		tmpl.DNSNames = hosts
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t testing.TB, ctx context.Context, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, &errb)
	return result{code, out.String(), errb.String()}
}

func writeFile(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEnrollStatusRenewRun(t *testing.T) {
	s := newServer(t)
	s.ca.AddToken("factory-token", "pump-1")
	state := filepath.Join(t.TempDir(), "state")
	ctx := context.Background()
	r := runCLI(t, ctx, "enroll", "--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--device", "pump-1",
		"--token-file", writeFile(t, "factory-token\n"), "--state", state)
	if r.code != 0 || !strings.Contains(r.stdout, "enrolled acme/pump-1") || !strings.Contains(r.stdout, "key device-1 in the file keystore") {
		t.Fatalf("enroll: %+v", r)
	}

	r = runCLI(t, ctx, "status", "--state", state)
	for _, want := range []string{"tenant:       acme", "device:       pump-1", "keystore:     file (key device-1, generation 1)", "expires in 2"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runCLI(t, ctx, "status", "--state", state, "--output", "json")
	var st agent.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Device != "pump-1" || st.KeystoreKind != "file" || st.Generation != 1 {
		t.Fatalf("status json: %v %+v\n%s", err, st, r.stdout)
	}

	r = runCLI(t, ctx, "renew", "--state", state)
	if r.code != 0 || !strings.Contains(r.stdout, "key device-2") {
		t.Fatalf("renew: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(state, "keys", "device-1.pem")); !os.IsNotExist(err) {
		t.Errorf("old key file still present: %v", err)
	}

	// run starts, logs, and stops cleanly when its context ends.
	runCtx, cancel := context.WithCancel(ctx)
	var out, errb syncBuffer
	done := make(chan int)
	go func() { done <- run(runCtx, []string{"run", "--state", state}, nil, &out, &errb) }()
	waitFor(t, func() bool { return strings.Contains(errb.String(), "agent started") })
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("run exited %d: %s", code, errb.String())
	}
}

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

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEnrollErrorsAndHints(t *testing.T) {
	s := newServer(t)
	other := newServer(t)
	wrongHost := newServer(t, "ward.example")
	state := func() string { return filepath.Join(t.TempDir(), "state") }
	tok := writeFile(t, "nope\n")
	for name, tc := range map[string]struct {
		args      []string
		code      int
		err, hint string
	}{
		"fail/untrusted-server": {[]string{"--server", s.url, "--ca", other.caFile, "--tenant", tenant, "--device", "d1", "--token-file", tok, "--state", state()},
			1, "is not signed by the given CA bundle", "--ca must hold the CA certificate that signed the server's TLS certificate"},
		"fail/wrong-host": {[]string{"--server", wrongHost.url, "--ca", wrongHost.caFile, "--tenant", tenant, "--device", "d1", "--token-file", tok, "--state", state()},
			1, "does not name that host", "--server must use a name in that certificate"},
		"fail/bad-token": {[]string{"--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--device", "d1", "--token-file", tok, "--state", state()},
			1, "403 Forbidden: the enrollment token is not valid", "check that the token is valid, unused"},
		"fail/unknown-tenant": {[]string{"--server", s.url, "--ca", s.caFile, "--tenant", "globex", "--device", "d1", "--token-file", tok, "--state", state()},
			1, "404", "no such EST label"},
		"fail/inline-pin": {[]string{"--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--device", "d1", "--token-file", tok, "--state", state(),
			"--keystore", "pkcs11:module=/x.so;token=t;pin=1234"}, 2, "inline PIN", "pin-source=FILE"},
		"fail/no-token": {[]string{"--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--device", "d1", "--state", state()},
			2, "no enrollment token", "--token-file"},
		"fail/missing-flags": {[]string{"--server", s.url}, 2, "missing --ca, --tenant, --device, --state", ""},
	} {
		t.Run(name, func(t *testing.T) {
			r := runCLI(t, context.Background(), append([]string{"enroll"}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, "ward-agent: error: ") || !strings.Contains(r.stderr, tc.err) {
				t.Fatalf("got %d %q, want %d and %q", r.code, r.stderr, tc.code, tc.err)
			}
			if tc.hint != "" && !strings.Contains(r.stderr, "ward-agent: hint: ") || !strings.Contains(r.stderr, tc.hint) {
				t.Errorf("hint missing: %q", r.stderr)
			}
			if strings.Contains(r.stderr, "nope") || strings.Contains(r.stderr, "1234") {
				t.Errorf("a secret reached stderr: %q", r.stderr)
			}
		})
	}
	if r := runCLI(t, context.Background(), "status", "--state", t.TempDir()); r.code != 1 || !strings.Contains(r.stderr, "ward-agent: hint: enroll first") {
		t.Errorf("status of nothing: %+v", r)
	}
}

var summary = regexp.MustCompile(`simulate: (\d+) devices: (\d+) enrolled, (\d+) failed in \S+ \(([\d.]+) enrollments/s\); latency p50 (\S+) p99 (\S+)`)

func TestSimulateTokenFile(t *testing.T) {
	s := newServer(t)
	const n = 200
	var lines strings.Builder
	lines.WriteString("# device token\n\n")
	for i := range n {
		id, tok := fmt.Sprintf("sensor-%03d", i), "t-"+rand.Text()
		s.ca.AddToken(tok, id)
		fmt.Fprintf(&lines, "%s %s\n", id, tok)
	}
	r := runCLI(t, context.Background(), "simulate", "--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--count", "200", "--token-file", writeFile(t, lines.String()))
	m := summary.FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil || m[1] != "200" || m[2] != "200" || m[3] != "0" {
		t.Fatalf("simulate: %+v", r)
	}
	t.Log(strings.TrimSpace(r.stdout))
}

func TestSimulateMintsTokensThroughAPI(t *testing.T) {
	s := newServer(t)
	r := runCLI(t, context.Background(), "simulate", "--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--count", "40", "--workers", "8", "--api-token", s.apiToken)
	m := summary.FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil || m[2] != "40" || s.minted != 40 {
		t.Fatalf("simulate: %+v, minted %d", r, s.minted)
	}
	t.Log(strings.TrimSpace(r.stdout))

	r = runCLI(t, context.Background(), "simulate", "--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--count", "3", "--api-token", "wrong")
	if r.code != 1 || !strings.Contains(r.stderr, "API answered 401: Unauthorized: missing or invalid API token") {
		t.Fatalf("bad API token: %+v", r)
	}
}

func TestSimulateReportsFailures(t *testing.T) {
	s := newServer(t)
	s.ca.AddToken("good", "dev-ok")
	r := runCLI(t, context.Background(), "simulate", "--server", s.url, "--ca", s.caFile, "--tenant", tenant,
		"--token-file", writeFile(t, "dev-ok good\ndev-bad1 bad\ndev-bad2 bad\n"))
	m := summary.FindStringSubmatch(r.stdout)
	if r.code != 1 || m == nil || m[2] != "1" || m[3] != "2" {
		t.Fatalf("simulate: %+v", r)
	}
	if !strings.Contains(r.stderr, "ward-agent: error: simulate: 2 of 3 enrollments failed") || !strings.Contains(r.stderr, "the enrollment token is not valid") {
		t.Errorf("stderr: %q", r.stderr)
	}
	if strings.Contains(r.stderr, " bad\n") || strings.Contains(r.stdout+r.stderr, "good") {
		t.Errorf("a token reached the output: %q", r.stderr)
	}
}

func TestParseTokenFile(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		n    int
		fail string
	}{
		"ok":             {"a 1\n# c\n\nb 2\n", 2, ""},
		"fail/one-field": {"a\n", 0, "line 1"},
		"fail/bad-id":    {"a 1\nb/c 2\n", 0, "line 2"},
		"fail/dup":       {"a 1\na 2\n", 0, "listed twice"},
		"fail/empty":     {"# nothing\n", 0, "no devices"},
	} {
		ds, err := parseTokenFile([]byte(tc.in))
		if tc.fail == "" && (err != nil || len(ds) != tc.n) || tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)) {
			t.Errorf("%s: %v %v", name, ds, err)
		}
	}
}

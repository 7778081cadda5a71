package pki_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/pki/pkitest"
	"github.com/wardiot/ward/wire"
)

// clock is a settable clock; tests move it instead of sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().UTC().Truncate(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is an authority with its store, clock and an HTTP server for its
// CRL/OCSP handler whose URL is the authority's BaseURL.
type env struct {
	a     *pki.Authority
	store *pkitest.MemStore
	clock *clock
	km    pki.KeyManager
	srv   *httptest.Server
	cfg   pki.Config
}

func newEnv(t testing.TB, km pki.KeyManager, mod func(*pki.Config)) *env {
	t.Helper()
	e := &env{store: pkitest.NewMemStore(), clock: newClock(), km: km}
	var h http.Handler = http.NotFoundHandler()
	var mu sync.RWMutex
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.RLock()
		hh := h
		mu.RUnlock()
		hh.ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
	e.cfg = pki.Config{
		Store:   e.store,
		Keys:    func(context.Context, string) (pki.KeyManager, error) { return km, nil },
		BaseURL: e.srv.URL,
		Now:     e.clock.Now,
	}
	if mod != nil {
		mod(&e.cfg)
	}
	e.start(t)
	mu.Lock()
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { e.a.Handler().ServeHTTP(w, r) })
	mu.Unlock()
	return e
}

// start (re)creates the authority from the store, as a server restart does.
func (e *env) start(t testing.TB) {
	t.Helper()
	a, err := pki.New(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	e.a = a
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func deviceCSR(t testing.TB, key crypto.Signer, tenant, device string) []byte {
	t.Helper()
	u, _ := url.Parse(wire.DeviceURI(tenant, device))
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: device},
		URIs:    []*url.URL{u},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// needTool skips the test if an external program is missing, unless CI
// is set, where its absence is a failure.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI but not installed: %v", name, err)
		}
		t.Skipf("%s not installed; skipping (apt-get install it, or set CI=1 to make this fatal)", name)
	}
	return p
}

func runTool(t testing.TB, dir, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func writeCertPEM(t testing.TB, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustParseCert(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

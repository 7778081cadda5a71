package agent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/wire"
)

const (
	tenant = "acme"
	device = "pump-0042"
)

// serverPKI is a CA for TLS server certificates, separate from the device
// CA, as in production (the server's certificate comes from wherever the
// operator gets web certificates; devices get theirs from the tenant CA).
type serverPKI struct {
	PEM  []byte
	cert tls.Certificate
}

// newServerPKI makes the CA and a server certificate for hosts (default
// 127.0.0.1 and localhost).
func newServerPKI(t testing.TB, hosts ...string) *serverPKI {
	t.Helper()
	now := time.Now()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test Server CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	var dns []string
	var ips []net.IP
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: hosts[0]},
		DNSNames: dns, IPAddresses: ips,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &serverPKI{
		PEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}),
		cert: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key},
	}
}

// startEST serves ca's EST handler over TLS on 127.0.0.1 with a
// certificate from pki and returns the server's base URL.
func startEST(t testing.TB, ca est.CA, pki *serverPKI) string {
	t.Helper()
	h, err := est.New(ca)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(wire.ESTPrefix, h)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.cert}}
	// Handshakes refused on purpose would otherwise fill the test log.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	est.ConfigureTLS(srv.TLS)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// fakeClock is a Clock that moves only when told to.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now().Truncate(time.Second)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), ch: ch})
	return ch
}

// Set moves the clock to t (never backwards) and fires due timers.
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if !tm.at.After(c.now) {
			tm.ch <- c.now
		} else {
			kept = append(kept, tm)
		}
	}
	c.timers = kept
}

func (c *fakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// deadlines returns the pending timers' deadlines, earliest first.
func (c *fakeClock) deadlines() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ds []time.Time
	for _, tm := range c.timers {
		ds = append(ds, tm.at)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Before(ds[j]) })
	return ds
}

// waitTimer polls until a timer with deadline at is pending.
func (c *fakeClock) waitTimer(t testing.TB, at time.Time) {
	t.Helper()
	waitFor(t, "a timer for "+at.String(), func() bool {
		for _, d := range c.deadlines() {
			if d.Equal(at) {
				return true
			}
		}
		return false
	})
}

// waitFor polls cond: tests wait for conditions, never for time.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func openFileKeystore(t testing.TB, dir string) keystore.Keystore {
	t.Helper()
	ks, err := keystore.Open("file:" + dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	return ks
}

// env is a test EST server with a device CA, plus a config for one device.
type env struct {
	ca    *esttest.CA
	pki   *serverPKI
	url   string
	clock *fakeClock
	cfg   agent.Config
}

// newEnv starts a server for ca (esttest's CA, or a wrapper) and returns a
// config for device with a file keystore. The CA's clock is the fake one.
func newEnv(t testing.TB, wrap func(*esttest.CA) est.CA) *env {
	t.Helper()
	e := &env{ca: esttest.NewCA(t, tenant), pki: newServerPKI(t), clock: newFakeClock()}
	e.ca.Now = e.clock.Now
	var ca est.CA = e.ca
	if wrap != nil {
		ca = wrap(e.ca)
	}
	e.url = startEST(t, ca, e.pki)
	dir := t.TempDir()
	e.cfg = agent.Config{
		Server:   e.url,
		CABundle: e.pki.PEM,
		Tenant:   tenant,
		Device:   device,
		Keystore: openFileKeystore(t, filepath.Join(dir, "keys")),
		StateDir: filepath.Join(dir, "state"),
		Clock:    e.clock,
	}
	return e
}

// enroll enrolls e's device with a fresh token.
func (e *env) enroll(t testing.TB) *agent.Identity {
	t.Helper()
	e.ca.AddToken("tok-"+t.Name(), device)
	id, err := agent.Enroll(context.Background(), e.cfg, agent.Token("tok-"+t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// checkCredential verifies that the agent's TLS credential is usable: the
// key signs, the certificate certifies that key, and the chain verifies
// against the device CA.
func checkCredential(t testing.TB, ca *esttest.CA, a *agent.Agent, now time.Time) {
	t.Helper()
	c := a.TLSCertificate()
	leaf := c.Leaf
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	signer := c.PrivateKey.(crypto.Signer)
	if !ok || !pub.Equal(signer.Public()) {
		t.Fatalf("certificate key does not match the private key")
	}
	digest := sha256.Sum256([]byte("proof of possession"))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatalf("the key does not sign for the certificate: %v", err)
	}
	inter := x509.NewCertPool()
	for _, raw := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(raw)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
}

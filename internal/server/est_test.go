package server_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/server"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

type fakeClock struct{ n atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.n.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.n.Add(int64(d)) }

type estEnv struct {
	cfg   config.Config
	srv   *server.Server
	clock *fakeClock
	dir   string
	pool  *x509.CertPool
}

func newESTEnv(t *testing.T) *estEnv { return newESTEnvCfg(t, nil) }

func newESTEnvCfg(t *testing.T, mutate func(*config.Config)) *estEnv {
	t.Helper()
	dir := t.TempDir()
	clk := &fakeClock{}
	clk.n.Store(time.Now().UnixNano())
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.APIAddr, cfg.HTTPAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.Open(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if _, err := srv.Tenants.Create(ctx, "test", "acme", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Tenants.Create(ctx, "test", "globex", ""); err != nil {
		t.Fatal(err)
	}
	return &estEnv{cfg: cfg, srv: srv, clock: clk, dir: dir, pool: caPool(t, dir)}
}

// restart stops the server and starts a new one on the same data
// directory and clock (on new ports: connected devices are cut off).
func (e *estEnv) restart(t *testing.T) {
	t.Helper()
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	srv, err := server.Open(ctx, e.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.WithClock(e.clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	e.srv = srv
}

func (e *estEnv) token(t *testing.T, tenantID, device string, ttl time.Duration) string {
	t.Helper()
	sec, _, err := e.srv.Tokens.Create(ctx, nil, tenant.NewTokenRequest{Kind: store.TokenEnroll, Tenant: tenantID, Device: device, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

func csrFor(t *testing.T, key crypto.Signer, tenantID, device string) []byte {
	t.Helper()
	u, _ := url.Parse(wire.DeviceURI(tenantID, device))
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: device}, URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// reCSR is a renewal CSR: the subject and SANs of the certificate being
// renewed (RFC 7030 §4.2.2), a key of the caller's choosing.
func reCSR(t *testing.T, key crypto.Signer, cur *x509.Certificate) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{RawSubject: cur.RawSubject, URIs: cur.URIs}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// post sends an EST request and returns status, body and (on success) the
// issued certificate.
func (e *estEnv) post(t *testing.T, op, label, bearer string, csr []byte, client *tls.Certificate) (int, string, *x509.Certificate) {
	t.Helper()
	tc := &tls.Config{RootCAs: e.pool}
	if client != nil {
		tc.Certificates = []tls.Certificate{*client}
	}
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	req, _ := http.NewRequest("POST", "https://"+e.srv.APIAddr()+wire.ESTPath(label, op), bytes.NewReader(wire.EncodeBase64Body(csr)))
	req.Header.Set("Content-Type", wire.ESTContentTypePKCS10)
	req.Header.Set("Content-Transfer-Encoding", "base64")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return resp.StatusCode, string(body), nil
	}
	der, err := wire.DecodeBase64Body(body)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := wire.DecodeCertsOnly(der)
	if err != nil {
		t.Fatal(err)
	}
	return 200, "", certs[0]
}

func (e *estEnv) certCount(t *testing.T, device string) int {
	cs, err := e.srv.Store().ListCerts(ctx, store.CertFilter{Tenant: "acme", Device: device})
	if err != nil {
		t.Fatal(err)
	}
	return len(cs)
}

// lastAudit returns the newest EST audit entry of acme. Security-event
// entries (written asynchronously by the monitor) are skipped: they may
// land after the request's own entry.
func (e *estEnv) lastAudit(t *testing.T) *store.AuditRecord {
	recs, err := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if strings.HasPrefix(recs[i].Action, "est.") {
			return recs[i]
		}
	}
	t.Fatal("no EST audit entry")
	return nil
}

func tlsCert(cert *x509.Certificate, key crypto.Signer) *tls.Certificate {
	return &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// TestESTRefusals: each refused enrollment gets the right status, a clear
// message, an audit entry naming why, and no certificate.
func TestESTRefusals(t *testing.T) {
	e := newESTEnv(t)
	// A device that enrolls properly, for the re-enrollment cases.
	k1 := newKey(t)
	code, body, cert1 := e.post(t, "simpleenroll", "acme", e.token(t, "acme", "good", time.Hour), csrFor(t, k1, "acme", "good"), nil)
	if code != 200 {
		t.Fatalf("enroll: %d %s", code, body)
	}

	cases := map[string]struct {
		run        func(t *testing.T) (int, string)
		device     string
		wantStatus int
		wantMsg    string
		wantAudit  string
	}{
		"fail/used-token": {device: "d-used", wantStatus: 401, wantMsg: "already used", wantAudit: "token already used",
			run: func(t *testing.T) (int, string) {
				tok := e.token(t, "acme", "d-used", time.Hour)
				if c, b, _ := e.post(t, "simpleenroll", "acme", tok, csrFor(t, newKey(t), "acme", "d-used"), nil); c != 200 {
					t.Fatalf("first use: %d %s", c, b)
				}
				c, b, _ := e.post(t, "simpleenroll", "acme", tok, csrFor(t, newKey(t), "acme", "d-used"), nil)
				return c, b
			}},
		"fail/expired-token": {device: "d-exp", wantStatus: 401, wantMsg: "invalid, expired or revoked", wantAudit: "invalid, expired or revoked token",
			run: func(t *testing.T) (int, string) {
				tok := e.token(t, "acme", "d-exp", time.Minute)
				e.clock.Advance(2 * time.Minute)
				c, b, _ := e.post(t, "simpleenroll", "acme", tok, csrFor(t, newKey(t), "acme", "d-exp"), nil)
				return c, b
			}},
		"fail/token-for-another-device": {device: "d-other", wantStatus: 401, wantMsg: "not for this device", wantAudit: "bound to another device",
			run: func(t *testing.T) (int, string) {
				tok := e.token(t, "acme", "d-mine", time.Hour)
				c, b, _ := e.post(t, "simpleenroll", "acme", tok, csrFor(t, newKey(t), "acme", "d-other"), nil)
				return c, b
			}},
		"fail/bad-csr-signature": {device: "d-badsig", wantStatus: 400, wantMsg: "signature", wantAudit: "signature",
			run: func(t *testing.T) (int, string) {
				csr := csrFor(t, newKey(t), "acme", "d-badsig")
				csr[len(csr)-3] ^= 0x40
				c, b, _ := e.post(t, "simpleenroll", "acme", e.token(t, "acme", "d-badsig", time.Hour), csr, nil)
				return c, b
			}},
		"fail/reenroll-same-key": {device: "good", wantStatus: 400, wantMsg: "new key", wantAudit: "key reuse",
			run: func(t *testing.T) (int, string) {
				c, b, _ := e.post(t, "simplereenroll", "acme", "", reCSR(t, k1, cert1), tlsCert(cert1, k1))
				return c, b
			}},
		"fail/reenroll-revoked": {device: "rev", wantStatus: 403, wantMsg: "revoked", wantAudit: "certificate revoked",
			run: func(t *testing.T) (int, string) {
				k := newKey(t)
				_, _, c := e.post(t, "simpleenroll", "acme", e.token(t, "acme", "rev", time.Hour), csrFor(t, k, "acme", "rev"), nil)
				if _, err := e.srv.PKI.Revoke(ctx, strings.ToLower(c.SerialNumber.Text(16)), 1); err != nil {
					t.Fatal(err)
				}
				code, b, _ := e.post(t, "simplereenroll", "acme", "", reCSR(t, newKey(t), c), tlsCert(c, k))
				return code, b
			}},
		"fail/reenroll-without-client-cert": {device: "good", wantStatus: 403, wantMsg: "client certificate",
			run: func(t *testing.T) (int, string) {
				c, b, _ := e.post(t, "simplereenroll", "acme", "", reCSR(t, newKey(t), cert1), nil)
				return c, b
			}},
		"fail/reenroll-at-another-tenant": {device: "good", wantStatus: 403, wantMsg: "not a valid device certificate of this tenant",
			run: func(t *testing.T) (int, string) {
				c, b, _ := e.post(t, "simplereenroll", "globex", "", reCSR(t, newKey(t), cert1), tlsCert(cert1, k1))
				return c, b
			}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			before := e.certCount(t, tc.device)
			code, body := tc.run(t)
			if code != tc.wantStatus || !strings.Contains(body, tc.wantMsg) {
				t.Fatalf("got %d %q, want %d containing %q", code, body, tc.wantStatus, tc.wantMsg)
			}
			after := e.certCount(t, tc.device)
			if name == "fail/used-token" || name == "fail/reenroll-revoked" {
				before++ // the setup step issued one legitimately
			}
			if after != before {
				t.Fatalf("a refused request issued a certificate (%d -> %d)", before, after)
			}
			if tc.wantAudit != "" {
				a := e.lastAudit(t)
				if a.Result != "denied" || !strings.Contains(a.Detail, tc.wantAudit) {
					t.Fatalf("last audit entry %+v, want a denial mentioning %q", a, tc.wantAudit)
				}
			}
		})
	}

	t.Run("ok/reenroll-rotates", func(t *testing.T) {
		k2 := newKey(t)
		code, body, cert2 := e.post(t, "simplereenroll", "acme", "", reCSR(t, k2, cert1), tlsCert(cert1, k1))
		if code != 200 {
			t.Fatalf("%d %s", code, body)
		}
		if !cert2.PublicKey.(*ecdsa.PublicKey).Equal(k2.Public()) || cert2.SerialNumber.Cmp(cert1.SerialNumber) == 0 {
			t.Fatal("renewal did not certify the new key")
		}
		if a := e.lastAudit(t); a.Action != "est.reenroll" || a.Result != "ok" {
			t.Fatalf("audit %+v", a)
		}
	})

	t.Run("race/one-token-two-devices", func(t *testing.T) {
		// Eight requests race with the same token: exactly one certificate.
		tok := e.token(t, "acme", "racer", time.Hour)
		codes := make(chan int, 8)
		for range 8 {
			go func() {
				c, _, _ := e.post(t, "simpleenroll", "acme", tok, csrFor(t, newKey(t), "acme", "racer"), nil)
				codes <- c
			}()
		}
		ok := 0
		for range 8 {
			if <-codes == 200 {
				ok++
			}
		}
		if ok != 1 || e.certCount(t, "racer") != 1 {
			t.Fatalf("%d requests succeeded and %d certificates exist; want exactly one", ok, e.certCount(t, "racer"))
		}
	})

	t.Run("grace/expired-cert-refused-by-default", func(t *testing.T) {
		k := newKey(t)
		_, _, c := e.post(t, "simpleenroll", "acme", e.token(t, "acme", "old", time.Hour), csrFor(t, k, "acme", "old"), nil)
		e.clock.Advance(c.NotAfter.Sub(e.clock.Now()) + time.Hour)
		code, body, _ := e.post(t, "simplereenroll", "acme", "", reCSR(t, newKey(t), c), tlsCert(c, k))
		if code != 403 || !strings.Contains(body, "expired") {
			t.Fatalf("expired certificate: %d %s", code, body)
		}
	})
}

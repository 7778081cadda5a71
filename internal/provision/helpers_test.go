package provision_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/jointoken"
	"github.com/wardiot/ward/internal/provision/provisiontest"
	"github.com/wardiot/ward/internal/provision/symkey"
	"github.com/wardiot/ward/internal/provision/tpmek"
	"github.com/wardiot/ward/internal/provision/x509pop"
)

var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// env is a provisioner over fakes with every authenticator.
type env struct {
	store   *provisiontest.Store
	events  *provisiontest.Events
	auditor *provisiontest.Auditor
	clock   *provisiontest.Clock
	sealers provision.Sealers
	p       *provision.Provisioner
	cfg     provision.Config
}

func newEnv(t testing.TB, opts ...func(*provision.Config)) *env {
	t.Helper()
	e := &env{store: provisiontest.NewStore(), events: &provisiontest.Events{}, auditor: &provisiontest.Auditor{},
		clock: provisiontest.NewClock(t0), sealers: provisiontest.Sealers()}
	e.cfg = provision.Config{
		Store: e.store, Events: e.events, Auditor: e.auditor, Now: e.clock.Now, Sealers: e.sealers,
		Authenticators: map[provision.Mechanism]provision.Authenticator{
			provision.MechanismX509:      x509pop.New(e.clock.Now),
			provision.MechanismSymmetric: symkey.New(e.store, e.sealers, e.clock.Now),
			provision.MechanismToken:     jointoken.New(e.store, e.clock.Now),
			provision.MechanismTPM:       tpmek.New(e.store, e.sealers, e.clock.Now),
		},
	}
	for _, o := range opts {
		o(&e.cfg)
	}
	p, err := provision.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	return e
}

func (e *env) putGroup(t testing.TB, g *provision.Group) *provision.Group {
	t.Helper()
	if g.ID == "" {
		g.ID = provision.NewGroupID()
	}
	g.Enabled = true
	if err := provision.ValidateGroup(g); err != nil {
		t.Fatal(err)
	}
	if err := e.store.PutGroup(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	return g
}

func (e *env) sealer(t testing.TB, tenant string) provision.Sealer {
	t.Helper()
	s, err := e.sealers(context.Background(), tenant)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mustEnroll enrolls and fails the test on error.
func (e *env) mustEnroll(t testing.TB, label string, req *provision.Request) *provision.Enrollment {
	t.Helper()
	en, err := e.p.Enroll(context.Background(), label, req)
	if err != nil {
		t.Fatalf("Enroll(%s): %v", label, err)
	}
	return en
}

// assertRefused checks a refusal's reason, its security event and audit
// entry, and that no result came back.
func (e *env) assertRefused(t testing.TB, en *provision.Enrollment, err error, want provision.Reason) {
	t.Helper()
	if en != nil {
		t.Fatalf("refused enrollment returned a result: %+v", en)
	}
	if got := provision.ReasonOf(err); got != want {
		t.Fatalf("reason = %q (err %v), want %q", got, err, want)
	}
	evs := e.events.All()
	if len(evs) == 0 || evs[len(evs)-1].Reason != want {
		t.Fatalf("last security event %+v, want reason %q", evs, want)
	}
	ents := e.auditor.All()
	if len(ents) == 0 {
		t.Fatal("no audit entry")
	}
	last := ents[len(ents)-1]
	if last.Result != audit.ResultDenied || !strings.Contains(last.Detail, "reason="+string(want)) {
		t.Fatalf("last audit entry %+v, want denied with reason %q", last, want)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csr makes a parsed CSR for key naming cn (and optionally a URI SAN).
func csr(t testing.TB, key crypto.Signer, cn string, uris ...string) *x509.CertificateRequest {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ca is a test manufacturer CA.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial int64 = 1000

func nextSerial() *big.Int { serial++; return big.NewInt(serial) }

func newCA(t testing.TB, name string) *ca {
	t.Helper()
	k := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name},
		NotBefore: t0.Add(-365 * 24 * time.Hour), NotAfter: t0.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{cert: c, key: k}
}

// leaf issues a device certificate; mod adjusts the template.
func (c *ca) leaf(t testing.TB, cn string, mod ...func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: t0.Add(-24 * time.Hour), NotAfter: t0.Add(5 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, m := range mod {
		m(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, k.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, k
}

func (c *ca) crl(t testing.TB, serials ...*big.Int) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: t0.Add(-time.Hour)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: t0.Add(-time.Hour),
		NextUpdate: t0.Add(24 * time.Hour), RevokedCertificateEntries: entries}, c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func x509Group(tenant, name string, roots ...*ca) *provision.Group {
	g := &provision.Group{Tenant: tenant, Name: name, Mechanism: provision.MechanismX509,
		X509:     &provision.X509Config{DeviceID: provision.IDRule{From: "cn"}},
		Template: provision.Template{Policy: "sensor", Profile: "device", Lifetime: 30 * 24 * time.Hour, Tags: map[string]string{"line": "a"}}}
	for _, r := range roots {
		g.X509.Roots = append(g.X509.Roots, r.cert.Raw)
	}
	return g
}

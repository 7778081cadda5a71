package provision_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/wire"
)

func TestX509EndToEnd(t *testing.T) {
	e := newEnv(t)
	maker := newCA(t, "Maker Root")
	g := e.putGroup(t, x509Group("acme", "sensors", maker))
	g.Template.Twin = json.RawMessage(`{"interval":10}`)
	if err := e.store.PutGroup(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	leaf, _ := maker.leaf(t, "dev-001")
	newK := newKey(t)
	en := e.mustEnroll(t, "acme.sensors", &provision.Request{CSR: csr(t, newK, "dev-001"), PeerCertificates: []*x509.Certificate{leaf}, RemoteAddr: "192.0.2.1:5000"})
	if en.Tenant != "acme" || en.DeviceID != "dev-001" || en.Group != "sensors" || en.Mechanism != provision.MechanismX509 {
		t.Fatalf("enrollment %+v", en)
	}
	if en.Template.Profile != "device" || en.Template.Lifetime != 30*24*time.Hour || en.Template.Policy != "sensor" ||
		en.Template.Tags["line"] != "a" || string(en.Template.Twin) != `{"interval":10}` {
		t.Fatalf("template not applied: %+v", en.Template)
	}
	d, err := e.store.GetDevice(context.Background(), "acme", "dev-001")
	if err != nil {
		t.Fatal(err)
	}
	if d.State != provision.StateProvisioned || !d.ProvisionedAt.Equal(t0) || d.Group != "sensors" || d.Fingerprint == "" {
		t.Fatalf("device record %+v", d)
	}
	ents := e.auditor.All()
	if len(ents) != 1 || ents[0].Action != "device.provision" || ents[0].Result != "ok" || ents[0].Tenant != "acme" {
		t.Fatalf("audit %+v", ents)
	}
	if len(e.events.All()) != 0 {
		t.Fatalf("events on success: %+v", e.events.All())
	}
}

// A tenant-only label tries the tenant's x509 groups until one knows the CA.
func TestX509TenantLabelFindsGroup(t *testing.T) {
	e := newEnv(t)
	a, b := newCA(t, "Maker A"), newCA(t, "Maker B")
	e.putGroup(t, x509Group("acme", "a-line", a))
	e.putGroup(t, x509Group("acme", "b-line", b))
	leaf, _ := b.leaf(t, "dev-b")
	en := e.mustEnroll(t, "acme", &provision.Request{CSR: csr(t, newKey(t), "dev-b"), PeerCertificates: []*x509.Certificate{leaf}})
	if en.Group != "b-line" {
		t.Fatalf("group %q, want b-line", en.Group)
	}
}

func TestX509Refusals(t *testing.T) {
	maker, other := newCA(t, "Maker"), newCA(t, "Stranger")
	revokedLeaf, _ := maker.leaf(t, "dev-crl")
	deniedLeaf, _ := maker.leaf(t, "dev-deny")
	for name, tc := range map[string]struct {
		leaf    func(t *testing.T) *x509.Certificate
		group   func(g *provision.Group)
		cn      string
		advance time.Duration
		want    provision.Reason
	}{
		"fail/expired": {leaf: func(t *testing.T) *x509.Certificate {
			c, _ := maker.leaf(t, "dev-old", func(c *x509.Certificate) { c.NotAfter = t0.Add(-time.Minute) })
			return c
		}, cn: "dev-old", want: provision.ReasonExpired},
		"fail/not-yet-valid": {leaf: func(t *testing.T) *x509.Certificate {
			c, _ := maker.leaf(t, "dev-new", func(c *x509.Certificate) { c.NotBefore = t0.Add(time.Hour) })
			return c
		}, cn: "dev-new", want: provision.ReasonExpired},
		"fail/revoked-crl": {leaf: func(*testing.T) *x509.Certificate { return revokedLeaf },
			group: func(g *provision.Group) { g.X509.CRLs = [][]byte{maker.crl(t, revokedLeaf.SerialNumber)} },
			cn:    "dev-crl", want: provision.ReasonRevoked},
		"fail/revoked-serial": {leaf: func(*testing.T) *x509.Certificate { return deniedLeaf },
			group: func(g *provision.Group) { g.X509.RevokedSerials = []string{deniedLeaf.SerialNumber.Text(16)} },
			cn:    "dev-deny", want: provision.ReasonRevoked},
		"fail/unknown-ca": {leaf: func(t *testing.T) *x509.Certificate {
			c, _ := other.leaf(t, "dev-x")
			return c
		}, cn: "dev-x", want: provision.ReasonUnknownCA},
		"fail/no-client-auth": {leaf: func(t *testing.T) *x509.Certificate {
			c, _ := maker.leaf(t, "dev-eku", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })
			return c
		}, cn: "dev-eku", want: provision.ReasonBadUsage},
		"fail/csr-names-another-device": {leaf: func(t *testing.T) *x509.Certificate {
			c, _ := maker.leaf(t, "dev-real")
			return c
		}, cn: "dev-victim", want: provision.ReasonCSRMismatch},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			g := x509Group("acme", "sensors", maker)
			if tc.group != nil {
				tc.group(g)
			}
			e.putGroup(t, g)
			leaf := tc.leaf(t)
			en, err := e.p.Enroll(context.Background(), "acme.sensors", &provision.Request{CSR: csr(t, newKey(t), tc.cn), PeerCertificates: []*x509.Certificate{leaf}})
			e.assertRefused(t, en, err, tc.want)
			if _, err := e.store.GetDevice(context.Background(), "acme", tc.cn); !errors.Is(err, provision.ErrNotFound) {
				t.Fatalf("refused device was registered: %v", err)
			}
		})
	}
}

// A second onboarding of a provisioned device ID means a cloned
// credential: refused, with an event naming both fingerprints.
func TestSecondOnboardingRefused(t *testing.T) {
	e := newEnv(t)
	maker := newCA(t, "Maker")
	e.putGroup(t, x509Group("acme", "sensors", maker))
	leaf, _ := maker.leaf(t, "dev-1")
	req := &provision.Request{CSR: csr(t, newKey(t), "dev-1"), PeerCertificates: []*x509.Certificate{leaf}}
	e.mustEnroll(t, "acme.sensors", req)
	clone, _ := maker.leaf(t, "dev-1") // same ID, another certificate
	en, err := e.p.Enroll(context.Background(), "acme.sensors", &provision.Request{CSR: csr(t, newKey(t), "dev-1"), PeerCertificates: []*x509.Certificate{clone}})
	e.assertRefused(t, en, err, provision.ReasonAlreadyProvisioned)
	if ev := e.events.All()[0]; ev.DeviceID != "dev-1" || ev.Group != "sensors" || ev.Kind != "provision.refused" {
		t.Fatalf("event %+v", ev)
	}
	d, _ := e.store.GetDevice(context.Background(), "acme", "dev-1")
	if d.Fingerprint == "" || d.ProvisionedAt != t0 {
		t.Fatalf("first record changed: %+v", d)
	}
}

func TestReprovisionAllowed(t *testing.T) {
	e := newEnv(t)
	maker := newCA(t, "Maker")
	g := x509Group("acme", "sensors", maker)
	g.Reprovision = true
	e.putGroup(t, g)
	leaf, _ := maker.leaf(t, "dev-1")
	e.mustEnroll(t, "acme.sensors", &provision.Request{CSR: csr(t, newKey(t), "dev-1"), PeerCertificates: []*x509.Certificate{leaf}})
	e.clock.Advance(time.Hour)
	en := e.mustEnroll(t, "acme.sensors", &provision.Request{CSR: csr(t, newKey(t), "dev-1", wire.DeviceURI("acme", "dev-1")), PeerCertificates: []*x509.Certificate{leaf}})
	if !en.Reprovisioned {
		t.Fatal("not marked reprovisioned")
	}
	d, _ := e.store.GetDevice(context.Background(), "acme", "dev-1")
	if !d.ProvisionedAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("ProvisionedAt %v", d.ProvisionedAt)
	}
}

func TestDisabledGroupRefuses(t *testing.T) {
	e := newEnv(t)
	maker := newCA(t, "Maker")
	g := e.putGroup(t, x509Group("acme", "sensors", maker))
	g.Enabled = false
	e.store.PutGroup(context.Background(), g)
	leaf, _ := maker.leaf(t, "dev-1")
	en, err := e.p.Enroll(context.Background(), "acme.sensors", &provision.Request{CSR: csr(t, newKey(t), "dev-1"), PeerCertificates: []*x509.Certificate{leaf}})
	e.assertRefused(t, en, err, provision.ReasonUnknownGroup)
}

func TestX509DeviceIDRules(t *testing.T) {
	e := newEnv(t)
	maker := newCA(t, "Maker")
	for name, tc := range map[string]struct {
		rule provision.IDRule
		mod  func(*x509.Certificate)
		want string
	}{
		"ok/cn":         {rule: provision.IDRule{From: "cn"}, want: "cn-dev"},
		"ok/serial":     {rule: provision.IDRule{From: "serial"}, mod: func(c *x509.Certificate) { c.SerialNumber.SetInt64(0xabc123) }, want: "abc123"},
		"ok/dns-prefix": {rule: provision.IDRule{From: "dns", StripPrefix: "dev."}, mod: func(c *x509.Certificate) { c.DNSNames = []string{"dev.xyz-9"} }, want: "xyz-9"},
		"ok/uri-prefix": {rule: provision.IDRule{From: "uri", StripPrefix: "urn:maker:sn:"}, mod: func(c *x509.Certificate) {
			u, _ := url.Parse("urn:maker:sn:SN0042")
			c.URIs = []*url.URL{u}
		}, want: "SN0042"},
	} {
		t.Run(name, func(t *testing.T) {
			g := x509Group("acme", "g"+name[3:], maker)
			g.Name = "g-" + name[3:]
			g.X509.DeviceID = tc.rule
			e.putGroup(t, g)
			mods := []func(*x509.Certificate){}
			if tc.mod != nil {
				mods = append(mods, tc.mod)
			}
			leaf, _ := maker.leaf(t, "cn-dev", mods...)
			en := e.mustEnroll(t, "acme."+g.Name, &provision.Request{CSR: csr(t, newKey(t), tc.want), PeerCertificates: []*x509.Certificate{leaf}})
			if en.DeviceID != tc.want {
				t.Fatalf("device %q, want %q", en.DeviceID, tc.want)
			}
		})
	}
	// A value without the rule's prefix is refused, not used whole.
	g := x509Group("acme", "strict", maker)
	g.X509.DeviceID = provision.IDRule{From: "cn", StripPrefix: "maker-"}
	e.putGroup(t, g)
	leaf, _ := maker.leaf(t, "other-1")
	en, err := e.p.Enroll(context.Background(), "acme.strict", &provision.Request{CSR: csr(t, newKey(t), "other-1"), PeerCertificates: []*x509.Certificate{leaf}})
	e.assertRefused(t, en, err, provision.ReasonMalformed)
}

func TestIsBootstrapCertificate(t *testing.T) {
	e := newEnv(t)
	maker, tenantCA := newCA(t, "Maker"), newCA(t, "Tenant Issuing CA")
	e.putGroup(t, x509Group("acme", "sensors", maker))
	roots, inter, err := e.p.ManufacturerRoots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	issuing := x509.NewCertPool()
	issuing.AddCert(tenantCA.cert)
	boot, _ := maker.leaf(t, "dev-1")
	expired, _ := maker.leaf(t, "dev-2", func(c *x509.Certificate) { c.NotAfter = t0.Add(-time.Hour) })
	op, _ := tenantCA.leaf(t, "dev-1")
	if !provision.IsBootstrapCertificate([]*x509.Certificate{boot}, roots, inter, issuing) {
		t.Error("manufacturer certificate not recognised")
	}
	if !provision.IsBootstrapCertificate([]*x509.Certificate{expired}, roots, inter, issuing) {
		t.Error("expired manufacturer certificate not recognised")
	}
	if provision.IsBootstrapCertificate([]*x509.Certificate{op}, roots, inter, issuing) {
		t.Error("operational certificate taken for a bootstrap one")
	}
}

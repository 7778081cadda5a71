package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/server"
	"github.com/wardiot/ward/internal/store"
)

// maker is a device manufacturer's CA.
type maker struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newMaker(t *testing.T) *maker {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Acme Devices Manufacturing CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	c, _ := x509.ParseCertificate(der)
	return &maker{cert: c, key: k}
}

func (m *maker) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.cert.Raw})
}

// device makes a manufacturer (bootstrap) certificate for a device.
func (m *maker) device(t *testing.T, id string, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: id}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.cert, k.Public(), m.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, k
}

func (e *estEnv) enrollWith(t *testing.T, label, device string, cred agent.Credential) (*agent.Identity, error) {
	t.Helper()
	dir := t.TempDir()
	ks, err := keystore.Open("file:" + filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	ca, _ := readFile(t, filepath.Join(e.dir, "ca.pem"))
	return agent.Enroll(ctx, agent.Config{Server: "https://" + e.srv.APIAddr(), CABundle: ca, Tenant: "acme", Label: label, Device: device,
		Keystore: ks, StateDir: filepath.Join(dir, "state")}, cred)
}

// TestProvisioningThroughTheServer: the x509 and symmetric-key groups end
// to end with the real agent, the refusals that matter, and a bootstrap
// certificate kept out of MQTT.
func TestProvisioningThroughTheServer(t *testing.T) {
	e := newESTEnv(t)
	m := newMaker(t)
	if err := e.srv.PutPolicy(ctx, "test", "acme", "sensors", []byte(`{"version":1,"publish":{"allow":["ward/v1/${device}/telemetry/#"]},"subscribe":{"allow":["ward/v1/${device}/#"]}}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.srv.CreateGroup(ctx, "test", "acme", server.GroupSpec{Name: "factory", Mechanism: "x509", X509CAs: m.pem(), IDFrom: "cn",
		Template: provision.Template{Policy: "sensors", Tags: map[string]string{"line": "berlin-2"}}}); err != nil {
		t.Fatal(err)
	}
	_, groupKey, err := e.srv.CreateGroup(ctx, "test", "acme", server.GroupSpec{Name: "sym", Mechanism: "symmetric"})
	if err != nil || len(groupKey) != 32 {
		t.Fatalf("symmetric group: %v", err)
	}

	t.Run("x509/ok", func(t *testing.T) {
		c, k := m.device(t, "mfr-001", time.Now().Add(time.Hour))
		id, err := e.enrollWith(t, "acme.factory", "mfr-001", agent.X509([]*x509.Certificate{c}, k))
		if err != nil {
			t.Fatal(err)
		}
		if id.Certificate.Issuer.CommonName == m.cert.Subject.CommonName {
			t.Fatal("the operational certificate was issued by the manufacturer CA")
		}
		d, err := e.srv.Store().GetDevice(ctx, "acme", "mfr-001")
		if err != nil || d.Group != "factory" || d.Tags["line"] != "berlin-2" {
			t.Fatalf("JIT registration: %+v %v", d, err)
		}
		as, _ := e.srv.Store().ListPolicyAssignments(ctx, "acme")
		if len(as) != 1 || as[0].Target != "mfr-001" || as[0].Policy != "sensors" {
			t.Fatalf("template policy not assigned: %v", as)
		}
	})
	t.Run("x509/second-onboarding-refused", func(t *testing.T) {
		c, k := m.device(t, "mfr-001", time.Now().Add(time.Hour)) // a clone's credential
		_, err := e.enrollWith(t, "acme.factory", "mfr-001", agent.X509([]*x509.Certificate{c}, k))
		var se *agent.ServerError
		if !errors.As(err, &se) || se.Status != 403 {
			t.Fatalf("second onboarding: %v", err)
		}
		e.srv.Monitor.Flush(ctx)
		evs, _ := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "provision.second_onboarding"})
		if len(evs) != 1 || evs[0].Device != "mfr-001" {
			t.Fatalf("no second-onboarding event: %v", evs)
		}
	})
	t.Run("x509/expired-refused", func(t *testing.T) {
		c, k := m.device(t, "mfr-002", time.Now().Add(-time.Minute))
		if _, err := e.enrollWith(t, "acme.factory", "mfr-002", agent.X509([]*x509.Certificate{c}, k)); err == nil {
			t.Fatal("an expired manufacturer certificate enrolled")
		}
	})
	t.Run("x509/unregistered-ca-refused", func(t *testing.T) {
		c, k := newMaker(t).device(t, "mfr-003", time.Now().Add(time.Hour))
		if _, err := e.enrollWith(t, "acme.factory", "mfr-003", agent.X509([]*x509.Certificate{c}, k)); err == nil {
			t.Fatal("a certificate from an unregistered CA enrolled")
		}
		if n := e.certCount(t, "mfr-003"); n != 0 {
			t.Fatalf("%d certificates issued", n)
		}
	})
	t.Run("x509/bootstrap-cert-cannot-open-mqtt", func(t *testing.T) {
		c, k := m.device(t, "mfr-004", time.Now().Add(time.Hour))
		conn, err := tls.Dial("tcp", e.srv.MQTTAddr(), &tls.Config{RootCAs: e.pool, Certificates: []tls.Certificate{{Certificate: [][]byte{c.Raw}, PrivateKey: k}}})
		if err == nil {
			// TLS 1.3 reports a refused client certificate on first read.
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("a manufacturer certificate opened an MQTT session: %v", err)
		}
	})
	t.Run("symmetric/ok-and-wrong-key", func(t *testing.T) {
		key, err := e.srv.DeriveGroupDeviceKey(ctx, "test", "acme", "sym", "sym-7")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.enrollWith(t, "acme.sym", "sym-7", agent.Symmetric(key)); err != nil {
			t.Fatal(err)
		}
		wrong, _ := e.srv.DeriveGroupDeviceKey(ctx, "test", "acme", "sym", "sym-8")
		if _, err := e.enrollWith(t, "acme.sym", "sym-9", agent.Symmetric(wrong)); err == nil {
			t.Fatal("enrolled with another device's key")
		}
		if n := e.certCount(t, "sym-9"); n != 0 {
			t.Fatalf("%d certificates issued with a wrong key", n)
		}
	})
}

// TestTPMAndTokenGroupsThroughTheServer: a TPM (swtpm with a real EK
// certificate) enrolls through a tpm group with credential activation and
// an AK-certified key; a device enrolls with a one-time token of a token
// group, which cannot be used twice.
func TestTPMAndTokenGroupsThroughTheServer(t *testing.T) {
	e := newESTEnv(t)
	t.Run("token-group", func(t *testing.T) {
		if _, _, err := e.srv.CreateGroup(ctx, "test", "acme", server.GroupSpec{Name: "line", Mechanism: "token"}); err != nil {
			t.Fatal(err)
		}
		tok, err := e.srv.MintGroupToken(ctx, "test", "acme", "line", "tk-1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.enrollWith(t, "acme.line", "tk-1", agent.Token(tok)); err != nil {
			t.Fatal(err)
		}
		if _, err := e.enrollWith(t, "acme.line", "tk-1", agent.Token(tok)); err == nil {
			t.Fatal("a group token enrolled twice")
		}
	})
	t.Run("tpm-group", func(t *testing.T) {
		sim := tpmtest.Manufactured(t)
		roots, err := os.ReadFile(filepath.Join(sim.EKCADir, "swtpm-localca-rootca-cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		inter, err := os.ReadFile(filepath.Join(sim.EKCADir, "issuercert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.srv.CreateGroup(ctx, "test", "acme", server.GroupSpec{Name: "tpm", Mechanism: "tpm", EKRoots: append(roots, inter...)}); err != nil {
			t.Fatal(err)
		}
		// The EK certificate was just made; bring the server's clock to now.
		e.clock.n.Store(time.Now().Add(time.Second).UnixNano())
		dir := t.TempDir()
		ks, err := keystore.Open(sim.Spec(), keystore.WithStateDir(filepath.Join(dir, "tpm")))
		if err != nil {
			t.Fatal(err)
		}
		defer ks.Close()
		ca, _ := readFile(t, filepath.Join(e.dir, "ca.pem"))
		cfg := agent.Config{Server: "https://" + e.srv.APIAddr(), CABundle: ca, Tenant: "acme", Label: "acme.tpm", Keystore: ks,
			StateDir: filepath.Join(dir, "state"), Device: "unknown"}
		// The device learns its EK-derived ID from the first refusal.
		_, err = agent.Enroll(ctx, cfg, agent.TPM())
		if err == nil || !strings.Contains(err.Error(), `proves device "`) {
			e.srv.Monitor.Flush(ctx)
			evs, _ := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme"})
			for _, ev := range evs {
				t.Logf("event %s %s %s", ev.Type, ev.Reason, ev.Detail)
			}
			t.Fatalf("enroll under a wrong device ID: %v", err)
		}
		cfg.Device = strings.Split(strings.Split(err.Error(), `proves device "`)[1], `"`)[0]
		id, err := agent.Enroll(ctx, cfg, agent.TPM())
		if err != nil {
			t.Fatal(err)
		}
		key, err := ks.Load(ctx, id.KeyName)
		if err != nil {
			t.Fatal(err)
		}
		if !key.Public().(*ecdsa.PublicKey).Equal(id.Certificate.PublicKey) {
			t.Fatal("the certificate does not certify the TPM-resident key")
		}
		if d, err := e.srv.Store().GetDevice(ctx, "acme", cfg.Device); err != nil || d.Group != "tpm" {
			t.Fatalf("registration: %+v %v", d, err)
		}
	})
}

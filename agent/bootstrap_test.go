package agent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/jointoken"
	"github.com/wardiot/ward/internal/provision/provisiontest"
	"github.com/wardiot/ward/internal/provision/symkey"
	"github.com/wardiot/ward/internal/provision/tpmek"
	"github.com/wardiot/ward/internal/provision/x509pop"
	"github.com/wardiot/ward/wire"
)

// provCA is an est.CA whose Enroll authenticates through provision's
// Provisioner (the four bootstrap mechanisms, in-memory store) and issues
// from a toy two-level CA, as the server does with its real CA.
type provCA struct {
	p         *provision.Provisioner
	root, iss *x509.Certificate
	issKey    crypto.Signer
}

func selfSign(t testing.TB, cn string, parent *x509.Certificate, parentKey crypto.Signer, mod func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	if mod != nil {
		mod(tmpl)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func (c *provCA) CACerts(_ context.Context, label string) ([]*x509.Certificate, error) {
	if t, _, _ := strings.Cut(label, "."); t != tenant {
		return nil, est.ErrNotFound
	}
	return []*x509.Certificate{c.iss, c.root}, nil
}

func (c *provCA) CSRAttrs(context.Context, string) ([]byte, error) { return nil, nil }

func (c *provCA) Enroll(ctx context.Context, r *est.Request) ([]*x509.Certificate, error) {
	en, err := c.p.Enroll(ctx, r.Label, &provision.Request{CSR: r.CSR, PeerCertificates: r.Creds.PeerCertificates,
		BearerToken: r.Creds.BearerToken, RemoteAddr: r.RemoteAddr})
	var pe *provision.Error
	if errors.As(err, &pe) {
		return nil, est.Forbidden("enrollment refused: "+string(pe.Reason), err)
	}
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(wire.DeviceURI(en.Tenant, en.DeviceID))
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial,
		Subject: pkix.Name{CommonName: en.DeviceID}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, c.iss, r.CSR.PublicKey, c.issKey)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	return []*x509.Certificate{leaf, c.iss}, nil
}

func (c *provCA) Reenroll(context.Context, *est.Request) ([]*x509.Certificate, error) {
	return nil, est.Forbidden("not in this test", nil)
}

// provEnv is a server running provision behind EST, plus an agent config.
type provEnv struct {
	store   *provisiontest.Store
	sealers provision.Sealers
	events  *provisiontest.Events
	cfg     agent.Config
	ca      *provCA
}

func newProvEnv(t *testing.T) *provEnv {
	t.Helper()
	e := &provEnv{store: provisiontest.NewStore(), sealers: provisiontest.Sealers(), events: &provisiontest.Events{}}
	p, err := provision.New(provision.Config{
		Store: e.store, Sealers: e.sealers, Events: e.events, Auditor: &provisiontest.Auditor{},
		Authenticators: map[provision.Mechanism]provision.Authenticator{
			provision.MechanismX509:      x509pop.New(time.Now),
			provision.MechanismTPM:       tpmek.New(e.store, e.sealers, time.Now),
			provision.MechanismSymmetric: symkey.New(e.store, e.sealers, time.Now),
			provision.MechanismToken:     jointoken.New(e.store, time.Now),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	root, rootKey := selfSign(t, "Device Root", nil, nil, nil)
	iss, issKey := selfSign(t, "Device Issuing CA", root, rootKey, nil)
	e.ca = &provCA{p: p, root: root, iss: iss, issKey: issKey}
	h, err := est.New(e.ca)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(wire.ESTPrefix, h)
	// The TPM mechanism's first round, as the server routes it.
	mux.HandleFunc("POST /.well-known/ward/provision/{label}/{mech}/challenge", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, wire.MaxTPMChallengeRequestSize+1))
		if err != nil {
			http.Error(w, "read", http.StatusBadRequest)
			return
		}
		out, err := p.Challenge(r.Context(), r.PathValue("label"), provision.Mechanism(r.PathValue("mech")), body, r.RemoteAddr)
		if err != nil {
			http.Error(w, "challenge refused", http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(out)
	})
	pki := newServerPKI(t)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	est.ConfigureTLS(srv.TLS)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	e.cfg = agent.Config{Server: srv.URL, CABundle: pki.PEM, Tenant: tenant, Device: device,
		Keystore: openFileKeystore(t, filepath.Join(dir, "keys")), StateDir: filepath.Join(dir, "state")}
	return e
}

func (e *provEnv) putGroup(t *testing.T, g *provision.Group) *provision.Group {
	t.Helper()
	if g.ID == "" {
		g.ID = provision.NewGroupID()
	}
	g.Tenant, g.Enabled, g.CreatedAt = tenant, true, time.Now()
	if err := e.store.PutGroup(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	return g
}

// enrolled checks the identity and the registry record.
func (e *provEnv) enrolled(t *testing.T, id *agent.Identity, err error, dev string, mech provision.Mechanism) {
	t.Helper()
	if err != nil {
		t.Fatalf("enroll: %v (events %+v)", err, e.events.All())
	}
	if id.Device != dev || id.Certificate.URIs[0].String() != wire.DeviceURI(tenant, dev) {
		t.Fatalf("enrolled as %s, %v", id.Device, id.Certificate.URIs)
	}
	rec, err := e.store.GetDevice(context.Background(), tenant, dev)
	if err != nil || rec.State != provision.StateProvisioned {
		t.Fatalf("registry record %+v, %v", rec, err)
	}
	g, _ := e.store.GetGroup(context.Background(), tenant, rec.Group)
	if g == nil || g.Mechanism != mech {
		t.Fatalf("enrolled through group %q, want a %s group", rec.Group, mech)
	}
}

func TestBootstrapX509(t *testing.T) {
	e := newProvEnv(t)
	maker, makerKey := selfSign(t, "Maker Root", nil, nil, nil)
	e.putGroup(t, &provision.Group{Name: "factory", Mechanism: provision.MechanismX509,
		X509: &provision.X509Config{Roots: [][]byte{maker.Raw}, DeviceID: provision.IDRule{From: "cn"}}})
	mcert, mkey := selfSign(t, device, maker, makerKey, func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage, c.ExtKeyUsage = false, x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	e.cfg.Label = tenant + ".factory"
	id, err := agent.Enroll(context.Background(), e.cfg, agent.X509([]*x509.Certificate{mcert}, mkey))
	e.enrolled(t, id, err, device, provision.MechanismX509)
	if id.Certificate.PublicKey.(*ecdsa.PublicKey).Equal(mkey.Public()) {
		t.Fatal("the operational certificate certifies the manufacturer key")
	}
	if s := fmt.Sprint(agent.X509([]*x509.Certificate{mcert}, mkey)); strings.Contains(s, "PRIVATE") {
		t.Fatal("credential prints its key")
	}

	t.Run("fail/another-makers-certificate", func(t *testing.T) {
		e := newProvEnv(t)
		e.putGroup(t, &provision.Group{Name: "factory", Mechanism: provision.MechanismX509,
			X509: &provision.X509Config{Roots: [][]byte{maker.Raw}, DeviceID: provision.IDRule{From: "cn"}}})
		other, otherKey := selfSign(t, "Other Root", nil, nil, nil)
		c, k := selfSign(t, device, other, otherKey, func(c *x509.Certificate) { c.IsCA = false })
		e.cfg.Label = tenant + ".factory"
		_, err := agent.Enroll(context.Background(), e.cfg, agent.X509([]*x509.Certificate{c}, k))
		var se *agent.ServerError
		if !errors.As(err, &se) || se.Status != http.StatusForbidden {
			t.Fatalf("enroll with an unknown maker's certificate: %v, want 403", err)
		}
	})
}

func TestBootstrapSymmetric(t *testing.T) {
	e := newProvEnv(t)
	id := provision.NewGroupID()
	s, _ := e.sealers(context.Background(), tenant)
	groupKey, sealed, err := symkey.NewGroupKey(s, id)
	if err != nil {
		t.Fatal(err)
	}
	e.putGroup(t, &provision.Group{ID: id, Name: "line", Mechanism: provision.MechanismSymmetric,
		Symmetric: &provision.SymmetricConfig{SealedKey: sealed}})
	devKey := wire.DeriveSymmetricDeviceKey(groupKey, device)

	t.Run("fail/label-without-group", func(t *testing.T) {
		_, err := agent.Enroll(context.Background(), e.cfg, agent.Symmetric(devKey))
		if err == nil || !strings.Contains(err.Error(), "<tenant>.<group>") {
			t.Fatalf("enroll with label %q: %v", tenant, err)
		}
	})
	t.Run("fail/another-devices-key", func(t *testing.T) {
		cfg := e.cfg
		cfg.Label, cfg.StateDir = tenant+".line", t.TempDir()
		_, err := agent.Enroll(context.Background(), cfg, agent.Symmetric(wire.DeriveSymmetricDeviceKey(groupKey, "pump-9999")))
		var se *agent.ServerError
		if !errors.As(err, &se) || se.Status != http.StatusForbidden {
			t.Fatalf("enroll with another device's key: %v, want 403", err)
		}
	})
	e.cfg.Label = tenant + ".line"
	got, err := agent.Enroll(context.Background(), e.cfg, agent.Symmetric(devKey))
	e.enrolled(t, got, err, device, provision.MechanismSymmetric)
}

func TestBootstrapToken(t *testing.T) {
	e := newProvEnv(t)
	g := e.putGroup(t, &provision.Group{Name: "tokens", Mechanism: provision.MechanismToken, Token: &provision.TokenConfig{}})
	tok, _, err := jointoken.Mint(context.Background(), e.store, time.Now(), g, device, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.Label = tenant + ".tokens"
	id, err := agent.Enroll(context.Background(), e.cfg, agent.Token(tok))
	e.enrolled(t, id, err, device, provision.MechanismToken)

	// Single use: a second device with the same token is refused.
	cfg := e.cfg
	cfg.StateDir = t.TempDir()
	var se *agent.ServerError
	if _, err := agent.Enroll(context.Background(), cfg, agent.Token(tok)); !errors.As(err, &se) || se.Status != http.StatusForbidden {
		t.Fatalf("token used twice: %v, want 403", err)
	}
}

func readPEM(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBootstrapTPM enrolls with the TPM's endorsement key against swtpm
// manufactured by swtpm_setup (EK certificate from its local CA): the agent
// reads the EK certificate, makes an AK, activates the server's credential
// and has the AK certify the keystore's TPM key, which the certificate
// then certifies.
func TestBootstrapTPM(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	root := readPEM(t, filepath.Join(sim.EKCADir, "swtpm-localca-rootca-cert.pem"))
	inter := readPEM(t, filepath.Join(sim.EKCADir, "issuercert.pem"))
	e := newProvEnv(t)
	e.putGroup(t, &provision.Group{Name: "tpm", Mechanism: provision.MechanismTPM,
		TPM: &provision.TPMConfig{EKRoots: [][]byte{root.Raw}, EKIntermediates: [][]byte{inter.Raw}, IDPrefix: "tpm-"}})
	ks, err := keystore.Open(sim.Spec(), keystore.WithStateDir(filepath.Join(t.TempDir(), "tpm")))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	e.cfg.Keystore, e.cfg.Label = ks, tenant+".tpm"
	ctx := context.Background()

	// The device does not know its EK-derived ID yet: the error names it.
	_, err = agent.Enroll(ctx, e.cfg, agent.TPM())
	if err == nil || !strings.Contains(err.Error(), `proves device "tpm-`) {
		t.Fatalf("enroll under the wrong device ID: %v", err)
	}
	dev := strings.Split(strings.Split(err.Error(), `proves device "`)[1], `"`)[0]
	e.cfg.Device = dev
	id, err := agent.Enroll(ctx, e.cfg, agent.TPM())
	e.enrolled(t, id, err, dev, provision.MechanismTPM)
	key, err := ks.Load(ctx, id.KeyName)
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(id.Certificate.PublicKey) {
		t.Fatal("the certificate does not certify the keystore's TPM key")
	}
	rec, _ := e.store.GetDevice(ctx, tenant, dev)
	if len(rec.AKPublic) == 0 || !strings.HasPrefix(rec.Fingerprint, "ek:") {
		t.Fatalf("registry record lacks the AK or EK fingerprint: %+v", rec)
	}

	t.Run("fail/file-keystore", func(t *testing.T) {
		cfg := e.cfg
		cfg.StateDir = t.TempDir()
		cfg.Keystore = openFileKeystore(t, filepath.Join(t.TempDir(), "keys"))
		if _, err := agent.Enroll(ctx, cfg, agent.TPM()); err == nil || !strings.Contains(err.Error(), "has no TPM") {
			t.Fatalf("TPM credential with a file keystore: %v", err)
		}
	})
}

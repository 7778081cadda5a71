package agentcli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/jointoken"
	"github.com/wardiot/ward/internal/provision/provisiontest"
	"github.com/wardiot/ward/internal/provision/symkey"
	"github.com/wardiot/ward/internal/provision/tpmek"
	"github.com/wardiot/ward/internal/provision/x509pop"
	"github.com/wardiot/ward/wire"
)

// provisionCA authenticates enrollments with provision's Provisioner and
// has esttest's CA issue: it hands the inner CA a one-time token for the
// device that provisioning proved.
type provisionCA struct {
	*esttest.CA
	p *provision.Provisioner
}

func (c *provisionCA) tenantLabel(label string) string { t, _, _ := strings.Cut(label, "."); return t }

func (c *provisionCA) CACerts(ctx context.Context, label string) ([]*x509.Certificate, error) {
	return c.CA.CACerts(ctx, c.tenantLabel(label))
}

func (c *provisionCA) Enroll(ctx context.Context, r *est.Request) ([]*x509.Certificate, error) {
	en, err := c.p.Enroll(ctx, r.Label, &provision.Request{CSR: r.CSR, PeerCertificates: r.Creds.PeerCertificates,
		BearerToken: r.Creds.BearerToken, RemoteAddr: r.RemoteAddr})
	var pe *provision.Error
	if errors.As(err, &pe) {
		return nil, est.Forbidden("enrollment refused: "+string(pe.Reason), err)
	}
	if err != nil {
		return nil, err
	}
	inner := *r
	inner.Label = c.tenantLabel(r.Label)
	inner.Creds = est.Credentials{BearerToken: "proved-" + rand.Text()}
	c.AddToken(inner.Creds.BearerToken, en.DeviceID)
	return c.CA.Enroll(ctx, &inner)
}

type provServer struct {
	*server
	store   *provisiontest.Store
	sealers provision.Sealers
}

func newProvServer(t *testing.T) *provServer {
	t.Helper()
	s := &provServer{store: provisiontest.NewStore(), sealers: provisiontest.Sealers()}
	p, err := provision.New(provision.Config{
		Store: s.store, Sealers: s.sealers, Events: &provisiontest.Events{}, Auditor: &provisiontest.Auditor{},
		Authenticators: map[provision.Mechanism]provision.Authenticator{
			provision.MechanismX509:      x509pop.New(time.Now),
			provision.MechanismTPM:       tpmek.New(s.store, s.sealers, time.Now),
			provision.MechanismSymmetric: symkey.New(s.store, s.sealers, time.Now),
			provision.MechanismToken:     jointoken.New(s.store, time.Now),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.server = newServerWith(t, func(ca *esttest.CA) est.CA { return &provisionCA{CA: ca, p: p} }, func(mux *http.ServeMux) {
		mux.HandleFunc("POST /.well-known/ward/provision/{label}/{mech}/challenge", func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(io.LimitReader(r.Body, wire.MaxTPMChallengeRequestSize+1))
			out, err := p.Challenge(r.Context(), r.PathValue("label"), provision.Mechanism(r.PathValue("mech")), body, r.RemoteAddr)
			if err != nil {
				http.Error(w, "challenge refused", http.StatusForbidden)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write(out)
		})
	})
	return s
}

func (s *provServer) putGroup(t *testing.T, g *provision.Group) *provision.Group {
	t.Helper()
	if g.ID == "" {
		g.ID = provision.NewGroupID()
	}
	g.Tenant, g.Enabled, g.CreatedAt = tenant, true, time.Now()
	if err := s.store.PutGroup(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	return g
}

func makerCert(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	return writeFile(t, string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})))
}

func enrollArgs(s *provServer, device, label string, more ...string) []string {
	return append([]string{"enroll", "--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--device", device,
		"--label", label}, more...)
}

func TestEnrollBootstrapX509(t *testing.T) {
	s := newProvServer(t)
	root, rootKey := makerCert(t, "Maker Root", nil, nil)
	s.putGroup(t, &provision.Group{Name: "factory", Mechanism: provision.MechanismX509,
		X509: &provision.X509Config{Roots: [][]byte{root.Raw}, AnyEKU: true, DeviceID: provision.IDRule{From: "cn"}}})
	cert, key := makerCert(t, "pump-7", root, rootKey)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile := writePEM(t, "CERTIFICATE", cert.Raw), writePEM(t, "PRIVATE KEY", der)
	state := filepath.Join(t.TempDir(), "state")
	r := runCLI(t, context.Background(), enrollArgs(s, "pump-7", tenant+".factory", "--state", state,
		"--bootstrap", "x509:"+certFile+","+keyFile)...)
	if r.code != 0 || !strings.Contains(r.stdout, "enrolled acme/pump-7") {
		t.Fatalf("enroll: %+v", r)
	}
	if d, err := s.store.GetDevice(context.Background(), tenant, "pump-7"); err != nil || !strings.HasPrefix(d.Fingerprint, "sha256:") {
		t.Fatalf("registry: %+v %v", d, err)
	}
}

func TestEnrollBootstrapSymmetric(t *testing.T) {
	s := newProvServer(t)
	id := provision.NewGroupID()
	sl, _ := s.sealers(context.Background(), tenant)
	groupKey, sealed, err := symkey.NewGroupKey(sl, id)
	if err != nil {
		t.Fatal(err)
	}
	s.putGroup(t, &provision.Group{ID: id, Name: "line", Mechanism: provision.MechanismSymmetric,
		Symmetric: &provision.SymmetricConfig{SealedKey: sealed}})
	keyHex := hex.EncodeToString(wire.DeriveSymmetricDeviceKey(groupKey, "pump-8"))
	keyFile := writeFile(t, keyHex+"\n")
	r := runCLI(t, context.Background(), enrollArgs(s, "pump-8", tenant+".line", "--state", filepath.Join(t.TempDir(), "state"),
		"--bootstrap", "symmetric:"+keyFile)...)
	if r.code != 0 || !strings.Contains(r.stdout, "enrolled acme/pump-8") {
		t.Fatalf("enroll: %+v", r)
	}
	if strings.Contains(r.stdout+r.stderr, keyHex) {
		t.Fatal("the device key was printed")
	}
}

func TestEnrollBootstrapToken(t *testing.T) {
	s := newProvServer(t)
	g := s.putGroup(t, &provision.Group{Name: "tokens", Mechanism: provision.MechanismToken, Token: &provision.TokenConfig{}})
	tok, _, err := jointoken.Mint(context.Background(), s.store, time.Now(), g, "pump-9", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, context.Background(), enrollArgs(s, "pump-9", tenant+".tokens", "--state", filepath.Join(t.TempDir(), "state"),
		"--bootstrap", "token:"+tok)...)
	if r.code != 0 || !strings.Contains(r.stdout, "enrolled acme/pump-9") {
		t.Fatalf("enroll: %+v", r)
	}
}

// TestEnrollBootstrapTPM enrolls through the CLI with swtpm's EK: the
// first attempt names the EK-derived device ID, the second uses it.
func TestEnrollBootstrapTPM(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	s := newProvServer(t)
	var roots [][]byte
	for _, f := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(sim.EKCADir, f))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		roots = append(roots, blk.Bytes)
	}
	s.putGroup(t, &provision.Group{Name: "tpm", Mechanism: provision.MechanismTPM,
		TPM: &provision.TPMConfig{EKRoots: roots[:1], EKIntermediates: roots[1:], IDPrefix: "tpm-"}})
	state := filepath.Join(t.TempDir(), "state")
	args := func(device string) []string {
		return enrollArgs(s, device, tenant+".tpm", "--state", state, "--keystore", sim.Spec(), "--bootstrap", "tpm")
	}
	r := runCLI(t, context.Background(), args("unknown")...)
	_, rest, ok := strings.Cut(r.stderr, `proves device "`)
	if r.code != 1 || !ok {
		t.Fatalf("first attempt: %+v", r)
	}
	dev, _, _ := strings.Cut(rest, `"`)
	r = runCLI(t, context.Background(), args(dev)...)
	if r.code != 0 || !strings.Contains(r.stdout, "enrolled acme/"+dev) || !strings.Contains(r.stdout, "tpm keystore") {
		t.Fatalf("enroll: %+v", r)
	}
}

func TestEnrollBootstrapErrors(t *testing.T) {
	s := newProvServer(t)
	root, rootKey := makerCert(t, "Maker Root", nil, nil)
	cert, _ := makerCert(t, "pump-7", root, rootKey)
	_, otherKey := makerCert(t, "x", root, rootKey)
	der, _ := x509.MarshalECPrivateKey(otherKey)
	certFile, wrongKey := writePEM(t, "CERTIFICATE", cert.Raw), writePEM(t, "EC PRIVATE KEY", der)
	for name, tc := range map[string]struct {
		args []string
		err  string
	}{
		"fail/unknown-mechanism":  {[]string{"--bootstrap", "password:x"}, `unknown mechanism "password"`},
		"fail/token-and-boot":     {[]string{"--bootstrap", "tpm", "--token", "secret-tok"}, "not both"},
		"fail/tpm-file-keystore":  {[]string{"--bootstrap", "tpm"}, "needs the TPM keystore"},
		"fail/tpm-with-argument":  {[]string{"--bootstrap", "tpm:x"}, "takes no argument"},
		"fail/x509-one-file":      {[]string{"--bootstrap", "x509:" + certFile}, "needs CERT.pem,KEY.pem"},
		"fail/x509-key-mismatch":  {[]string{"--bootstrap", "x509:" + certFile + "," + wrongKey}, "does not belong to the certificate"},
		"fail/basic-with-x509":    {[]string{"--bootstrap", "x509:" + certFile + "," + wrongKey, "--basic"}, "--basic applies to enrollment tokens only"},
		"fail/symmetric-bad-file": {[]string{"--bootstrap", "symmetric:" + writeFile(t, "secret-short")}, "want the 32-byte device key"},
	} {
		t.Run(name, func(t *testing.T) {
			r := runCLI(t, context.Background(), enrollArgs(s, "pump-7", tenant+".g", append([]string{"--state", filepath.Join(t.TempDir(), "s")}, tc.args...)...)...)
			if r.code != 2 || !strings.Contains(r.stderr, tc.err) {
				t.Fatalf("got %d %q, want 2 and %q", r.code, r.stderr, tc.err)
			}
			if strings.Contains(r.stderr, "secret-") {
				t.Fatalf("a secret reached stderr: %q", r.stderr)
			}
		})
	}
}

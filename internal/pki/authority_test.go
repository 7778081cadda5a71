package pki_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/pki/pkitest"
)

func fileEnv(t testing.TB, mod func(*pki.Config)) *env {
	return newEnv(t, pki.NewFileKeyManager(pkitest.NewSealer()), mod)
}

func mustCreate(t testing.TB, e *env, tenant string) pki.TenantCAs {
	t.Helper()
	tc, err := e.a.CreateTenantCAs(context.Background(), tenant, pki.ECDSAP256, e.km)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

func TestIssueRejects(t *testing.T) {
	ctx := context.Background()
	e := fileEnv(t, nil)
	mustCreate(t, e, "acme")
	mustCreate(t, e, "other")
	key := newKey(t)
	good := deviceCSR(t, key, "acme", "dev-1")

	badSig := bytes.Clone(good)
	badSig[len(badSig)-5] ^= 0xff // inside the signature value

	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	weakCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}}, weak)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224CSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}}, p224)
	extCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: []byte{5, 0}}}}, key)
	dnsCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}, DNSNames: []string{"evil.example"}}, key)
	cnCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-2"}}, key)
	huge := make([]byte, pki.MaxCSRSize+1)
	copy(huge, good)

	tests := map[string]struct {
		req  pki.IssueRequest
		want error
	}{
		"fail/malformed":           {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: []byte("not a CSR")}, pki.ErrBadCSR},
		"fail/bad-signature":       {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: badSig}, pki.ErrBadCSR},
		"fail/oversized":           {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: huge}, pki.ErrBadCSR},
		"fail/other-tenant-device": {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: deviceCSR(t, key, "other", "dev-1")}, pki.ErrWrongTenant},
		"fail/other-device":        {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: deviceCSR(t, key, "acme", "dev-9")}, pki.ErrBadCSR},
		"fail/rsa-1024":            {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: weakCSR}, pki.ErrBadCSR},
		"fail/p224":                {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: p224CSR}, pki.ErrBadCSR},
		"fail/unknown-extension":   {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: extCSR}, pki.ErrBadCSR},
		"fail/device-dns-san":      {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: dnsCSR}, pki.ErrBadCSR},
		"fail/cn-not-device":       {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: cnCSR}, pki.ErrBadCSR},
		"fail/bad-device-id":       {pki.IssueRequest{Tenant: "acme", Device: "a/b", Profile: pki.ProfileDevice, CSR: good}, pki.ErrBadRequest},
		"fail/unknown-profile":     {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: "ca", CSR: good}, pki.ErrBadRequest},
		"fail/validity-too-long":   {pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileShortLived, CSR: good, Validity: 48 * time.Hour}, pki.ErrBadRequest},
		"fail/server-unauthorised": {pki.IssueRequest{Tenant: "acme", Profile: pki.ProfileServer, CSR: dnsCSR, DNSNames: []string{"ok.example"}}, pki.ErrBadCSR},
		"fail/no-tenant-ca":        {pki.IssueRequest{Tenant: "nobody", Device: "dev-1", Profile: pki.ProfileDevice, CSR: good}, pki.ErrNoCA},
	}
	before, _ := e.store.ListCerts(ctx, pki.CertFilter{})
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := e.a.Issue(ctx, tc.req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
		})
	}
	after, _ := e.store.ListCerts(ctx, pki.CertFilter{})
	if len(after) != len(before) {
		t.Fatalf("rejected requests left %d records", len(after)-len(before))
	}
}

func TestIssueProfiles(t *testing.T) {
	ctx := context.Background()
	e := fileEnv(t, nil)
	tc := mustCreate(t, e, "acme")
	now := e.clock.Now()
	key := newKey(t)

	dev, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: deviceCSR(t, key, "acme", "dev-1")})
	if err != nil {
		t.Fatal(err)
	}
	if got := dev.Cert.NotAfter.Sub(now); got != pki.DefaultDeviceValidity {
		t.Errorf("device validity %s", got)
	}
	if dev.Cert.SerialNumber.BitLen() < 64 || dev.Cert.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %x too small", dev.Cert.SerialNumber)
	}
	rec, err := e.store.GetCert(ctx, dev.Record.Serial)
	if err != nil || rec.Device != "dev-1" || rec.Tenant != "acme" || rec.CAID != tc.Issuing.ID || !bytes.Equal(rec.CertDER, dev.Cert.Raw) || len(rec.SPKISHA256) != 32 || rec.Status != pki.CertGood {
		t.Fatalf("record %+v, %v", rec, err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(mustParseCert(t, tc.Root.CertDER))
	inter := x509.NewCertPool()
	inter.AddCert(dev.Chain[0])
	if _, err := dev.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}

	short, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileShortLived, CSR: deviceCSR(t, key, "acme", "dev-1"), Validity: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := short.Cert.NotAfter.Sub(now); got != 2*time.Hour {
		t.Errorf("short-lived validity %s", got)
	}

	srvCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"mqtt.example"}}, key)
	srv, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Profile: pki.ProfileServer, CSR: srvCSR, DNSNames: []string{"mqtt.example"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, DNSName: "mqtt.example"}); err != nil {
		t.Fatal(err)
	}
	if srv.Cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || len(srv.Cert.IPAddresses) != 1 {
		t.Fatalf("server cert %v %v", srv.Cert.ExtKeyUsage, srv.Cert.IPAddresses)
	}
}

// conflictStore fails the first RecordCert with ErrConflict, as a
// duplicate serial would.
type conflictStore struct {
	*pkitest.MemStore
	conflicts int
}

func (s *conflictStore) RecordCert(ctx context.Context, rec pki.CertRecord) error {
	if s.conflicts > 0 {
		s.conflicts--
		return pki.ErrConflict
	}
	return s.MemStore.RecordCert(ctx, rec)
}

func TestSerialConflictRetried(t *testing.T) {
	ctx := context.Background()
	cs := &conflictStore{MemStore: pkitest.NewMemStore()}
	e := fileEnv(t, func(c *pki.Config) { c.Store = cs })
	mustCreate(t, e, "acme")
	cs.conflicts = 1
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.GetCert(ctx, is.Record.Serial); err != nil {
		t.Fatal(err)
	}
	cs.conflicts = 100
	if _, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")}); !errors.Is(err, pki.ErrConflict) {
		t.Fatalf("endless conflicts: %v", err)
	}
}

// auditor records events and checks the certificate is already stored.
type auditor struct {
	store  *pkitest.MemStore
	events []pki.Event
	fail   error
	t      *testing.T
}

func (a *auditor) Audit(ctx context.Context, e pki.Event) error {
	if e.Serial != "" {
		if _, err := a.store.GetCert(ctx, e.Serial); err != nil {
			a.t.Errorf("audited %s before it was recorded", e.Serial)
		}
	}
	a.events = append(a.events, e)
	return a.fail
}

func TestAuditBeforeReturn(t *testing.T) {
	ctx := context.Background()
	store := pkitest.NewMemStore()
	au := &auditor{store: store, t: t}
	e := fileEnv(t, func(c *pki.Config) { c.Store = store; c.Auditor = au })
	mustCreate(t, e, "acme")
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")})
	if err != nil {
		t.Fatal(err)
	}
	last := au.events[len(au.events)-1]
	if last.Action != "cert.issue" || last.Serial != is.Record.Serial || last.Device != "d" {
		t.Fatalf("last event %+v", last)
	}
	au.fail = errors.New("audit log unavailable")
	if _, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")}); err == nil {
		t.Fatal("issuance succeeded although auditing failed")
	}
}

func TestRevokeAndRestart(t *testing.T) {
	ctx := context.Background()
	e := fileEnv(t, nil)
	tc := mustCreate(t, e, "acme")
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.Revoke(ctx, is.Record.Serial, pki.Reason(6)); !errors.Is(err, pki.ErrBadReason) {
		t.Fatalf("certificateHold accepted: %v", err)
	}
	if _, err := e.a.Revoke(ctx, "abc", pki.ReasonSuperseded); !errors.Is(err, pki.ErrNotFound) {
		t.Fatalf("unknown serial: %v", err)
	}
	if _, err := e.a.Revoke(ctx, is.Record.Serial, pki.ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.Revoke(ctx, is.Record.Serial, pki.ReasonKeyCompromise); !errors.Is(err, pki.ErrAlreadyRevoked) {
		t.Fatalf("second revoke: %v", err)
	}
	if err := e.a.RefreshCRL(ctx, tc.Issuing.ID); err != nil {
		t.Fatal(err)
	}
	der, _ := e.a.CRL(tc.Issuing.ID)
	crl1, _ := x509.ParseRevocationList(der)

	e.start(t) // restart from the store
	r, ok := e.a.Revocations().Lookup(is.Cert.SerialNumber)
	if !ok || r.Reason != pki.ReasonSuperseded {
		t.Fatalf("after restart: %+v %v", r, ok)
	}
	if _, ok := e.a.Revocations().Lookup(big.NewInt(12345)); ok {
		t.Fatal("unknown serial reported revoked")
	}
	der, _ = e.a.CRL(tc.Issuing.ID)
	crl2, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if crl2.Number.Cmp(crl1.Number) <= 0 {
		t.Fatalf("CRL number went from %v to %v", crl1.Number, crl2.Number)
	}
	if len(crl2.RevokedCertificateEntries) != 1 || crl2.RevokedCertificateEntries[0].SerialNumber.Cmp(is.Cert.SerialNumber) != 0 || crl2.RevokedCertificateEntries[0].ReasonCode != int(pki.ReasonSuperseded) {
		t.Fatalf("CRL entries %+v", crl2.RevokedCertificateEntries)
	}
	if err := crl2.CheckSignatureFrom(mustParseCert(t, tc.Issuing.CertDER)); err != nil {
		t.Fatal(err)
	}
}

func TestMaintainRenewsBeforeExpiry(t *testing.T) {
	ctx := context.Background()
	e := fileEnv(t, func(c *pki.Config) { c.MaintainInterval = time.Hour })
	tc := mustCreate(t, e, "acme")
	der, _ := e.a.CRL(tc.Issuing.ID)
	crl1, _ := x509.ParseRevocationList(der)

	e.clock.Advance(pki.DefaultCRLValidity / 2)
	if err := e.a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	der, _ = e.a.CRL(tc.Issuing.ID)
	if crl, _ := x509.ParseRevocationList(der); crl.Number.Cmp(crl1.Number) != 0 {
		t.Fatal("CRL regenerated with half its validity left")
	}
	e.clock.Advance(pki.DefaultCRLValidity / 4)
	if err := e.a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	der, _ = e.a.CRL(tc.Issuing.ID)
	crl2, _ := x509.ParseRevocationList(der)
	if crl2.Number.Cmp(crl1.Number) <= 0 || !crl2.NextUpdate.After(crl1.NextUpdate) {
		t.Fatal("CRL not regenerated with a quarter of its validity left")
	}

	// The OCSP responder certificate is renewed with a third of its life left.
	before, _ := e.store.ListCerts(ctx, pki.CertFilter{CAID: tc.Issuing.ID})
	e.clock.Advance(pki.DefaultOCSPSignerValidity * 2 / 3)
	if err := e.a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := e.store.ListCerts(ctx, pki.CertFilter{CAID: tc.Issuing.ID})
	if len(after) != len(before)+1 || after[len(after)-1].Profile != "ocsp-responder" {
		t.Fatalf("responder not renewed: %d -> %d", len(before), len(after))
	}
}

func TestRootOffline(t *testing.T) {
	ctx := context.Background()
	e := fileEnv(t, nil)
	tc := mustCreate(t, e, "acme")
	pemKey, err := e.a.ExportRootKey(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherPEM, _ := x509.MarshalPKCS8PrivateKey(other)
	if err := e.a.RootOffline(ctx, "acme", e.km, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherPEM})); err == nil {
		t.Fatal("root taken offline with a key that is not the root key")
	}
	if err := e.a.RootOffline(ctx, "acme", e.km, pemKey); err != nil {
		t.Fatal(err)
	}
	cas, _ := e.store.ListCAs(ctx, "acme")
	for _, c := range cas {
		if c.Kind == pki.KindRoot && (c.KeyRef != nil || c.Status != pki.CAOffline) {
			t.Fatalf("root record still holds its key: %+v", c)
		}
	}
	// Issuance continues with the issuing CA, also after a restart.
	e.start(t)
	if _, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.NewIssuingCA(ctx, "acme", pki.ECDSAP256, e.km, nil); !errors.Is(err, pki.ErrNoCA) {
		t.Fatalf("new issuing CA without the root key: %v", err)
	}
	rootKey, err := pki.ParseKeyPEM(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	iss2, err := e.a.NewIssuingCA(ctx, "acme", pki.ECDSAP256, e.km, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")})
	if err != nil {
		t.Fatal(err)
	}
	if is.Record.CAID != iss2.ID {
		t.Fatalf("issued by %s, want the new issuing CA %s", is.Record.CAID, iss2.ID)
	}
	old, _ := e.a.CA(tc.Issuing.ID)
	if old.Status != pki.CARetired {
		t.Fatalf("old issuing CA is %s", old.Status)
	}
	if _, err := e.a.CRL(tc.Issuing.ID); err != nil {
		t.Fatalf("retired CA stopped publishing its CRL: %v", err)
	}
}

func TestParseNames(t *testing.T) {
	for _, s := range []string{"keyCompromise", "superseded", "cessationOfOperation", "KEYCOMPROMISE"} {
		if _, err := pki.ParseReason(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"certificateHold", "removeFromCRL", "", "nope"} {
		if _, err := pki.ParseReason(s); !errors.Is(err, pki.ErrBadReason) {
			t.Errorf("%q accepted", s)
		}
	}
	if a, err := pki.ParseAlgorithm(""); err != nil || a != pki.ECDSAP256 {
		t.Errorf("default algorithm %v %v", a, err)
	}
	for _, s := range []string{"ecdsa-p384", "rsa-3072", "ed25519"} {
		if _, err := pki.ParseAlgorithm(s); err != nil {
			t.Error(err)
		}
	}
	for _, s := range []string{"rsa-1024", "ecdsa-p224", "dsa"} {
		if _, err := pki.ParseAlgorithm(s); !errors.Is(err, pki.ErrUnsupportedAlgorithm) {
			t.Errorf("%s accepted", s)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	_, err := pki.New(context.Background(), pki.Config{BaseURL: "ftp://x"})
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, want := range []string{"Store is required", "Keys is required", "BaseURL"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDeviceURIFromCSRIsNotTrusted(t *testing.T) {
	// A CSR without SANs still gets the URI SAN decided by the request.
	ctx := context.Background()
	e := fileEnv(t, nil)
	mustCreate(t, e, "acme")
	key := newKey(t)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d7", Profile: pki.ProfileDevice, CSR: csr})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := url.Parse("urn:ward:acme:device:d7")
	if len(is.Cert.URIs) != 1 || is.Cert.URIs[0].String() != want.String() || is.Cert.Subject.CommonName != "d7" {
		t.Fatalf("URIs %v CN %q", is.Cert.URIs, is.Cert.Subject.CommonName)
	}
}

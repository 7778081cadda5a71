// Package esttest provides test doubles and peers for EST: a CA backed by
// crypto/x509 with one-time enrollment tokens, and the globalsign/est
// estclient binary, built from the test/interop module.
package esttest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/wire"
)

// CA is a toy two-level CA (root and issuing CA, both P-256) that
// implements est.CA and est.ServerKeyGenerator for one label. A device
// enrolls with a one-time token, as a Bearer token or as the HTTP Basic
// password with the device ID as user name, and gets a certificate whose
// URI SAN is wire.DeviceURI(label, device) whatever the CSR asks for.
type CA struct {
	Label   string
	Root    *x509.Certificate
	Issuing *x509.Certificate
	// Now is the CA's clock; tests may replace it before use.
	Now func() time.Time
	// Attrs is returned by CSRAttrs.
	Attrs []byte

	issuingKey crypto.Signer

	mu      sync.Mutex
	tokens  []token
	pending time.Duration
	calls   int
}

type token struct {
	secret   []byte
	device   string
	used     bool
	reusable bool
}

var (
	_ est.CA                 = (*CA)(nil)
	_ est.ServerKeyGenerator = (*CA)(nil)
)

// NewCA makes a CA for label with a fresh root and issuing CA.
func NewCA(t testing.TB, label string) *CA {
	t.Helper()
	now := time.Now()
	rootKey := newKey(t)
	root := sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Ward Test Root CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, rootKey, rootKey)
	issKey := newKey(t)
	iss := sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Ward Test Issuing CA " + label},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, root, rootKey, issKey)
	return &CA{Label: label, Root: root, Issuing: iss, Now: time.Now, issuingKey: issKey}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, parentKey crypto.Signer, key crypto.Signer) *x509.Certificate {
	t.Helper()
	c, err := issue(tmpl, parent, parentKey, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func issue(tmpl, parent *x509.Certificate, parentKey crypto.Signer, pub crypto.PublicKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// AddToken registers a one-time enrollment token for device.
func (c *CA) AddToken(secret, device string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokens = append(c.tokens, token{secret: []byte(secret), device: device})
}

// AddReusableToken registers a token that can enroll device any number of
// times, as an enrollment group that allows reuse would.
func (c *CA) AddReusableToken(secret, device string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokens = append(c.tokens, token{secret: []byte(secret), device: device, reusable: true})
}

// SetPending makes Enroll answer 202 with Retry-After d; 0 turns it off.
func (c *CA) SetPending(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = d
}

// Calls returns how many times Enroll, Reenroll or ServerKeyGen ran.
func (c *CA) Calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// Pool returns a pool holding the root, for verifying issued certificates.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Root)
	return p
}

// CACerts implements est.CA.
func (c *CA) CACerts(_ context.Context, label string) ([]*x509.Certificate, error) {
	if label != c.Label {
		return nil, est.ErrNotFound
	}
	return []*x509.Certificate{c.Issuing, c.Root}, nil
}

// CSRAttrs implements est.CA.
func (c *CA) CSRAttrs(_ context.Context, label string) ([]byte, error) {
	if label != c.Label {
		return nil, est.ErrNotFound
	}
	return c.Attrs, nil
}

// Enroll implements est.CA.
func (c *CA) Enroll(_ context.Context, r *est.Request) ([]*x509.Certificate, error) {
	device, err := c.authenticate(r)
	if err != nil {
		return nil, err
	}
	leaf, err := c.issueLeaf(device, r.CSR.PublicKey)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, c.Issuing}, nil
}

// Reenroll implements est.CA: the client certificate must chain to this
// CA at c.Now and name a device of this label.
func (c *CA) Reenroll(_ context.Context, r *est.Request) ([]*x509.Certificate, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	if r.Label != c.Label {
		return nil, est.ErrNotFound
	}
	peer := r.Creds.PeerCertificates
	inter := x509.NewCertPool()
	inter.AddCert(c.Issuing)
	if _, err := peer[0].Verify(x509.VerifyOptions{
		Roots:         c.Pool(),
		Intermediates: inter,
		CurrentTime:   c.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, est.Forbidden("the client certificate is not one this CA issued", err)
	}
	if len(peer[0].URIs) != 1 {
		return nil, est.Forbidden("the client certificate names no device", nil)
	}
	tenant, device, err := wire.ParseDeviceURI(peer[0].URIs[0].String())
	if err != nil || tenant != c.Label {
		return nil, est.Forbidden("the client certificate names no device of this label", err)
	}
	leaf, err := c.issueLeaf(device, r.CSR.PublicKey)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf}, nil
}

// ServerKeyGen implements est.ServerKeyGenerator.
func (c *CA) ServerKeyGen(_ context.Context, r *est.Request) ([]*x509.Certificate, []byte, error) {
	device, err := c.authenticate(r)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := c.issueLeaf(device, key.Public())
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return []*x509.Certificate{leaf}, der, nil
}

// authenticate consumes a one-time token and returns its device.
func (c *CA) authenticate(r *est.Request) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if r.Label != c.Label {
		return "", est.ErrNotFound
	}
	secret, user := r.Creds.BearerToken, ""
	if secret == "" {
		secret, user = r.Creds.BasicPassword, r.Creds.BasicUser
	}
	if secret == "" {
		return "", est.AuthRequired("an enrollment token is required", nil)
	}
	match := -1
	for i := range c.tokens {
		if subtle.ConstantTimeCompare(c.tokens[i].secret, []byte(secret)) == 1 {
			match = i
		}
	}
	if match < 0 || c.tokens[match].used || (user != "" && user != c.tokens[match].device) {
		return "", est.Forbidden("the enrollment token is not valid", errors.New("unknown, used or mismatched token"))
	}
	if c.pending > 0 {
		return "", est.Pending(c.pending)
	}
	c.tokens[match].used = !c.tokens[match].reusable
	return c.tokens[match].device, nil
}

func (c *CA) issueLeaf(device string, pub crypto.PublicKey) (*x509.Certificate, error) {
	u, err := url.Parse(wire.DeviceURI(c.Label, device))
	if err != nil {
		return nil, err
	}
	now := c.Now()
	return issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: device},
		URIs:        []*url.URL{u},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, c.Issuing, c.issuingKey, pub)
}

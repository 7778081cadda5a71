package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/wire"
)

type randReader = io.Reader

// clientCertCredential is a credential presented as the TLS client
// certificate of the enrollment request.
type clientCertCredential interface {
	clientCertificate() *tls.Certificate
}

// preparer is a credential with a round before simpleenroll. prepare runs
// it with the freshly generated device key and returns the credential to
// present.
type preparer interface {
	prepare(ctx context.Context, r *resolved, c *estClient, key keystore.Key) (Credential, error)
}

// X509 returns a manufacturer-certificate credential (EST's certificate
// mechanism): certChain (leaf first, then any intermediates the server may
// lack) is presented as the TLS client certificate of the enrollment
// request, with key proving possession. key is typically in a secure
// element or TPM. The certificate is used for that one request on its own
// connection and never for MQTT or renewal, which use the operational
// certificate.
func X509(certChain []*x509.Certificate, key crypto.Signer) Credential {
	c := &x509Credential{}
	if len(certChain) == 0 || key == nil {
		return c
	}
	c.cert = &tls.Certificate{PrivateKey: key, Leaf: certChain[0]}
	for _, cert := range certChain {
		c.cert.Certificate = append(c.cert.Certificate, cert.Raw)
	}
	return c
}

type x509Credential struct{ cert *tls.Certificate }

func (c *x509Credential) authorize(*http.Request, *authContext) error {
	if c.cert == nil {
		return errors.New("the manufacturer certificate credential has no certificate or no key")
	}
	return nil
}

func (c *x509Credential) clientCertificate() *tls.Certificate { return c.cert }

func (c *x509Credential) String() string {
	if c.cert == nil || c.cert.Leaf == nil {
		return "manufacturer certificate (empty)"
	}
	return fmt.Sprintf("manufacturer certificate %q", truncate(c.cert.Leaf.Subject.String(), 128))
}

// GoString keeps %#v from printing the key.
func (c *x509Credential) GoString() string { return c.String() }

// symKeyLifetime is how long a symmetric-key token is valid. Well under
// wire.SymKeyMaxLifetime, so a device clock somewhat ahead of the server's
// is still accepted, yet a token read from a log is soon useless.
const symKeyLifetime = 5 * time.Minute

// Symmetric returns a symmetric-key credential: deviceKey is the device's
// derived key K_dev = HMAC-SHA256(groupKey, deviceID)
// (wire.DeriveSymmetricDeviceKey), written into the device at the
// factory. Each enrollment request carries a fresh short-lived
// "wardsym.v1..." token whose MAC also covers the tenant and group, so
// Config.Label must name the group: "<tenant>.<group>".
func Symmetric(deviceKey []byte) Credential {
	return symCredential{key: append([]byte(nil), deviceKey...)}
}

type symCredential struct{ key []byte }

func (s symCredential) authorize(req *http.Request, a *authContext) error {
	if len(s.key) == 0 {
		return errors.New("the symmetric device key is empty")
	}
	tenant, group, err := wire.SplitESTLabel(a.label)
	if err != nil || group == "" {
		return fmt.Errorf("a symmetric-key credential needs the label <tenant>.<group> of its enrollment group, not %q", a.label)
	}
	if tenant != a.tenant {
		return fmt.Errorf("label %q names tenant %q, not %q", a.label, tenant, a.tenant)
	}
	nonce := make([]byte, wire.SymKeyNonceSize)
	if _, err := io.ReadFull(a.rand, nonce); err != nil {
		return fmt.Errorf("symmetric-key token nonce: %w", err)
	}
	tok, err := wire.NewSymKeyToken(s.key, tenant, group, a.device, a.now.Add(symKeyLifetime), nonce)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return nil
}

func (symCredential) String() string { return "symmetric device key" }

// GoString keeps %#v from printing the key.
func (s symCredential) GoString() string { return s.String() }

package agent

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/wardiot/ward/wire"
)

// checkCACerts checks a cacerts response: every certificate is a CA, and
// every one that is not self-signed chains to a self-signed one in the
// set. A set without any self-signed certificate (a server that sends only
// its issuing CA) is accepted as the trust anchors themselves.
func checkCACerts(certs []*x509.Certificate, now time.Time) error {
	roots, inter := splitAnchors(certs)
	for i, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return fmt.Errorf("certificate %d (%s) is not a CA certificate", i, truncate(c.Subject.String(), 128))
		}
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return fmt.Errorf("CA certificate %d (%s) is not valid at %s", i, truncate(c.Subject.String(), 128), now.UTC().Format(time.RFC3339))
		}
	}
	if inter == nil {
		return nil
	}
	for _, c := range certs {
		if isSelfSigned(c) {
			continue
		}
		if _, err := c.Verify(x509.VerifyOptions{
			Roots:         roots,
			Intermediates: inter,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		}); err != nil {
			return fmt.Errorf("CA certificate %s does not chain to a root in the response: %w", truncate(c.Subject.String(), 128), err)
		}
	}
	return nil
}

// splitAnchors returns the self-signed certificates as roots and the rest
// as intermediates; with no self-signed certificate all are roots and
// inter is nil.
func splitAnchors(certs []*x509.Certificate) (roots, inter *x509.CertPool) {
	roots = x509.NewCertPool()
	var rest []*x509.Certificate
	for _, c := range certs {
		if isSelfSigned(c) {
			roots.AddCert(c)
		} else {
			rest = append(rest, c)
		}
	}
	if len(rest) == len(certs) {
		for _, c := range certs {
			roots.AddCert(c)
		}
		return roots, nil
	}
	inter = x509.NewCertPool()
	for _, c := range rest {
		inter.AddCert(c)
	}
	return roots, inter
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// verifyIssued checks an issued certificate before the agent uses it: it
// certifies pub, names tenant/device, allows client authentication, and
// chains to caCerts at now. It returns the chain to present in TLS: the
// leaf and its intermediates, without the root.
func verifyIssued(leaf *x509.Certificate, pub crypto.PublicKey, tenant, device string, caCerts []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !k.Equal(pub) {
		return nil, errors.New("the certificate does not certify the device's key")
	}
	want := wire.DeviceURI(tenant, device)
	found := false
	for _, u := range leaf.URIs {
		if u.String() == want {
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("the certificate does not name %s", want)
	}
	roots, inter := splitAnchors(caCerts)
	if inter == nil {
		inter = x509.NewCertPool()
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("the certificate does not verify against the server's CA certificates: %w", err)
	}
	chain := chains[0]
	if len(chain) > 1 && isSelfSigned(chain[len(chain)-1]) {
		chain = chain[:len(chain)-1]
	}
	return chain, nil
}

// enrollCSR makes the first CSR of a device: CN = device, URI SAN = its
// Ward device URI. The server decides what goes in the certificate; the
// CSR states what the device expects.
func enrollCSR(rand io.Reader, key crypto.Signer, tenant, device string) ([]byte, error) {
	u, err := url.Parse(wire.DeviceURI(tenant, device))
	if err != nil {
		return nil, err
	}
	return x509.CreateCertificateRequest(rand, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: device},
		URIs:    []*url.URL{u},
	}, key)
}

// reenrollCSR makes a renewal CSR: RFC 7030 §4.2.2 requires the subject
// and subjectAltName of the certificate being renewed, byte for byte where
// possible.
func reenrollCSR(rand io.Reader, key crypto.Signer, cur *x509.Certificate) ([]byte, error) {
	return x509.CreateCertificateRequest(rand, &x509.CertificateRequest{
		RawSubject:     cur.RawSubject,
		DNSNames:       cur.DNSNames,
		EmailAddresses: cur.EmailAddresses,
		IPAddresses:    cur.IPAddresses,
		URIs:           cur.URIs,
	}, key)
}

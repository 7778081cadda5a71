package provision

import (
	"context"
	"crypto/x509"
)

// Bootstrap credentials are scoped to enrollment. The MQTT gateway must
// refuse a client certificate that IsBootstrapCertificate recognises: a
// maker's certificate proves only that a device was made, not that a
// tenant enrolled it, and it is often shared by a whole production batch
// or extractable from the device.

// IsBootstrapCertificate reports whether chain (leaf first, as sent in a
// TLS handshake) chains to a manufacturer CA in manufacturer (see
// ManufacturerRoots) and not to a tenant issuing CA in issuing. Validity
// periods and key usages are ignored on purpose: an expired manufacturer
// certificate is still a bootstrap credential and must still be refused.
func IsBootstrapCertificate(chain []*x509.Certificate, manufacturer, manufacturerIntermediates, issuing *x509.CertPool) bool {
	if len(chain) == 0 || manufacturer == nil {
		return false
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	if manufacturerIntermediates != nil {
		inter = manufacturerIntermediates.Clone()
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Intermediates: inter, CurrentTime: leaf.NotBefore, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if issuing != nil {
		opts.Roots = issuing
		if _, err := leaf.Verify(opts); err == nil {
			return false
		}
	}
	opts.Roots = manufacturer
	_, err := leaf.Verify(opts)
	return err == nil
}

// ManufacturerRoots collects the manufacturer roots and intermediates of
// every x509 enrollment group of every tenant, for IsBootstrapCertificate.
// The gateway should cache the result and refresh it when groups change.
func (p *Provisioner) ManufacturerRoots(ctx context.Context) (roots, intermediates *x509.CertPool, err error) {
	gs, err := p.cfg.Store.ListGroups(ctx, "")
	if err != nil {
		return nil, nil, err
	}
	roots, intermediates = x509.NewCertPool(), x509.NewCertPool()
	for _, g := range gs {
		if g.X509 == nil {
			continue
		}
		for _, der := range g.X509.Roots {
			if c, err := x509.ParseCertificate(der); err == nil {
				roots.AddCert(c)
			}
		}
		for _, der := range g.X509.Intermediates {
			if c, err := x509.ParseCertificate(der); err == nil {
				intermediates.AddCert(c)
			}
		}
	}
	return roots, intermediates, nil
}

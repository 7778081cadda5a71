// Package x509pop authenticates devices by a manufacturer certificate:
// the device's TLS client certificate at EST (the TLS handshake proved
// possession of its key) must chain to one of the group's registered
// manufacturer CAs at the injected clock, carry the clientAuth extended
// key usage (unless the group accepts any), and not be revoked by the
// group's serial deny-list or CRLs. The device ID is read from the
// certificate by the group's IDRule.
package x509pop

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/wire"
)

// MaxChainLen bounds the certificates a client may send: a leaf and a few
// intermediates. Longer chains only cost verification time.
const MaxChainLen = 5

// Authenticator implements provision.Authenticator for MechanismX509.
type Authenticator struct {
	now func() time.Time
}

var _ provision.Authenticator = (*Authenticator)(nil)

// New returns an authenticator on clock now.
func New(now func() time.Time) *Authenticator { return &Authenticator{now: now} }

// Authenticate implements provision.Authenticator.
func (a *Authenticator) Authenticate(_ context.Context, g *provision.Group, req *provision.Request) (*provision.Result, error) {
	cfg := g.X509
	if cfg == nil {
		return nil, provision.Refuse(provision.ReasonWrongGroup, "group %q is not an x509 group", g.Name)
	}
	if len(req.PeerCertificates) == 0 {
		return nil, provision.Refuse(provision.ReasonNoCredential, "no client certificate")
	}
	if len(req.PeerCertificates) > MaxChainLen {
		return nil, provision.Refuse(provision.ReasonMalformed, "client sent %d certificates, at most %d", len(req.PeerCertificates), MaxChainLen)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	var issuers []*x509.Certificate
	for _, der := range cfg.Roots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, errors.New("x509pop: group has an unparsable root")
		}
		roots.AddCert(c)
		issuers = append(issuers, c)
	}
	for _, der := range cfg.Intermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, errors.New("x509pop: group has an unparsable intermediate")
		}
		inter.AddCert(c)
		issuers = append(issuers, c)
	}
	for _, c := range req.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := req.PeerCertificates[0]
	now := a.now()
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if cfg.AnyEKU {
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	}
	// Verify at a time inside the leaf's validity first, to tell an
	// unknown CA from an expired certificate; then at the real clock.
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: leaf.NotBefore, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, provision.Refuse(provision.ReasonUnknownCA, "certificate %s does not chain to a manufacturer CA of group %q", fingerprint(leaf), g.Name)
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, provision.Refuse(provision.ReasonExpired, "certificate %s valid %s to %s", fingerprint(leaf),
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: usage}); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.IncompatibleUsage {
			return nil, provision.Refuse(provision.ReasonBadUsage, "certificate %s lacks the clientAuth usage", fingerprint(leaf))
		}
		return nil, provision.Refuse(provision.ReasonExpired, "certificate %s: chain not valid now: %v", fingerprint(leaf), err)
	}
	if r, why := revoked(cfg, chains[0], issuers, now); r {
		return nil, provision.Refuse(provision.ReasonRevoked, "certificate %s: %s", fingerprint(leaf), why)
	}
	id, err := DeviceID(leaf, cfg.DeviceID)
	if err != nil {
		return nil, &provision.Error{Reason: provision.ReasonMalformed, Detail: "device ID from certificate " + fingerprint(leaf), Err: err}
	}
	return &provision.Result{DeviceID: id, Fingerprint: fingerprint(leaf)}, nil
}

func fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(s[:])
}

// serialHex is the canonical serial form of deny-lists and IDs.
func serialHex(c *x509.Certificate) string { return strings.ToLower(c.SerialNumber.Text(16)) }

// revoked checks every certificate of chain below the root against the
// deny-list and the CRLs signed by its issuer.
func revoked(cfg *provision.X509Config, chain []*x509.Certificate, issuers []*x509.Certificate, now time.Time) (bool, string) {
	deny := map[string]bool{}
	for _, s := range cfg.RevokedSerials {
		deny[strings.TrimLeft(strings.ToLower(s), "0")] = true
	}
	var crls []*x509.RevocationList
	for _, der := range cfg.CRLs {
		if l, err := x509.ParseRevocationList(der); err == nil {
			crls = append(crls, l)
		}
	}
	for i, c := range chain[:len(chain)-1] {
		if deny[strings.TrimLeft(serialHex(c), "0")] {
			return true, "serial " + serialHex(c) + " is on the group's deny-list"
		}
		issuer := chain[i+1]
		for _, l := range crls {
			if l.CheckSignatureFrom(issuer) != nil {
				continue
			}
			for _, e := range l.RevokedCertificateEntries {
				if e.SerialNumber.Cmp(c.SerialNumber) == 0 && !e.RevocationTime.After(now) {
					return true, "serial " + serialHex(c) + " is revoked by a CRL of " + issuer.Subject.CommonName
				}
			}
		}
	}
	return false, ""
}

// Device-ID rule sources.
const (
	FromCN     = "cn"
	FromSerial = "serial"
	FromDNS    = "dns"
	FromURI    = "uri"
)

// DeviceID extracts the device ID from c by rule and validates it with
// wire.ValidateDeviceID.
func DeviceID(c *x509.Certificate, rule provision.IDRule) (string, error) {
	var v string
	switch rule.From {
	case FromCN, "":
		v = c.Subject.CommonName
	case FromSerial:
		v = serialHex(c)
	case FromDNS:
		if len(c.DNSNames) == 0 {
			return "", errors.New("certificate has no DNS name")
		}
		v = c.DNSNames[0]
	case FromURI:
		if len(c.URIs) == 0 {
			return "", errors.New("certificate has no URI")
		}
		v = c.URIs[0].String()
	default:
		return "", errors.New("unknown device ID rule " + rule.From)
	}
	return applyRule(v, rule)
}

// applyRule strips the rule's prefix and validates the result. It is split
// out for fuzzing.
func applyRule(v string, rule provision.IDRule) (string, error) {
	if rule.StripPrefix != "" {
		rest, ok := strings.CutPrefix(v, rule.StripPrefix)
		if !ok {
			return "", errors.New("value lacks the rule's prefix")
		}
		v = rest
	}
	if err := wire.ValidateDeviceID(v); err != nil {
		return "", err
	}
	return v, nil
}

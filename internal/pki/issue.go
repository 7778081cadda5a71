package pki

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/wardiot/ward/wire"
)

// Profile names an issuance profile.
type Profile string

// Issuance profiles.
const (
	// ProfileDevice: a device's operational identity for MQTT over mTLS.
	// clientAuth, URI SAN urn:ward:<tenant>:device:<id>, CN = device ID.
	ProfileDevice Profile = "device"
	// ProfileServer: a TLS server certificate (serverAuth) for DNS names
	// and IP addresses the caller has authorised.
	ProfileServer Profile = "server"
	// ProfileShortLived: like device, but valid for hours, for devices
	// that renew often instead of relying on revocation.
	ProfileShortLived Profile = "short-lived"
	// profileOCSP marks delegated OCSP responder certificates in the store.
	profileOCSP Profile = "ocsp-responder"
)

// ParseProfile parses a profile name.
func ParseProfile(s string) (Profile, error) {
	switch p := Profile(s); p {
	case ProfileDevice, ProfileServer, ProfileShortLived:
		return p, nil
	}
	return "", fmt.Errorf("%w: unknown profile %q (use device, server or short-lived)", ErrBadRequest, truncate(s))
}

// Intake limits for CSRs, which arrive from devices that have not yet been
// issued anything and so must be treated as hostile.
const (
	// MaxCSRSize bounds the DER we parse: an RSA-8192 CSR with a few SANs
	// is under 2 KiB, so 16 KiB leaves room without letting a client make
	// us parse megabytes.
	MaxCSRSize = 16 << 10
	// MaxCSRExtensions bounds the requested extensions we look at.
	MaxCSRExtensions = 8
	// MaxSANs bounds the names a server certificate may carry.
	MaxSANs = 16
	// maxSerialAttempts bounds retries on a serial collision; with 127
	// random bits a second collision means the store is broken.
	maxSerialAttempts = 4
)

// Errors returned by issuance.
var (
	// ErrBadCSR is wrapped by every error about the CSR itself (malformed,
	// bad signature, too large, disallowed key or extension).
	ErrBadCSR = errors.New("pki: bad CSR")
	// ErrWrongTenant reports a CSR or request naming a device of another
	// tenant than the one the request is authorised for.
	ErrWrongTenant = errors.New("pki: request names another tenant")
	// ErrBadRequest is wrapped by errors about the issuance request
	// (unknown profile, invalid device ID, validity too long).
	ErrBadRequest = errors.New("pki: bad issuance request")
)

// CSR extensions we accept. Their requested values are ignored (the
// profile decides usages and constraints); SANs are checked against the
// request.
var allowedCSRExtensions = []asn1.ObjectIdentifier{
	{2, 5, 29, 14}, // subjectKeyIdentifier
	{2, 5, 29, 15}, // keyUsage
	{2, 5, 29, 17}, // subjectAltName
	{2, 5, 29, 19}, // basicConstraints
	{2, 5, 29, 37}, // extKeyUsage
}

// ParseCSR parses and checks a DER CSR from an untrusted client: size
// limit, signature (proof of possession), key policy and an extension
// allowlist. Every error wraps ErrBadCSR.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes is larger than the %d byte limit", ErrBadCSR, len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := checkSubjectKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify (the CSR must be signed by the key it certifies): %v", ErrBadCSR, err)
	}
	if err := checkCSRPolicy(csr); err != nil {
		return nil, err
	}
	return csr, nil
}

// checkCSRPolicy checks what ParseCSR checks besides size and signature.
func checkCSRPolicy(csr *x509.CertificateRequest) error {
	if err := checkSubjectKey(csr.PublicKey); err != nil {
		return fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if len(csr.Extensions) > MaxCSRExtensions {
		return fmt.Errorf("%w: %d extensions (at most %d)", ErrBadCSR, len(csr.Extensions), MaxCSRExtensions)
	}
	for _, e := range csr.Extensions {
		if !slices.ContainsFunc(allowedCSRExtensions, e.Id.Equal) {
			return fmt.Errorf("%w: extension %s is not allowed", ErrBadCSR, e.Id)
		}
	}
	if len(csr.EmailAddresses) > 0 {
		return fmt.Errorf("%w: email SANs are not allowed", ErrBadCSR)
	}
	return nil
}

// CheckedCSR is a CSR that passed [ParseCSR]: only this package makes one,
// so a caller that checked a CSR early (before spending a one-time token,
// say) can hand it to [Authority.Issue] without paying for a second
// signature verification.
type CheckedCSR struct{ csr *x509.CertificateRequest }

// CheckCSR is [ParseCSR] returning a [CheckedCSR].
func CheckCSR(der []byte) (*CheckedCSR, error) {
	csr, err := ParseCSR(der)
	if err != nil {
		return nil, err
	}
	return &CheckedCSR{csr: csr}, nil
}

// CheckParsedCSR applies ParseCSR's policy checks to a CSR whose
// signature the caller has already verified (the EST handler does, as
// proof of possession), sparing a second verification.
func CheckParsedCSR(csr *x509.CertificateRequest) (*CheckedCSR, error) {
	if len(csr.Raw) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes is larger than the %d byte limit", ErrBadCSR, len(csr.Raw), MaxCSRSize)
	}
	if err := checkCSRPolicy(csr); err != nil {
		return nil, err
	}
	return &CheckedCSR{csr: csr}, nil
}

// Request returns the parsed request.
func (c *CheckedCSR) Request() *x509.CertificateRequest { return c.csr }

// IssueRequest asks for a certificate. The caller (EST, the API) has
// authenticated the requester and decided Tenant and Device; the CSR may
// only repeat them.
type IssueRequest struct {
	Tenant  string
	Profile Profile
	// Device is the device ID, required for the device and short-lived
	// profiles.
	Device string
	// CSR is the DER certificate request.
	CSR []byte
	// Checked, if set, is used instead of CSR.
	Checked *CheckedCSR
	// Validity, if set, shortens the profile's configured validity.
	Validity time.Duration
	// DNSNames and IPAddresses are the names the caller authorised for a
	// server certificate; the CSR may request a subset of them.
	DNSNames    []string
	IPAddresses []net.IP
}

// Issued is an issued certificate.
type Issued struct {
	Cert *x509.Certificate
	// Chain is the issuing CA certificate followed by the root.
	Chain  []*x509.Certificate
	Record CertRecord
}

// Issue checks req and its CSR, signs a certificate with the tenant's
// active issuing CA, records it in the store and audits it, in that order,
// before returning it. A rejected request leaves no record.
func (a *Authority) Issue(ctx context.Context, req IssueRequest) (Issued, error) {
	if err := wire.ValidateTenantID(req.Tenant); err != nil {
		return Issued{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	var csr *x509.CertificateRequest
	if req.Checked != nil {
		csr = req.Checked.csr
	} else {
		var err error
		if csr, err = ParseCSR(req.CSR); err != nil {
			return Issued{}, err
		}
	}
	st, err := a.tenantCA(req.Tenant, KindIssuing)
	if err != nil {
		return Issued{}, err
	}
	now := a.cfg.Now()
	tmpl := &x509.Certificate{
		NotBefore:             now.Add(-backdate),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		CRLDistributionPoints: []string{a.CRLURL(st.rec.ID)},
		OCSPServer:            []string{a.OCSPURL(st.rec.ID)},
	}
	if a.cfg.IssuerURLs {
		tmpl.IssuingCertificateURL = []string{a.cfg.BaseURL + "/ca/" + st.rec.ID + ".crt"}
	}
	var validity time.Duration
	switch req.Profile {
	case ProfileDevice, ProfileShortLived:
		if err := checkDeviceCSR(csr, req.Tenant, req.Device); err != nil {
			return Issued{}, err
		}
		validity = a.cfg.DeviceValidity
		if req.Profile == ProfileShortLived {
			validity = a.cfg.ShortLivedValidity
		}
		tmpl.Subject = pkix.Name{CommonName: req.Device, Organization: []string{req.Tenant}}
		tmpl.URIs = []*url.URL{{Scheme: "urn", Opaque: strings.TrimPrefix(wire.DeviceURI(req.Tenant, req.Device), "urn:")}}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case ProfileServer:
		if req.Device != "" {
			return Issued{}, fmt.Errorf("%w: the server profile does not take a device", ErrBadRequest)
		}
		if err := checkServerCSR(csr, req.DNSNames, req.IPAddresses); err != nil {
			return Issued{}, err
		}
		validity = a.cfg.ServerValidity
		cn := ""
		if len(req.DNSNames) > 0 {
			cn = req.DNSNames[0]
		}
		tmpl.Subject = pkix.Name{CommonName: cn, Organization: []string{req.Tenant}}
		tmpl.DNSNames = req.DNSNames
		tmpl.IPAddresses = req.IPAddresses
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
			tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment // TLS 1.2 RSA key exchange
		}
	default:
		_, err := ParseProfile(string(req.Profile))
		return Issued{}, err
	}
	if req.Validity < 0 || req.Validity > validity {
		return Issued{}, fmt.Errorf("%w: validity %s exceeds the %s profile's %s", ErrBadRequest, req.Validity, req.Profile, validity)
	}
	if req.Validity > 0 {
		validity = req.Validity
	}
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(st.cert.NotAfter) {
		tmpl.NotAfter = st.cert.NotAfter // never outlive the issuer
	}
	rec := CertRecord{Tenant: req.Tenant, Device: req.Device, CAID: st.rec.ID, Profile: string(req.Profile)}
	cert, rec, err := a.issueCert(ctx, st, tmpl, csr.PublicKey, rec)
	if err != nil {
		return Issued{}, err
	}
	chain := []*x509.Certificate{st.cert}
	if root, ok := a.ca(st.rec.ParentID); ok {
		chain = append(chain, root.cert)
	}
	return Issued{Cert: cert, Chain: chain, Record: rec}, nil
}

// issueCert signs tmpl with a fresh random serial, records the certificate
// (retrying on a serial conflict) and audits it.
func (a *Authority) issueCert(ctx context.Context, st *caState, tmpl *x509.Certificate, pub crypto.PublicKey, rec CertRecord) (*x509.Certificate, CertRecord, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, rec, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	sum := sha256.Sum256(spki)
	signer := a.signerOf(st)
	if signer == nil {
		return nil, rec, fmt.Errorf("%w: CA %s key is offline", ErrNoCA, st.rec.ID)
	}
	for attempt := 0; ; attempt++ {
		serial, err := randomSerial()
		if err != nil {
			return nil, rec, err
		}
		tmpl.SerialNumber = serial
		der, err := x509.CreateCertificate(rand.Reader, tmpl, st.cert, pub, signer)
		if err != nil {
			return nil, rec, fmt.Errorf("pki: sign certificate: %w", err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, rec, fmt.Errorf("pki: parse issued certificate: %w", err)
		}
		rec.Serial = SerialString(serial)
		rec.SPKISHA256 = sum[:]
		rec.NotBefore = cert.NotBefore
		rec.NotAfter = cert.NotAfter
		rec.Status = CertGood
		rec.CertDER = der
		ev := Event{Action: "cert.issue", Tenant: rec.Tenant, CAID: rec.CAID, Serial: rec.Serial, Device: rec.Device, Profile: rec.Profile}
		as, atomic := a.store.(AuditingStore)
		if atomic {
			err = as.RecordCertAudited(ctx, rec, ev)
		} else {
			err = a.store.RecordCert(ctx, rec)
		}
		if errors.Is(err, ErrConflict) && attempt+1 < maxSerialAttempts {
			continue
		}
		if err != nil {
			return nil, rec, fmt.Errorf("pki: record certificate: %w", err)
		}
		if !atomic {
			if err := a.audit(ctx, ev); err != nil {
				return nil, rec, err
			}
		}
		return cert, rec, nil
	}
}

// randomSerial returns a positive serial of 16 random bytes with the top
// bit cleared: 127 bits of entropy (RFC 5280 asks for at least 64, CA/B
// Forum rules for 64 unpredictable bits), and at most 16 DER octets.
func randomSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		b[0] &= 0x7f
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// checkDeviceCSR makes sure a device CSR names no one but the device:
// CN, if any, equal to the device ID; at most the device's own URI SAN; no
// DNS or IP SANs.
func checkDeviceCSR(csr *x509.CertificateRequest, tenant, device string) error {
	if err := wire.ValidateDeviceID(device); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 {
		return fmt.Errorf("%w: a device CSR may not request DNS or IP SANs", ErrBadCSR)
	}
	if len(csr.URIs) > 1 {
		return fmt.Errorf("%w: a device CSR may request only its own device URI", ErrBadCSR)
	}
	for _, u := range csr.URIs {
		t, d, err := wire.ParseDeviceURI(u.String())
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadCSR, err)
		}
		if t != tenant {
			return fmt.Errorf("%w: the CSR names a device of tenant %q, the request is for tenant %q", ErrWrongTenant, t, tenant)
		}
		if d != device {
			return fmt.Errorf("%w: the CSR names device %q, the request is for device %q", ErrBadCSR, d, device)
		}
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != device {
		if t, _, err := wire.ParseDeviceURI(cn); err == nil && t != tenant {
			return fmt.Errorf("%w: the CSR names a device of tenant %q", ErrWrongTenant, t)
		}
		return fmt.Errorf("%w: CSR common name %q is not the device ID %q", ErrBadCSR, truncate(cn), device)
	}
	return nil
}

// checkServerCSR makes sure a server CSR asks for no name the caller did
// not authorise.
func checkServerCSR(csr *x509.CertificateRequest, dns []string, ips []net.IP) error {
	if len(dns)+len(ips) == 0 {
		return fmt.Errorf("%w: a server certificate needs at least one DNS name or IP address", ErrBadRequest)
	}
	if len(dns)+len(ips) > MaxSANs {
		return fmt.Errorf("%w: at most %d SANs", ErrBadRequest, MaxSANs)
	}
	for _, d := range dns {
		if !validDNSName(d) {
			return fmt.Errorf("%w: %q is not a valid DNS name (no wildcards)", ErrBadRequest, truncate(d))
		}
	}
	if len(csr.URIs) > 0 {
		return fmt.Errorf("%w: a server CSR may not request URI SANs", ErrBadCSR)
	}
	for _, d := range csr.DNSNames {
		if !slices.Contains(dns, strings.ToLower(d)) {
			return fmt.Errorf("%w: DNS name %q is not authorised for this request", ErrBadCSR, truncate(d))
		}
	}
	for _, ip := range csr.IPAddresses {
		if !slices.ContainsFunc(ips, ip.Equal) {
			return fmt.Errorf("%w: IP address %s is not authorised for this request", ErrBadCSR, ip)
		}
	}
	if cn := csr.Subject.CommonName; cn != "" && !slices.Contains(dns, strings.ToLower(cn)) {
		return fmt.Errorf("%w: CSR common name %q is not an authorised DNS name", ErrBadCSR, truncate(cn))
	}
	return nil
}

// validDNSName accepts lower-case LDH host names of at most 253 octets.
func validDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// caTemplate is the template of a CA certificate.
func caTemplate(tenant, what string, now time.Time, validity time.Duration, pathLen int) *x509.Certificate {
	serial, err := randomSerial()
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Ward " + tenant + " " + what, Organization: []string{"Ward"}, OrganizationalUnit: []string{tenant}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
	}
}

// CRLURL is the CRL distribution point of a CA.
func (a *Authority) CRLURL(caID string) string { return a.cfg.BaseURL + "/crl/" + caID + ".crl" }

// OCSPURL is the OCSP responder URL of a CA.
func (a *Authority) OCSPURL(caID string) string { return a.cfg.BaseURL + "/ocsp/" + caID }

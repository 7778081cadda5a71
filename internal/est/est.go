// Package est serves Enrollment over Secure Transport (RFC 7030): the
// cacerts, simpleenroll, simplereenroll, csrattrs and (optionally)
// serverkeygen operations under /.well-known/est/<label>/.
//
// The package speaks the protocol and nothing more. It checks what the wire
// format and RFC 7030 require (methods, media types, body limits, base64,
// that a CSR is well formed and self-signed, that a re-enrollment keeps the
// identity of the certificate being renewed) and leaves every decision about
// who may have a certificate to a [CA], which the server builds on top of
// internal/pki and the enrollment groups.
//
// # TLS and client certificates
//
// Serve the handler over TLS with a config passed through [ConfigureTLS]:
// the server asks for a client certificate but neither requires nor verifies
// one, because a bootstrap certificate from a device maker and an
// operational certificate from a tenant CA chain to different roots, and
// which roots apply depends on the label. The TLS layer has then proved only
// that the client holds the private key of PeerCertificates[0]. The CA must
// verify the chain itself, see [CA].
package est

import (
	"context"
	"crypto/x509"
)

// MaxRequestBodySize bounds a request body (a base64 PKCS#10 CSR). A P-256
// CSR is about 600 bytes in base64 and an RSA-4096 CSR with many SANs a few
// KiB; 32 KiB leaves ample room while keeping an unauthenticated client from
// making the server buffer and parse megabytes.
const MaxRequestBodySize = 32 << 10

// Credentials is what the client presented. Nothing in it has been verified
// by this package: the CA must check it (see [CA]). It is never logged.
type Credentials struct {
	// BearerToken is the token from "Authorization: Bearer <token>".
	BearerToken string
	// BasicUser and BasicPassword come from HTTP Basic authentication.
	BasicUser, BasicPassword string
	// PeerCertificates is the client's TLS certificate chain as sent, leaf
	// first. The TLS layer proved possession of the leaf's key but did not
	// verify the chain, its validity period, key usage or revocation.
	PeerCertificates []*x509.Certificate
}

// empty reports whether no credential at all was presented.
func (c *Credentials) empty() bool {
	return c.BearerToken == "" && c.BasicUser == "" && c.BasicPassword == "" && len(c.PeerCertificates) == 0
}

// Request is an enrollment request that passed the protocol checks.
type Request struct {
	// Label is the EST label from the path, valid per wire.ValidateESTLabel.
	Label string
	// CSR is parsed and its signature verified (proof of possession of the
	// key it names). Nothing else in it has been checked: the CA decides
	// which subject, SANs and extensions to put in the certificate.
	CSR *x509.CertificateRequest
	// Creds is what the client presented.
	Creds Credentials
	// RemoteAddr is the client's address as seen by net/http, for audit.
	RemoteAddr string
}

// CA decides and issues. The server implements it on internal/pki and the
// enrollment groups. Return an [*Error] (or one wrapped with %w) to choose
// the HTTP status and the message the client sees; any other error becomes
// "500 internal error" and its text is given only to the Observer.
type CA interface {
	// CACerts returns the CA certificates for label (RFC 7030 §4.1): the
	// issuing CA first, then intermediates, then the root. It must return
	// ErrNotFound for an unknown label. It is served without
	// authentication.
	CACerts(ctx context.Context, label string) ([]*x509.Certificate, error)

	// Enroll handles simpleenroll (RFC 7030 §4.2.1). At least one
	// credential is present in r.Creds (the handler answers 401 when there
	// is none), but none has been verified. Enroll must authenticate the
	// client from r.Creds: compare tokens and passwords in constant time
	// and consume one-time ones atomically; for a bootstrap certificate,
	// verify r.Creds.PeerCertificates against the trust anchors of the
	// label's enrollment group with the injected clock and the
	// client-auth key usage. It must build the certificate's identity from
	// what the credential proves, not from what the CSR claims. It returns
	// the issued certificate first; only that certificate is sent (RFC
	// 7030 §4.2.3), and it must certify r.CSR's public key.
	Enroll(ctx context.Context, r *Request) ([]*x509.Certificate, error)

	// Reenroll handles simplereenroll (RFC 7030 §4.2.2). The handler has
	// checked that r.Creds.PeerCertificates is not empty and that the
	// CSR's subject and subjectAltName equal those of its leaf, the
	// certificate being renewed. Reenroll must still verify that leaf:
	// chain to the label's issuing CA, validity at the injected clock,
	// client-auth usage, not revoked, device not disabled or quarantined.
	// The returned certificates are treated as for Enroll.
	Reenroll(ctx context.Context, r *Request) ([]*x509.Certificate, error)

	// CSRAttrs returns the DER CsrAttrs (RFC 7030 §4.5.2) for label, or
	// nothing for "204 No Content". It must return ErrNotFound for an
	// unknown label.
	CSRAttrs(ctx context.Context, label string) ([]byte, error)
}

// ServerKeyGenerator is the optional serverkeygen operation (RFC 7030
// §4.4). The handler serves it only when the CA implements it and the
// handler was built with [WithServerKeyGen]: a key made on the server has
// existed outside the device, which Ward avoids unless a group asks for it.
type ServerKeyGenerator interface {
	// ServerKeyGen authenticates r exactly as Enroll does, makes a key
	// pair, and returns the issued certificate first and the private key
	// as unencrypted PKCS#8 DER, sent over the TLS connection only. The
	// handler zeroes the key slice after writing it. The public key of
	// r.CSR is ignored (the client signed it with a throwaway key).
	ServerKeyGen(ctx context.Context, r *Request) (certs []*x509.Certificate, pkcs8Key []byte, err error)
}

// Event describes one handled request, for audit and metrics.
type Event struct {
	Op         string // "cacerts", "simpleenroll", ... or "" for an unknown path
	Label      string // empty when the path has none or it is invalid
	RemoteAddr string
	Status     int
	// Err is the reason for a failure: the CA's error or a protocol
	// error. It never holds credentials.
	Err error
	// Decided is set when the CA decided the request (Enroll, Reenroll or
	// ServerKeyGen was called); a failure without it was refused by the
	// protocol checks (malformed or unsigned CSR, size, media type, ...),
	// which the CA never saw and so could not audit.
	Decided bool
}

// Observer receives an Event after each request. It runs on the request's
// goroutine, so it must be quick.
type Observer func(Event)

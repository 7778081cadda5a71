package pki

import (
	"context"
	"errors"
	"time"
)

// Errors a [Store] must return (wrapped or bare) so that the authority can
// tell the cases apart.
var (
	// ErrConflict reports that a record with the same key already exists.
	ErrConflict = errors.New("pki: record already exists")
	// ErrNotFound reports that no record has the requested key.
	ErrNotFound = errors.New("pki: record not found")
)

// CAKind tells a root CA from an issuing CA.
type CAKind string

// CA kinds.
const (
	KindRoot    CAKind = "root"
	KindIssuing CAKind = "issuing"
)

// CAStatus is the life-cycle state of a CA.
type CAStatus string

// CA states.
const (
	// CAActive: the key is online; an active issuing CA signs new certificates.
	CAActive CAStatus = "active"
	// CAOffline: a root whose key was exported and removed from the server.
	CAOffline CAStatus = "offline"
	// CARetired: an issuing CA replaced by a newer one. It signs no new
	// certificates but keeps publishing CRLs and answering OCSP for the
	// certificates it issued.
	CARetired CAStatus = "retired"
)

// CA is the stored record of a certificate authority.
type CA struct {
	ID       string   // random, [0-9a-f]; appears in CRL and OCSP URLs
	Tenant   string   // owning tenant
	Kind     CAKind   // root or issuing
	ParentID string   // ID of the signing root; empty for a root
	CertDER  []byte   // the CA certificate
	KeyRef   []byte   // opaque KeyManager reference; nil when offline
	Status   CAStatus // active, offline or retired
	Created  time.Time
}

// CertStatus is the revocation state of an issued certificate.
type CertStatus string

// Certificate states.
const (
	CertGood    CertStatus = "good"
	CertRevoked CertStatus = "revoked"
)

// CertRecord is the stored record of an issued certificate.
type CertRecord struct {
	Serial     string // lower-case hex without leading zeros, see [SerialString]
	Tenant     string
	Device     string // device ID; empty for server and OCSP responder certificates
	CAID       string // issuing CA
	Profile    string // issuance profile name
	SPKISHA256 []byte // SHA-256 of the SubjectPublicKeyInfo DER (32 bytes)
	NotBefore  time.Time
	NotAfter   time.Time
	Status     CertStatus
	RevokedAt  time.Time // zero unless revoked
	Reason     Reason    // meaningful only when revoked
	CertDER    []byte
}

// Revoked is one revoked certificate as needed for CRLs and the
// [RevocationSet].
type Revoked struct {
	Serial    string
	CAID      string
	Tenant    string
	Device    string
	NotAfter  time.Time
	RevokedAt time.Time
	Reason    Reason
}

// CertFilter selects certificates in [Store.ListCerts]. Zero fields match
// everything.
type CertFilter struct {
	Tenant string
	Device string
	CAID   string
	Status CertStatus
	// Limit caps the number of records returned; 0 means no cap. Results
	// are ordered by NotBefore then Serial, ascending.
	Limit int
}

// Store is what the authority needs from the database. Implementations must
// be safe for concurrent use. Times are stored with at least second
// precision and returned in UTC. Byte slices handed to the store may be
// retained; byte slices returned are owned by the caller.
type Store interface {
	// PutCA inserts a new CA record. It returns ErrConflict if a CA with
	// the same ID exists.
	PutCA(ctx context.Context, ca CA) error
	// UpdateCA replaces the KeyRef and Status of the CA with ca.ID (the
	// other fields are immutable). It returns ErrNotFound if there is none.
	UpdateCA(ctx context.Context, ca CA) error
	// ListCAs returns the CAs of tenant ("" for all tenants), ordered by
	// Created then ID, ascending.
	ListCAs(ctx context.Context, tenant string) ([]CA, error)

	// RecordCert inserts an issued certificate. It returns ErrConflict if
	// a certificate with the same Serial exists (serials are unique across
	// all CAs). The insert must be durable when RecordCert returns: the
	// certificate is handed out afterwards.
	RecordCert(ctx context.Context, rec CertRecord) error
	// GetCert returns the certificate with serial, or ErrNotFound.
	GetCert(ctx context.Context, serial string) (CertRecord, error)
	// ListCerts returns the certificates matching f.
	ListCerts(ctx context.Context, f CertFilter) ([]CertRecord, error)
	// RevokeCert marks the certificate with serial as revoked at the given
	// time for reason, and returns the updated record. It returns
	// ErrNotFound if there is no such certificate and ErrAlreadyRevoked
	// (with the stored record) if it is already revoked; the first
	// revocation's time and reason are kept.
	RevokeCert(ctx context.Context, serial string, reason Reason, at time.Time) (CertRecord, error)
	// ForEachRevoked calls fn for every revoked certificate of the CA
	// caID ("" for all CAs), in any order, without loading them all into
	// memory at once (a CA may have millions). It stops and returns fn's
	// error if fn fails.
	ForEachRevoked(ctx context.Context, caID string, fn func(Revoked) error) error
	// NextCRLNumber atomically increments and returns the CRL number of
	// caID, starting at 1. It never returns the same number twice for a
	// CA, even across restarts or server nodes.
	NextCRLNumber(ctx context.Context, caID string) (int64, error)
}

// ErrAlreadyRevoked is returned by [Store.RevokeCert] and
// [Authority.Revoke] for a certificate that is already revoked.
var ErrAlreadyRevoked = errors.New("pki: certificate is already revoked")

// AuditingStore is implemented by stores that can record a certificate and
// its audit entry in one transaction. The authority then uses it instead
// of RecordCert followed by the Auditor: one commit instead of two, and no
// window in which a certificate exists without its audit entry. It returns
// ErrConflict like RecordCert.
type AuditingStore interface {
	RecordCertAudited(ctx context.Context, rec CertRecord, ev Event) error
}

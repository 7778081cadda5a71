// Package store defines Ward's persistence contract: the records every
// server part keeps, and the narrow interfaces through which they are read
// and written. Implementations live in sqlstore (shared SQL), with the
// embedded default in sqlite/ and the scale-out database in postgres/;
// storetest holds the one conformance suite both must pass.
//
// Writes happen inside [Store.InTx] so that a mutation and the audit entry
// that records it commit together or not at all.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Implementations wrap them so callers can use errors.Is.
var (
	// ErrNotFound means the record does not exist (or is not visible).
	ErrNotFound = errors.New("not found")
	// ErrConflict means a record with the same unique key already exists,
	// or a conditional update found the record in another state.
	ErrConflict = errors.New("conflict")
)

// Tenant is an isolated customer of a Ward installation.
type Tenant struct {
	ID        string
	Name      string
	CreatedAt time.Time
	// WrappedKey is the tenant's data key wrapped by the server's
	// key-encryption key. Deleting the tenant deletes it (crypto-shredding).
	WrappedKey []byte
}

// Token kinds.
const (
	TokenAPI    = "api"    // operator API token
	TokenEnroll = "enroll" // one-time device enrollment token
)

// Token is an API or enrollment credential. Only a hash of the secret part
// is ever stored.
type Token struct {
	ID        string // public identifier, part of the token string
	Hash      []byte // SHA-256 of the secret part
	Kind      string // TokenAPI or TokenEnroll
	Tenant    string // "" for global tokens
	Role      string // for API tokens
	Device    string // for enrollment tokens: the only device ID it enrolls
	Name      string
	CreatedBy string
	CreatedAt time.Time
	ExpiresAt time.Time // zero: never
	RevokedAt time.Time // zero: not revoked
	UsedAt    time.Time // zero: never used (enrollment tokens are single-use)
}

// AuditRecord is one entry of the hash-chained audit log. Seq starts at 1
// and has no gaps; Hash covers PrevHash and every other field (see package
// audit for the exact encoding).
type AuditRecord struct {
	Seq      int64
	Time     time.Time
	Actor    string
	Action   string
	Target   string
	Tenant   string
	Result   string
	Detail   string
	PrevHash []byte
	Hash     []byte
}

// AuditFilter selects audit records for listing. Zero fields match all.
type AuditFilter struct {
	Tenant   string
	AfterSeq int64
	Limit    int
}

// Reader is the read side shared by a Store and a Tx.
type Reader interface {
	PKIReader
	EventReader
	DeviceReader
	TelemetryReader
	TwinReader
	PolicyReader
	SecretReader
	GetTenant(ctx context.Context, id string) (*Tenant, error)
	ListTenants(ctx context.Context) ([]*Tenant, error)

	GetToken(ctx context.Context, id string) (*Token, error)
	// ListTokens lists tokens of one kind; tenant "" lists every tenant's
	// and the global ones.
	ListTokens(ctx context.Context, kind, tenant string) ([]*Token, error)

	ListAudit(ctx context.Context, f AuditFilter) ([]*AuditRecord, error)
	// ScanAudit calls fn for every audit record in Seq order, streaming, and
	// stops at the first error fn returns.
	ScanAudit(ctx context.Context, fn func(*AuditRecord) error) error
	// AuditHead returns the sequence number and hash of the last appended
	// record as recorded by the store (0 and nil for an empty log).
	AuditHead(ctx context.Context) (seq int64, hash []byte, err error)
}

// Tx is a read-write transaction. Every method fails once the transaction
// function has returned.
type Tx interface {
	Reader
	PKIWriter
	EventWriter
	DeviceWriter
	TelemetryWriter
	TwinWriter
	PolicyWriter
	SecretWriter

	// CreateTenant fails with ErrConflict if the ID exists.
	CreateTenant(ctx context.Context, t *Tenant) error
	// DeleteTenant deletes the tenant, its wrapped data key, its tokens,
	// CAs and certificate records.
	// ErrNotFound if it does not exist.
	DeleteTenant(ctx context.Context, id string) error

	// CreateToken fails with ErrConflict if the ID exists.
	CreateToken(ctx context.Context, t *Token) error
	// RevokeToken sets RevokedAt; ErrNotFound if absent, ErrConflict if
	// already revoked.
	RevokeToken(ctx context.Context, id string, at time.Time) error
	// UseToken sets UsedAt if, and only if, it is still unset; otherwise
	// ErrConflict. This is what makes enrollment tokens single-use even with
	// several server nodes racing.
	UseToken(ctx context.Context, id string, at time.Time) error

	// LockAuditHead returns the current head and holds a lock on it until
	// the transaction ends, so that appends are serialised across nodes.
	LockAuditHead(ctx context.Context) (seq int64, hash []byte, err error)
	// AppendAudit inserts r (whose Seq must be head+1) and moves the head.
	AppendAudit(ctx context.Context, r *AuditRecord) error
}

// Store is a handle on the database.
type Store interface {
	Reader
	// InTx runs fn in a read-write transaction, committing if fn returns nil.
	InTx(ctx context.Context, fn func(Tx) error) error
	// Dialect names the database engine: "sqlite" or "postgres".
	Dialect() string
	Ping(ctx context.Context) error
	Close() error
}

// Scrubber is implemented by stores that can purge residues of deleted
// rows from their files on demand (SQLite: checkpoint and truncate the WAL;
// secure_delete zeroes freed pages). Crypto-shredding calls it after
// deleting a tenant's wrapped data key. PostgreSQL keeps dead tuples until
// VACUUM; its operators rely on the KEK never being stored with the data.
type Scrubber interface {
	ScrubDeleted(ctx context.Context) error
}

// CA is a certificate authority record (see package pki for semantics).
type CA struct {
	ID       string
	Tenant   string
	Kind     string // "root" or "issuing"
	ParentID string
	CertDER  []byte
	KeyRef   []byte // opaque key-manager reference; nil when the key is offline
	Status   string // "active", "offline", "retired"
	Created  time.Time
}

// Cert is an issued certificate record.
type Cert struct {
	Serial     string // lower-case hex
	Tenant     string
	Device     string
	CAID       string
	Profile    string
	SPKISHA256 []byte
	NotBefore  time.Time
	NotAfter   time.Time
	Status     string // "good" or "revoked"
	RevokedAt  time.Time
	Reason     int
	CertDER    []byte
}

// CertFilter selects certificates; zero fields match all. Results are
// ordered by NotBefore then Serial.
type CertFilter struct {
	Tenant string
	Device string
	CAID   string
	Status string
	Limit  int
}

// PKIReader reads certificate authority state.
type PKIReader interface {
	ListCAs(ctx context.Context, tenant string) ([]*CA, error)
	GetCert(ctx context.Context, serial string) (*Cert, error)
	ListCerts(ctx context.Context, f CertFilter) ([]*Cert, error)
	// ForEachRevoked streams the revoked certificates of a CA ("" = all),
	// holding at most a page of them in memory.
	ForEachRevoked(ctx context.Context, caID string, fn func(*Cert) error) error
}

// PKIWriter changes certificate authority state.
type PKIWriter interface {
	// PutCA inserts a CA; ErrConflict if the ID exists.
	PutCA(ctx context.Context, ca *CA) error
	// UpdateCA replaces KeyRef and Status; ErrNotFound if absent.
	UpdateCA(ctx context.Context, ca *CA) error
	// RecordCert inserts an issued certificate; ErrConflict on a duplicate
	// serial.
	RecordCert(ctx context.Context, c *Cert) error
	// RevokeCert marks a good certificate revoked and returns the record;
	// ErrNotFound if absent; ErrConflict (with the stored record) if it
	// was already revoked, keeping the first revocation's time and reason.
	RevokeCert(ctx context.Context, serial string, reason int, at time.Time) (*Cert, error)
	// NextCRLNumber increments and returns a CA's CRL number (from 1).
	NextCRLNumber(ctx context.Context, caID string) (int64, error)
}

// Event is an aggregated security event.
type Event struct {
	ID       int64
	Tenant   string // "" for events with no tenant (unknown CA, say)
	Type     string // dotted, e.g. "tls.handshake_failed", "cert.shared"
	Severity string // "info", "low", "medium", "high"
	Device   string
	Remote   string // last remote address seen
	Reason   string
	Detail   string
	FirstAt  time.Time
	LastAt   time.Time
	Count    int64
}

// EventFilter selects events; zero fields match all. Newest first.
type EventFilter struct {
	Tenant    string
	AnyTenant bool // with Tenant "": all tenants (else only tenant-less events)
	Type      string
	Device    string
	Limit     int
}

// EventReader lists security events.
type EventReader interface {
	ListEvents(ctx context.Context, f EventFilter) ([]*Event, error)
}

// EventWriter records security events.
type EventWriter interface {
	// RecordEvent adds e.Count occurrences of e: if an event with the same
	// tenant, type, device and reason was last seen at or after
	// e.FirstAt - window, it is updated (count, last_at, remote, detail)
	// and created reports false; otherwise a new row is inserted.
	RecordEvent(ctx context.Context, e *Event, window time.Duration) (created bool, err error)
}

// Device states.
const (
	DeviceActive         = "active"
	DeviceDisabled       = "disabled"       // refused at connect and enrollment until enabled
	DeviceQuarantined    = "quarantined"    // confined to attestation and OTA topics
	DeviceDecommissioned = "decommissioned" // final
)

// Device is a registered device.
type Device struct {
	Tenant    string
	ID        string
	State     string
	Group     string
	Tags      map[string]string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// DeviceFilter selects devices of a tenant; zero fields match all.
type DeviceFilter struct {
	Tenant string
	State  string
	Group  string
	Limit  int
	After  string // keyset pagination: IDs after this one
}

// DeviceReader reads the device registry.
type DeviceReader interface {
	GetDevice(ctx context.Context, tenant, id string) (*Device, error)
	ListDevices(ctx context.Context, f DeviceFilter) ([]*Device, error)
	// ForEachDevice streams every device of every tenant (start-up cache).
	ForEachDevice(ctx context.Context, fn func(*Device) error) error
}

// DeviceWriter changes the device registry.
type DeviceWriter interface {
	// CreateDevice inserts d; ErrConflict if it exists.
	CreateDevice(ctx context.Context, d *Device) error
	// SetDeviceState changes a device's state; ErrNotFound if absent.
	SetDeviceState(ctx context.Context, tenant, id, state string, at time.Time) error
}

// Schema is a registered telemetry schema version.
type Schema struct {
	Tenant    string
	ID        string
	Version   uint32
	Doc       []byte
	CreatedAt time.Time
}

// Reading is one verified telemetry message kept in the recent window.
type Reading struct {
	Tenant, Device, Stream string
	Seq                    uint64
	Time, Received         time.Time
	SchemaID               string
	SchemaVersion          uint32
	Payload                []byte // JSON without confidential fields
	Sealed                 []byte // confidential fields, sealed; nil if none
}

// TelemetryReader reads schemas and the recent telemetry window.
type TelemetryReader interface {
	ListSchemas(ctx context.Context, tenant string) ([]*Schema, error)
	// ForEachSchema streams every schema of every tenant (start-up).
	ForEachSchema(ctx context.Context, fn func(*Schema) error) error
	// RecentReadings returns a device's newest readings, newest first.
	RecentReadings(ctx context.Context, tenant, device string, limit int) ([]*Reading, error)
}

// TelemetryWriter writes schemas and readings.
type TelemetryWriter interface {
	// PutSchema stores a schema version; ErrConflict if it exists.
	PutSchema(ctx context.Context, s *Schema) error
	// PutReadings stores verified readings; duplicates (same tenant,
	// device, seq) are ignored.
	PutReadings(ctx context.Context, rs []*Reading) error
	// PruneReadings deletes readings received before t.
	PruneReadings(ctx context.Context, before time.Time) (int64, error)
}

// TwinReader reads device twins, stored as opaque documents.
type TwinReader interface {
	// GetTwin returns the document and revision; ErrNotFound if absent.
	GetTwin(ctx context.Context, tenant, device, name string) (doc []byte, revision uint64, err error)
}

// TwinWriter writes device twins with compare-and-swap.
type TwinWriter interface {
	// PutTwin stores doc at revision expect+1 if the stored revision is
	// expect (0: none stored); otherwise ErrConflict.
	PutTwin(ctx context.Context, tenant, device, name string, doc []byte, expect uint64) error
}

// PolicyDoc is a named topic policy document of a tenant.
type PolicyDoc struct {
	Tenant    string
	Name      string
	Doc       []byte
	UpdatedAt time.Time
}

// PolicyAssignment binds a policy to a device or a group.
type PolicyAssignment struct {
	Tenant string
	Kind   string // "device" or "group"
	Target string
	Policy string
}

// PolicyReader reads topic policies and their assignments.
type PolicyReader interface {
	ListPolicies(ctx context.Context, tenant string) ([]*PolicyDoc, error)
	ListPolicyAssignments(ctx context.Context, tenant string) ([]*PolicyAssignment, error)
	// ForEachPolicy and ForEachPolicyAssignment stream every tenant's
	// (start-up cache).
	ForEachPolicy(ctx context.Context, fn func(*PolicyDoc) error) error
	ForEachPolicyAssignment(ctx context.Context, fn func(*PolicyAssignment) error) error
}

// PolicyWriter changes topic policies and their assignments.
type PolicyWriter interface {
	// PutPolicy creates or replaces a policy.
	PutPolicy(ctx context.Context, p *PolicyDoc) error
	// DeletePolicy deletes a policy and its assignments; ErrNotFound if absent.
	DeletePolicy(ctx context.Context, tenant, name string) error
	// AssignPolicy creates or replaces an assignment; Policy "" removes it.
	AssignPolicy(ctx context.Context, a *PolicyAssignment) error
}

// DeviceSecret is a device's telemetry MAC secret, sealed.
type DeviceSecret struct {
	Tenant, Device string
	Sealed         []byte // current secret
	PrevSealed     []byte // secret of Epoch-1 if it differs; nil otherwise
	Epoch          uint64
	Since          time.Time
}

// SecretReader reads device MAC secrets.
type SecretReader interface {
	// GetDeviceSecret returns ErrNotFound if the device has none.
	GetDeviceSecret(ctx context.Context, tenant, device string) (*DeviceSecret, error)
}

// SecretWriter writes device MAC secrets.
type SecretWriter interface {
	// PutDeviceSecret creates or replaces a device's secret record.
	PutDeviceSecret(ctx context.Context, s *DeviceSecret) error
}

package provision

import (
	"context"
	"errors"
	"time"
)

// Store errors. Implementations return them (wrapped or not) so callers
// can test with errors.Is.
var (
	// ErrNotFound: no such group, device, token or claim code.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the record exists, or a conditional update lost.
	ErrConflict = errors.New("conflict")
)

// Device states in the registry.
const (
	// StateProvisioned: enrolled through a group of its tenant.
	StateProvisioned = "provisioned"
	// StateClaimable: made for no tenant yet; waits in the maker's pool
	// tenant with a claim code.
	StateClaimable = "claimable"
	// StateClaimed: claimed by another tenant (Device.Owner); its next
	// enrollment with the bootstrap credential issues under the owner.
	StateClaimed = "claimed"
	// StateTransferred: the pool record of a claimed device after it
	// re-enrolled under its owner. It refuses further enrollments.
	StateTransferred = "transferred"
)

// Device is a registry record: one device ID in one tenant.
type Device struct {
	Tenant string
	ID     string
	// Group is the name of the group it enrolled through ("" if none).
	Group string
	State string
	// ProvisionedAt is the time of the last successful enrollment (zero
	// for a claimable device not yet enrolled).
	ProvisionedAt time.Time
	// Fingerprint identifies the bootstrap credential (Result.Fingerprint).
	Fingerprint string
	// AKPublic is the TPM attestation key registered at enrollment.
	AKPublic []byte
	// Owner is the tenant that claimed a StateClaimed device.
	Owner string
	// ClaimID, ClaimSalt and ClaimHash store a claim code: its public
	// lookup ID and SHA-256(salt || secret). The code itself is never
	// stored. Empty unless StateClaimable.
	ClaimID   string
	ClaimSalt []byte
	ClaimHash []byte
}

// GroupToken is a one-time enrollment token of a group. Only the hash of
// its secret is stored.
type GroupToken struct {
	ID        string // public lookup ID (16 hex characters)
	Tenant    string
	Group     string // group name
	Device    string // the device ID it may enroll
	Hash      []byte // SHA-256 of the secret part
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    time.Time // zero until redeemed
}

// Store is what provisioning needs from persistence. One conformance
// suite runs against every implementation (SQLite, PostgreSQL, and the
// in-memory provisiontest.Store). Every method is safe for concurrent use
// and atomic; single-use guarantees must hold across server nodes sharing
// one database, so the conditional methods (CreateDevice, ReplaceDevice,
// UseGroupToken, ConsumeNonce) must be a single conditional write, not a
// read followed by a write. Returned records are copies the caller may
// modify.
type Store interface {
	// PutGroup inserts g or replaces the group with the same (Tenant,
	// Name). g.ID must be set; replacing keeps the stored ID (and returns
	// ErrConflict if g.ID differs, so a group deleted and re-created
	// under the same name cannot open its predecessor's sealed secrets).
	PutGroup(ctx context.Context, g *Group) error
	// GetGroup returns the group (tenant, name) or ErrNotFound.
	GetGroup(ctx context.Context, tenant, name string) (*Group, error)
	// ListGroups returns the groups of tenant sorted by name, or of every
	// tenant sorted by (tenant, name) when tenant is "".
	ListGroups(ctx context.Context, tenant string) ([]*Group, error)
	// DeleteGroup deletes the group and its one-time tokens, or returns
	// ErrNotFound. Device records keep naming it.
	DeleteGroup(ctx context.Context, tenant, name string) error

	// GetDevice returns the record (tenant, id) or ErrNotFound.
	GetDevice(ctx context.Context, tenant, id string) (*Device, error)
	// CreateDevice inserts d, or returns ErrConflict if (d.Tenant, d.ID)
	// exists. Of two concurrent first enrollments exactly one succeeds.
	CreateDevice(ctx context.Context, d *Device) error
	// ReplaceDevice overwrites the record (d.Tenant, d.ID) if its stored
	// State equals prevState, else returns ErrConflict (ErrNotFound if
	// absent). Re-provisioning and claiming use it as compare-and-swap.
	ReplaceDevice(ctx context.Context, d *Device, prevState string) error
	// DeviceByClaimID returns the record whose ClaimID is claimID (any
	// tenant), or ErrNotFound. ClaimID is unique among records.
	DeviceByClaimID(ctx context.Context, claimID string) (*Device, error)

	// PutGroupToken inserts t, or ErrConflict if t.ID exists.
	PutGroupToken(ctx context.Context, t *GroupToken) error
	// GetGroupToken returns the token with that ID or ErrNotFound.
	GetGroupToken(ctx context.Context, id string) (*GroupToken, error)
	// UseGroupToken sets UsedAt = at if the token exists and UsedAt is
	// zero; ErrConflict if already used, ErrNotFound if absent.
	UseGroupToken(ctx context.Context, id string, at time.Time) error

	// ConsumeNonce records key as used until expires. It returns
	// ErrConflict if key is recorded with an expiry after now (a
	// replay); an expired record of key is replaced. Implementations may
	// delete records whose expiry is before now at any time. Keys are at
	// most 200 bytes.
	ConsumeNonce(ctx context.Context, key string, expires, now time.Time) error
}

package attest

import (
	"context"
	"crypto"
	"errors"
	"time"
)

// ErrNotFound is returned by Store lookups that find nothing.
var ErrNotFound = errors.New("not found")

// ErrTooManyChallenges is returned by Store.PutChallenge when the device
// already has the maximum of outstanding challenges.
var ErrTooManyChallenges = errors.New("too many outstanding attestation challenges for the device")

// Device is what the verifier needs to know about a device; the server
// reads it from its device registry.
type Device struct {
	Tenant string
	ID     string
	Group  string
	// HWModel and Release name the reference values to appraise against:
	// the release the device runs (per OTA), and PreviousRelease the one
	// approved before it, so a device that has not rebooted into, or has
	// rolled back from, a new release still passes.
	HWModel         string
	Release         string
	PreviousRelease string
	// PublicKey is the device's operational key (from its certificate),
	// which signs software-tier reports.
	PublicKey crypto.PublicKey
	// EK, when set, is the endorsement key registered at provisioning:
	// the AK must then be activated against this EK and no other.
	EK crypto.PublicKey
}

// Challenge is an outstanding attestation challenge.
type Challenge struct {
	Tenant, Device, ID string
	Nonce              []byte
	PCRs               []int
	Expires            time.Time
	// BoundSPKI is SHA-256 of the CSR SubjectPublicKeyInfo a renewal
	// challenge binds (the nonce is RenewalNonce(server nonce, SPKI)); nil
	// for scheduled attestations.
	BoundSPKI []byte
}

// Activation is a pending AK credential activation.
type Activation struct {
	Tenant, Device, ID string
	// SecretHash is SHA-256 of the activation secret; the secret itself
	// is never stored.
	SecretHash []byte
	AKPublic   []byte
	// EKKeyHash is SHA-256 of the EK SubjectPublicKeyInfo from the verified certificate.
	EKKeyHash []byte
	EKIssuer  string
	Expires   time.Time
}

// AKRecord is a device's enrolled attestation key.
type AKRecord struct {
	Tenant, Device string
	// Public is the AK's TPMT_PUBLIC as the TPM produced it.
	Public    []byte
	EKKeyHash []byte
	EKIssuer  string
	Enrolled  time.Time
}

// Counters are the TPM clock and counters of the last verified quote,
// kept to detect rolled-back or cloned TPM state.
type Counters struct {
	Clock        uint64
	ResetCount   uint32
	RestartCount uint32
	Safe         bool
}

// CountersAfter reports whether c is later than p in TPM time: a higher
// reset count, or the same reset count and a higher restart count, or the
// same counts and a higher clock. Store implementations use it in
// AdvanceCounters.
func CountersAfter(c, p Counters) bool {
	if c.ResetCount != p.ResetCount {
		return c.ResetCount > p.ResetCount
	}
	if c.RestartCount != p.RestartCount {
		return c.RestartCount > p.RestartCount
	}
	return c.Clock > p.Clock
}

// Result is the stored outcome of one verification: the last one per
// device is what scheduling, renewal gating and the dashboard read.
type Result struct {
	Tenant, Device string
	ChallengeID    string
	Verdict        Verdict
	// BoundSPKI is the challenge's BoundSPKI (renewal gating).
	BoundSPKI []byte
	Summary   EvidenceSummary
}

// EvidenceSummary is what is kept of the evidence: enough to explain a
// verdict without storing whole event logs.
type EvidenceSummary struct {
	AKHash   []byte // SHA-256 of the AK public
	PCRs     map[int][]byte
	Events   int
	Counters Counters
	TPMInfo  string // manufacturer and firmware, as the device reported
}

// Store persists attestation state. It is owned by this package; a SQL
// implementation maps it to tables keyed by (tenant, device):
//
//	attest_challenges(tenant, device, id, nonce, pcrs, expires, bound_spki)   PK(tenant, device, id)
//	attest_activations(tenant, device, id, secret_hash, ak_public, ek_key_hash, ek_issuer, expires)
//	attest_aks(tenant, device, public, ek_key_hash, ek_issuer, enrolled)      PK(tenant, device)
//	attest_refvalues(tenant, hw_model, release, doc, signature, imported)     PK(tenant, hw_model, release)
//	attest_results(tenant, device, challenge_id, verdict JSON, bound_spki, summary JSON)  last per device
//	attest_counters(tenant, device, clock, reset_count, restart_count, safe)
//	attest_policies(tenant, grp, policy JSON)                                 PK(tenant, grp); grp "" = tenant default
//
// Take* methods are single use: a row is returned at most once (DELETE
// ... RETURNING). All methods must be safe for concurrent use.
type Store interface {
	// PutChallenge stores c unless the device already has maxPending
	// challenges not expired at now (then ErrTooManyChallenges); expired
	// ones may be purged.
	PutChallenge(ctx context.Context, c Challenge, now time.Time, maxPending int) error
	// TakeChallenge removes and returns a challenge, or ErrNotFound.
	TakeChallenge(ctx context.Context, tenant, device, id string) (Challenge, error)

	PutActivation(ctx context.Context, a Activation) error
	// TakeActivation removes and returns a pending activation, or
	// ErrNotFound.
	TakeActivation(ctx context.Context, tenant, device, id string) (Activation, error)

	// PutAK registers or replaces the device's AK.
	PutAK(ctx context.Context, ak AKRecord) error
	// AK returns the device's AK or ErrNotFound.
	AK(ctx context.Context, tenant, device string) (AKRecord, error)

	// PutRefValues stores a release's reference values, replacing the
	// same (tenant, hw model, release).
	PutRefValues(ctx context.Context, r RefValues) error
	// RefValues returns reference values or ErrNotFound.
	RefValues(ctx context.Context, tenant, hwModel, release string) (RefValues, error)

	// PutResult replaces the device's last result.
	PutResult(ctx context.Context, r Result) error
	// LastResult returns the device's last result or ErrNotFound.
	LastResult(ctx context.Context, tenant, device string) (Result, error)

	// AdvanceCounters atomically reads the device's counters and stores
	// c if it is later (see Counters) or none were stored; it returns the
	// previous counters and whether there were any. Keeping the maximum
	// means a replayed or rolled-back TPM state can never lower them.
	AdvanceCounters(ctx context.Context, tenant, device string, c Counters) (prev Counters, found bool, err error)

	// Policy returns the group's policy, else the tenant's default
	// (group ""), else ErrNotFound.
	Policy(ctx context.Context, tenant, group string) (Policy, error)
}

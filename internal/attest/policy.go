package attest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/wire"
)

// Outcome is the result of a Verdict.
type Outcome string

// Outcomes.
const (
	// Pass: every check passed.
	Pass Outcome = wire.VerdictPass
	// Fail: a check failed; the policy decides on quarantine.
	Fail Outcome = wire.VerdictFail
	// Flag: verified, but something an operator should see (a power
	// loss). Not a failure: no quarantine.
	Flag Outcome = wire.VerdictFlag
)

// Assurance is the tier of evidence a Verdict rests on.
type Assurance string

// Assurance tiers.
const (
	// AssuranceTPM: a quote by the enrolled AK, the event log replayed.
	AssuranceTPM Assurance = wire.AssuranceTPM
	// AssuranceSoftware is low assurance: the device's own report of its
	// slot hashes, signed by its key. Never TPM-verified.
	AssuranceSoftware Assurance = wire.AssuranceSoftware
)

// Verdict is the appraisal of one piece of evidence.
type Verdict struct {
	Result    Outcome
	Reasons   []string
	Release   string // the release whose reference values matched
	Assurance Assurance
	// TPMVerified is true only when a quote by the enrolled AK verified.
	TPMVerified bool
	Time        time.Time
	// Quarantine is the policy's decision for this verdict; the gateway
	// applies it (confines the device to attestation and OTA topics).
	Quarantine bool
}

// Wire returns the verdict as sent to the device.
func (v Verdict) Wire(challengeID string) *wire.AttestVerdict {
	return &wire.AttestVerdict{
		ChallengeID: challengeID, Result: string(v.Result), Reasons: v.Reasons,
		Release: v.Release, Assurance: string(v.Assurance), Time: v.Time,
	}
}

// Policy is a tenant's or a group's attestation policy.
type Policy struct {
	// Interval between scheduled attestations.
	Interval time.Duration
	// ChallengeTTL is how long a device has to answer a challenge.
	ChallengeTTL time.Duration
	// QuarantineOnFailure makes a failed verdict quarantine the device.
	QuarantineOnFailure bool
	// RenewalRequiresPass makes certificate renewal require a passing
	// attestation, no older than RenewalMaxAge, whose nonce binds the
	// CSR's key.
	RenewalRequiresPass bool
	RenewalMaxAge       time.Duration
	// AllowSoftware accepts the low-assurance software tier from devices
	// without a TPM; devices with an enrolled AK are never allowed it.
	AllowSoftware bool
}

// DefaultPolicy applies when neither the group nor the tenant has one.
func DefaultPolicy() Policy {
	return Policy{
		Interval:            24 * time.Hour,
		ChallengeTTL:        2 * time.Minute,
		QuarantineOnFailure: true,
		RenewalRequiresPass: false,
		RenewalMaxAge:       10 * time.Minute,
		AllowSoftware:       true,
	}
}

func (v *Verifier) policy(ctx context.Context, dev Device) (Policy, error) {
	p, err := v.store.Policy(ctx, dev.Tenant, dev.Group)
	if errors.Is(err, ErrNotFound) {
		return DefaultPolicy(), nil
	}
	if err != nil {
		return Policy{}, fmt.Errorf("attestation policy: %w", err)
	}
	if p.ChallengeTTL <= 0 {
		p.ChallengeTTL = DefaultPolicy().ChallengeTTL
	}
	return p, nil
}

// Due reports whether the device should be challenged now: it has never
// attested, or its last result is older than the policy's interval.
func (v *Verifier) Due(ctx context.Context, dev Device) (bool, error) {
	p, err := v.policy(ctx, dev)
	if err != nil {
		return false, err
	}
	r, err := v.store.LastResult(ctx, dev.Tenant, dev.ID)
	if errors.Is(err, ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return !v.now().Before(r.Verdict.Time.Add(p.Interval)), nil
}

// ErrRenewalRefused is wrapped by RenewalAllowed's refusals.
var ErrRenewalRefused = errors.New("renewal refused: attest first")

// RenewalAllowed decides whether a device may renew with a CSR whose
// SubjectPublicKeyInfo is csrSPKI. When the policy requires it, the
// device's last result must be a pass (or a software-tier pass if the
// policy allows that tier) no older than RenewalMaxAge, from a challenge
// made by RenewalChallenge for this same key: the attested state is then
// bound to the new key. Any later attestation replaces the last result,
// so a device renews right after its renewal attestation.
func (v *Verifier) RenewalAllowed(ctx context.Context, dev Device, csrSPKI []byte, now time.Time) error {
	p, err := v.policy(ctx, dev)
	if err != nil {
		return err
	}
	if !p.RenewalRequiresPass {
		return nil
	}
	r, err := v.store.LastResult(ctx, dev.Tenant, dev.ID)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: no attestation on record", ErrRenewalRefused)
	}
	if err != nil {
		return err
	}
	if r.Verdict.Result != Pass {
		return fmt.Errorf("%w: last attestation result is %s", ErrRenewalRefused, r.Verdict.Result)
	}
	if r.Verdict.Assurance == AssuranceSoftware && !p.AllowSoftware {
		return fmt.Errorf("%w: software-tier attestation not allowed", ErrRenewalRefused)
	}
	if now.Sub(r.Verdict.Time) > p.RenewalMaxAge || now.Before(r.Verdict.Time) {
		return fmt.Errorf("%w: last pass is older than %v", ErrRenewalRefused, p.RenewalMaxAge)
	}
	h := sha256.Sum256(csrSPKI)
	if len(r.BoundSPKI) != sha256.Size || subtle.ConstantTimeCompare(r.BoundSPKI, h[:]) != 1 {
		return fmt.Errorf("%w: the last pass does not bind the CSR's key; request a renewal challenge for it", ErrRenewalRefused)
	}
	return nil
}

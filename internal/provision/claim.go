package provision

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/wire"
)

// Claim codes are printed on a device's label: 32 characters of base32
// (A-Z, 2-7) in groups of four, "ABCD-EFGH-...". The first 8 characters
// are a public lookup ID and the other 24 a 120-bit secret, stored only
// as SHA-256(salt || secret) with a per-record random salt. Dashes,
// spaces and case are ignored when a code is entered.
const (
	claimIDBytes     = 5  // 8 base32 characters
	claimSecretBytes = 15 // 24 base32 characters, 120 bits
	claimSaltBytes   = 16
	claimCodeChars   = 32
	// maxClaimCodeInput bounds what Claim normalises.
	maxClaimCodeInput = 128
)

var claimEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

func claimHash(salt []byte, secret string) []byte {
	h := sha256.New()
	h.Write([]byte("ward claim code v1\x00"))
	h.Write(salt)
	h.Write([]byte(secret))
	return h.Sum(nil)
}

// newClaimCode returns a printable code and its stored parts.
func newClaimCode() (code, id string, salt, hash []byte, err error) {
	raw := make([]byte, claimIDBytes+claimSecretBytes)
	salt = make([]byte, claimSaltBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", "", nil, nil, err
	}
	if _, err := rand.Read(salt); err != nil {
		return "", "", nil, nil, err
	}
	id = claimEncoding.EncodeToString(raw[:claimIDBytes])
	secret := claimEncoding.EncodeToString(raw[claimIDBytes:])
	all := id + secret
	var groups []string
	for i := 0; i < len(all); i += 4 {
		groups = append(groups, all[i:i+4])
	}
	return strings.Join(groups, "-"), id, salt, claimHash(salt, secret), nil
}

// parseClaimCode normalises an entered code into its ID and secret.
func parseClaimCode(code string) (id, secret string, ok bool) {
	if len(code) > maxClaimCodeInput {
		return "", "", false
	}
	norm := strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(code))
	if len(norm) != claimCodeChars {
		return "", "", false
	}
	if _, err := claimEncoding.DecodeString(norm); err != nil {
		return "", "", false
	}
	return norm[:8], norm[8:], true
}

// RegisterClaimable records a device made for no tenant yet in pool (the
// maker's pool tenant), enrolling later through group, and returns its
// claim code, to print on the device's label. The code is not stored and
// cannot be shown again.
func (p *Provisioner) RegisterClaimable(ctx context.Context, actor, pool, group, deviceID string) (string, error) {
	if err := wire.ValidateTenantID(pool); err != nil {
		return "", err
	}
	if err := wire.ValidateDeviceID(deviceID); err != nil {
		return "", err
	}
	code, id, salt, hash, err := newClaimCode()
	if err != nil {
		return "", err
	}
	d := &Device{Tenant: pool, ID: deviceID, Group: group, State: StateClaimable, ClaimID: id, ClaimSalt: salt, ClaimHash: hash}
	if err := p.cfg.Store.CreateDevice(ctx, d); err != nil {
		if errors.Is(err, ErrConflict) {
			return "", fmt.Errorf("device %q already exists in tenant %q: %w", deviceID, pool, ErrConflict)
		}
		return "", err
	}
	if err := p.cfg.Auditor.Audit(ctx, audit.Entry{Actor: actor, Action: "device.claimable", Target: "device:" + deviceID,
		Tenant: pool, Result: audit.ResultOK, Detail: "group=" + group}); err != nil {
		return "", err
	}
	return code, nil
}

// Claim moves the claimable device whose code is entered to tenant on
// behalf of operator (its actor string, e.g. "token:<id>"). The device
// record stays in the pool tenant in StateClaimed with Owner = tenant: the
// next time the device enrolls with its bootstrap credential, Enroll
// issues under tenant's CA (Enrollment.Transferred), and the MQTT gateway
// should tell a device connected with a pool certificate whose record is
// StateClaimed to re-enroll. Wrong codes are refused with
// ReasonBadClaimCode and counted against operator and tenant (see
// ClaimLimits); once either budget is spent every attempt, right or wrong,
// is refused with ReasonRateLimited until it refills.
func (p *Provisioner) Claim(ctx context.Context, operator, tenant, code string) (*Device, error) {
	ev := SecurityEvent{Kind: "provision.claim_refused", Tenant: tenant, Actor: operator}
	if err := wire.ValidateTenantID(tenant); err != nil {
		return nil, err
	}
	if !p.operators.Allow(operator) || !p.tenants.Allow(tenant) {
		return nil, p.refuseClaim(ctx, ev, Refuse(ReasonRateLimited, "too many wrong claim codes; wait and retry"))
	}
	wrong := func(why string) error {
		p.operators.Take(operator)
		p.tenants.Take(tenant)
		return p.refuseClaim(ctx, ev, Refuse(ReasonBadClaimCode, "%s", why))
	}
	id, secret, ok := parseClaimCode(code)
	if !ok {
		return nil, wrong("claim code is not 32 base32 characters")
	}
	d, err := p.cfg.Store.DeviceByClaimID(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, wrong("no device has this claim code")
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(claimHash(d.ClaimSalt, secret), d.ClaimHash) != 1 {
		return nil, wrong("no device has this claim code")
	}
	ev.DeviceID = d.ID
	if d.State != StateClaimable || d.Tenant == tenant {
		return nil, p.refuseClaim(ctx, ev, Refuse(ReasonNotClaimable, "device is %s in tenant %q", d.State, d.Tenant))
	}
	moved := *d
	moved.State, moved.Owner = StateClaimed, tenant
	moved.ClaimID, moved.ClaimSalt, moved.ClaimHash = "", nil, nil
	if err := p.cfg.Store.ReplaceDevice(ctx, &moved, StateClaimable); err != nil {
		if errors.Is(err, ErrConflict) {
			return nil, p.refuseClaim(ctx, ev, Refuse(ReasonNotClaimable, "device was claimed concurrently"))
		}
		return nil, err
	}
	if err := p.cfg.Auditor.Audit(ctx, audit.Entry{Actor: operator, Action: "device.claim", Target: "device:" + d.ID,
		Tenant: tenant, Result: audit.ResultOK, Detail: "from pool tenant " + d.Tenant}); err != nil {
		return nil, err
	}
	return &moved, nil
}

func (p *Provisioner) refuseClaim(ctx context.Context, ev SecurityEvent, re *Error) error {
	ev.Time, ev.Reason, ev.Detail = p.now().UTC(), re.Reason, re.Error()
	p.cfg.Events.SecurityEvent(ctx, ev)
	if err := p.cfg.Auditor.Audit(ctx, audit.Entry{Actor: ev.Actor, Action: "device.claim", Target: "device:" + ev.DeviceID,
		Tenant: ev.Tenant, Result: audit.ResultDenied, Detail: "reason=" + string(re.Reason)}); err != nil {
		return errors.Join(re, err)
	}
	return re
}

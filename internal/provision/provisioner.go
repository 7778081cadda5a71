package provision

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/wire"
)

// MaxLabelCandidates bounds how many groups a tenant-only label tries for
// one request: each try may verify a chain or compute a MAC, and an
// unauthenticated client must not be able to make one request cost a
// hundred of them.
const MaxLabelCandidates = 8

// DefaultClaimGroup is the group of a claiming tenant whose template
// applies to devices it claims, when it exists and is enabled.
const DefaultClaimGroup = "claimed"

// Config configures a Provisioner.
type Config struct {
	Store Store
	// Authenticators by mechanism; a group whose mechanism has none
	// refuses every enrollment.
	Authenticators map[Mechanism]Authenticator
	// Sealers opens webhook secrets.
	Sealers Sealers
	Events  Events
	Auditor Auditor
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// HTTPClient posts webhooks; a client with default TLS settings if
	// nil. Its own timeout is not relied on: WebhookTimeout applies.
	HTTPClient *http.Client
	// WebhookTimeout bounds a webhook call (DefaultWebhookTimeout if 0).
	WebhookTimeout time.Duration
	// ClaimLimits bound wrong claim codes (DefaultClaimLimits if zero).
	ClaimLimits ClaimLimits
}

// Provisioner runs enrollments and claims.
type Provisioner struct {
	cfg       Config
	now       func() time.Time
	operators *Limiter
	tenants   *Limiter
}

// New checks cfg and returns a Provisioner.
func New(cfg Config) (*Provisioner, error) {
	var missing []string
	if cfg.Store == nil {
		missing = append(missing, "Store")
	}
	if cfg.Events == nil {
		missing = append(missing, "Events")
	}
	if cfg.Auditor == nil {
		missing = append(missing, "Auditor")
	}
	if cfg.Sealers == nil {
		missing = append(missing, "Sealers")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("provision: config lacks %s", strings.Join(missing, ", "))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.WebhookTimeout == 0 {
		cfg.WebhookTimeout = DefaultWebhookTimeout
	}
	if cfg.ClaimLimits == (ClaimLimits{}) {
		cfg.ClaimLimits = DefaultClaimLimits
	}
	p := &Provisioner{cfg: cfg, now: cfg.Now}
	p.operators = NewLimiter(cfg.ClaimLimits.PerOperator, cfg.Now)
	p.tenants = NewLimiter(cfg.ClaimLimits.PerTenant, cfg.Now)
	return p, nil
}

// NewGroupID returns a fresh random group ID.
func NewGroupID() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b[:])
}

// ValidateGroup reports the first problem with g's static configuration.
func ValidateGroup(g *Group) error {
	if err := wire.ValidateTenantID(g.Tenant); err != nil {
		return err
	}
	if err := wire.ValidateTenantID(g.Name); err != nil {
		return fmt.Errorf("group name: %w", err)
	}
	if g.ID == "" {
		return errors.New("group has no ID (use NewGroupID)")
	}
	set := 0
	for _, b := range []bool{g.X509 != nil, g.TPM != nil, g.Symmetric != nil, g.Token != nil} {
		if b {
			set++
		}
	}
	ok := set == 1 && map[Mechanism]bool{
		MechanismX509: g.X509 != nil, MechanismTPM: g.TPM != nil,
		MechanismSymmetric: g.Symmetric != nil, MechanismToken: g.Token != nil,
	}[g.Mechanism]
	if !ok {
		return fmt.Errorf("group %q: mechanism %q needs exactly its own configuration", g.Name, g.Mechanism)
	}
	if g.Webhook != nil && !strings.HasPrefix(g.Webhook.URL, "https://") {
		return fmt.Errorf("group %q: webhook URL must be https", g.Name)
	}
	return g.Template.Validate()
}

// Enrollment is what the caller needs to issue the operational
// certificate, and what it must record.
type Enrollment struct {
	// Tenant issues the certificate. It differs from the group's tenant
	// when a claimed device re-enrolls under its owner.
	Tenant    string
	Group     string // the group that authenticated the device
	Mechanism Mechanism
	DeviceID  string
	// Template is the effective template (group's, with webhook
	// overrides, or the claiming tenant's).
	Template Template
	// AKPublic is the TPM attestation key to register, if any.
	AKPublic []byte
	// Reprovisioned is set when the device had been provisioned before.
	Reprovisioned bool
	// Transferred is set when a claimed device moved to Tenant.
	Transferred bool
}

// mechanismOf picks the mechanism from the credential's form.
func mechanismOf(req *Request) (Mechanism, bool) {
	switch {
	case strings.HasPrefix(req.BearerToken, wire.SymKeyTokenPrefix):
		return MechanismSymmetric, true
	case strings.HasPrefix(req.BearerToken, wire.GroupTokenPrefix):
		return MechanismToken, true
	case strings.HasPrefix(req.BearerToken, wire.TPMBearerPrefix):
		return MechanismTPM, true
	case req.BearerToken == "" && len(req.PeerCertificates) > 0:
		return MechanismX509, true
	}
	return "", false
}

// candidates returns the enabled groups of mech that label selects:
// "<tenant>.<group>" names one group; "<tenant>" means every enabled group
// of the tenant with that mechanism, in name order, at most
// MaxLabelCandidates.
func (p *Provisioner) candidates(ctx context.Context, label string, mech Mechanism) (tenant string, gs []*Group, err error) {
	tenant, name, err := wire.SplitESTLabel(label)
	if err != nil {
		return "", nil, &Error{Reason: ReasonUnknownGroup, Detail: "invalid label"}
	}
	if name != "" {
		g, err := p.cfg.Store.GetGroup(ctx, tenant, name)
		if errors.Is(err, ErrNotFound) {
			return tenant, nil, Refuse(ReasonUnknownGroup, "no group %q in tenant %q", name, tenant)
		}
		if err != nil {
			return tenant, nil, err
		}
		if !g.Enabled {
			return tenant, nil, Refuse(ReasonUnknownGroup, "group %q is disabled", name)
		}
		if g.Mechanism != mech {
			return tenant, nil, Refuse(ReasonWrongGroup, "group %q takes %s credentials, not %s", name, g.Mechanism, mech)
		}
		return tenant, []*Group{g}, nil
	}
	all, err := p.cfg.Store.ListGroups(ctx, tenant)
	if err != nil {
		return tenant, nil, err
	}
	for _, g := range all {
		if g.Enabled && g.Mechanism == mech {
			gs = append(gs, g)
			if len(gs) == MaxLabelCandidates {
				break
			}
		}
	}
	if len(gs) == 0 {
		return tenant, nil, Refuse(ReasonUnknownGroup, "tenant %q has no enabled %s group", tenant, mech)
	}
	return tenant, gs, nil
}

// better reports whether refusal b says more than a: "not this group"
// reasons are the least informative.
func better(a, b error) bool {
	weak := func(r Reason) bool { return r == ReasonWrongGroup || r == ReasonUnknownCA || r == ReasonBadMAC }
	return weak(ReasonOf(a)) && !weak(ReasonOf(b))
}

// Enroll authenticates req against the group label selects and, if
// everything holds, registers the device and returns what to issue. Each
// refusal is an *Error, reported to Events and the Auditor before Enroll
// returns. Enroll does not issue: the caller issues a certificate for
// (Enrollment.Tenant, Enrollment.DeviceID) to req.CSR's key with the
// template's profile and lifetime.
//
// Registration and the success audit entry are two writes: if the Auditor
// fails after the record was created, Enroll returns that error and the
// caller must not issue; the device then meets ReasonAlreadyProvisioned
// on retry unless its group allows re-provisioning. The server avoids this
// by implementing Store and Auditor over one transaction per call.
//
// Order of checks: label and mechanism; the credential (authenticator,
// which consumes single-use credentials); the CSR names the proven
// device; the registry (a device ID already provisioned is refused unless
// its group allows re-provisioning); the webhook; registration.
func (p *Provisioner) Enroll(ctx context.Context, label string, req *Request) (*Enrollment, error) {
	mech, ok := mechanismOf(req)
	tenant, _, _ := strings.Cut(label, ".")
	ev := SecurityEvent{Tenant: clip(tenant), Mechanism: mech, RemoteAddr: req.RemoteAddr}
	if !ok {
		return nil, p.refuse(ctx, ev, Refuse(ReasonNoCredential, "no bootstrap credential presented"))
	}
	if req.CSR == nil {
		return nil, p.refuse(ctx, ev, Refuse(ReasonMalformed, "no CSR"))
	}
	tenant, gs, err := p.candidates(ctx, label, mech)
	ev.Tenant = tenant
	if err != nil {
		return nil, p.refuse(ctx, ev, err)
	}
	auth := p.cfg.Authenticators[mech]
	if auth == nil {
		return nil, p.refuse(ctx, ev, Refuse(ReasonUnknownGroup, "no %s authenticator configured", mech))
	}
	var (
		g   *Group
		res *Result
	)
	for _, c := range gs {
		r, aerr := auth.Authenticate(ctx, c, req)
		if aerr == nil {
			g, res = c, r
			break
		}
		if ReasonOf(aerr) == "" {
			return nil, aerr // internal failure: not a refusal
		}
		if err == nil || better(err, aerr) {
			err, ev.Group = aerr, c.Name
		}
	}
	if g == nil {
		return nil, p.refuse(ctx, ev, err)
	}
	ev.Group, ev.DeviceID = g.Name, res.DeviceID
	if got := RequestedDeviceID(req.CSR); got != res.DeviceID {
		return nil, p.refuse(ctx, ev, Refuse(ReasonCSRMismatch, "CSR names device %q, credential proves %q", clip(got), res.DeviceID))
	}
	e := &Enrollment{Tenant: g.Tenant, Group: g.Name, Mechanism: mech, DeviceID: res.DeviceID, Template: g.Template, AKPublic: res.AKPublic}
	prev, err := p.cfg.Store.GetDevice(ctx, g.Tenant, res.DeviceID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	now := p.now().UTC()
	rec := &Device{Tenant: g.Tenant, ID: res.DeviceID, Group: g.Name, State: StateProvisioned, ProvisionedAt: now,
		Fingerprint: res.Fingerprint, AKPublic: res.AKPublic}
	var prevState string
	if prev != nil {
		prevState = prev.State
		switch {
		case prev.State == StateClaimed:
			return p.transfer(ctx, ev, g, prev, res, e, req)
		case prev.State == StateTransferred:
			return nil, p.refuse(ctx, ev, Refuse(ReasonAlreadyProvisioned, "device was claimed by another tenant and already re-enrolled there"))
		case prev.State == StateClaimable && prev.ProvisionedAt.IsZero():
			// First enrollment of a pool device: it stays claimable.
			*rec = *prev
			rec.Group, rec.ProvisionedAt, rec.Fingerprint, rec.AKPublic = g.Name, now, res.Fingerprint, res.AKPublic
		case !g.Reprovision:
			return nil, p.refuse(ctx, ev, Refuse(ReasonAlreadyProvisioned,
				"device already provisioned at %s with credential %s; this one is %s (a cloned bootstrap credential?)",
				prev.ProvisionedAt.Format(time.RFC3339), prev.Fingerprint, res.Fingerprint))
		default:
			e.Reprovisioned = true
			if prev.State == StateClaimable {
				*rec = *prev
				rec.Group, rec.ProvisionedAt, rec.Fingerprint, rec.AKPublic = g.Name, now, res.Fingerprint, res.AKPublic
			}
		}
	}
	if g.Webhook != nil {
		tmpl, err := p.callWebhook(ctx, g, e, req.RemoteAddr)
		if err != nil {
			return nil, p.refuse(ctx, ev, err)
		}
		e.Template = tmpl
	}
	if prev == nil {
		err = p.cfg.Store.CreateDevice(ctx, rec)
	} else {
		err = p.cfg.Store.ReplaceDevice(ctx, rec, prevState)
	}
	if errors.Is(err, ErrConflict) {
		return nil, p.refuse(ctx, ev, Refuse(ReasonAlreadyProvisioned, "a concurrent enrollment of the device won"))
	}
	if err != nil {
		return nil, err
	}
	return e, p.auditOK(ctx, e, req.RemoteAddr)
}

// transfer enrolls a claimed device under its owner.
func (p *Provisioner) transfer(ctx context.Context, ev SecurityEvent, g *Group, prev *Device, res *Result, e *Enrollment, req *Request) (*Enrollment, error) {
	e.Tenant, e.Transferred, e.Template = prev.Owner, true, Template{}
	cg, err := p.cfg.Store.GetGroup(ctx, prev.Owner, DefaultClaimGroup)
	switch {
	case err == nil && cg.Enabled:
		e.Template = cg.Template
	case err != nil && !errors.Is(err, ErrNotFound):
		return nil, err
	}
	now := p.now().UTC()
	// Creating the owner's record first makes it the single winner of
	// concurrent transfers; the pool record then changes state.
	err = p.cfg.Store.CreateDevice(ctx, &Device{Tenant: prev.Owner, ID: prev.ID, Group: DefaultClaimGroup, State: StateProvisioned,
		ProvisionedAt: now, Fingerprint: res.Fingerprint, AKPublic: res.AKPublic})
	if errors.Is(err, ErrConflict) {
		ev.Tenant = prev.Owner
		return nil, p.refuse(ctx, ev, Refuse(ReasonAlreadyProvisioned, "claimed device already enrolled under tenant %q", prev.Owner))
	}
	if err != nil {
		return nil, err
	}
	moved := *prev
	moved.State = StateTransferred
	if err := p.cfg.Store.ReplaceDevice(ctx, &moved, StateClaimed); err != nil {
		return nil, err
	}
	return e, p.auditOK(ctx, e, req.RemoteAddr)
}

func (p *Provisioner) auditOK(ctx context.Context, e *Enrollment, remote string) error {
	detail := fmt.Sprintf("group=%s mechanism=%s profile=%s remote=%s", e.Group, e.Mechanism, e.Template.Profile, remote)
	if e.Reprovisioned {
		detail += " reprovisioned"
	}
	if e.Transferred {
		detail += " transferred"
	}
	return p.cfg.Auditor.Audit(ctx, audit.Entry{Actor: "device:" + e.Tenant + "/" + e.DeviceID, Action: "device.provision",
		Target: "device:" + e.DeviceID, Tenant: e.Tenant, Result: audit.ResultOK, Detail: detail})
}

// refuse reports err (a refusal) as a security event and an audit entry,
// and returns it. Internal errors pass through unreported.
func (p *Provisioner) refuse(ctx context.Context, ev SecurityEvent, err error) error {
	var re *Error
	if !errors.As(err, &re) {
		return err
	}
	ev.Time = p.now().UTC()
	ev.Kind = "provision.refused"
	ev.Reason = re.Reason
	ev.Detail = clip(re.Error())
	p.cfg.Events.SecurityEvent(ctx, ev)
	actor := "remote:" + ev.RemoteAddr
	if ev.DeviceID != "" {
		actor = "device:" + ev.Tenant + "/" + ev.DeviceID
	}
	aerr := p.cfg.Auditor.Audit(ctx, audit.Entry{Actor: actor, Action: "device.provision", Target: "group:" + ev.Group,
		Tenant: ev.Tenant, Result: audit.ResultDenied, Detail: "reason=" + string(re.Reason) + " " + ev.Detail})
	if aerr != nil {
		return errors.Join(err, aerr)
	}
	return err
}

// Challenge runs round one of a challenge-response mechanism for label:
// the first enabled group of that mechanism whose authenticator accepts
// the payload answers. Refusals are reported like Enroll's.
func (p *Provisioner) Challenge(ctx context.Context, label string, mech Mechanism, payload []byte, remoteAddr string) ([]byte, error) {
	ev := SecurityEvent{Mechanism: mech, RemoteAddr: remoteAddr}
	tenant, gs, err := p.candidates(ctx, label, mech)
	ev.Tenant = tenant
	if err != nil {
		return nil, p.refuse(ctx, ev, err)
	}
	ch, ok := p.cfg.Authenticators[mech].(Challenger)
	if !ok {
		return nil, p.refuse(ctx, ev, Refuse(ReasonUnknownGroup, "mechanism %s has no challenge round", mech))
	}
	err = nil
	for _, g := range gs {
		out, cerr := ch.Challenge(ctx, g, payload, remoteAddr)
		if cerr == nil {
			return out, nil
		}
		if ReasonOf(cerr) == "" {
			return nil, cerr
		}
		if err == nil || better(err, cerr) {
			err, ev.Group = cerr, g.Name
		}
	}
	return nil, p.refuse(ctx, ev, err)
}

// RequestedDeviceID returns the device ID a CSR asks for: the device part
// of its Ward device URI SAN (wire.DeviceURI) if it has one, else its
// subject common name. It returns "" if the CSR names none or several
// URIs.
func RequestedDeviceID(csr *x509.CertificateRequest) string {
	if csr == nil {
		return ""
	}
	if len(csr.URIs) > 0 {
		if len(csr.URIs) > 1 {
			return ""
		}
		_, dev, err := wire.ParseDeviceURI(csr.URIs[0].String())
		if err != nil {
			return ""
		}
		return dev
	}
	return csr.Subject.CommonName
}

// clip bounds attacker-controlled text quoted in details.
func clip(s string) string {
	if len(s) > 160 {
		return s[:160] + "..."
	}
	return s
}

// cloneTemplate deep-copies t so webhook overrides never alias a group.
func cloneTemplate(t Template) Template {
	t.Tags = maps.Clone(t.Tags)
	t.Twin = append([]byte(nil), t.Twin...)
	if len(t.Twin) == 0 {
		t.Twin = nil
	}
	return t
}

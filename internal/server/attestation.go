package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/attestsql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/wire"
)

// Attestation wiring. The flows, all over the device's own MQTT session:
//
//   - AK enrollment (operator-approved): the agent publishes its
//     wire.AKEnrollRequest on attest/enroll; the server keeps it pending;
//     an operator approves (POST .../attestation/enroll), the server
//     answers with the credential-activation challenge on
//     attest/activation, the device returns the secret on attest/activate
//     and the AK is registered.
//   - Challenges: on demand (POST .../attest) or when due
//     (ChallengeDue, run by attestLoop), on attest/request; evidence on
//     attest/reply goes through Verify; the verdict goes back on
//     attest/verdict and decides quarantine.
//   - Renewal: the agent publishes its new key's SPKI on attest/renewal
//     and gets a RenewalChallenge on attest/request; the EST handler then
//     asks renewalAttested.
//
// The release a device is appraised against comes from its tags
// (hw_model, release, previous_release; set by the provisioning
// template) or else from what it reports in its twin under "firmware"
// ({"hw_model", "release", "previous_release"}). Only releases whose
// signed reference values were imported can ever match, whatever the
// device claims. The OTA engine will supply the release instead.

const (
	// maxPendingAKEnrollments bounds AK enrollment requests kept in memory
	// while waiting for an operator: a request is one per device and a few
	// KiB, so a fleet cannot grow this beyond a few hundred MiB.
	maxPendingAKEnrollments = 10000
	// attestSchedulePeriod is how often the scheduler looks for devices due
	// an attestation; the policy interval decides who is due.
	attestSchedulePeriod = time.Minute
	// attestActor is the audit actor of decisions the verifier takes.
	attestActor = "attestation"
)

// attestState is the server's attestation part.
type attestState struct {
	v  *attest.Verifier
	st *attestsql.Store

	mu      sync.Mutex
	pending map[string]*wire.AKEnrollRequest // tenant/device
}

// openAttestation builds the verifier over the SQL store, with the EK
// roots of the configuration.
func (s *Server) openAttestation() error {
	db, ok := s.store.(*sqlstore.DB)
	if !ok {
		return errors.New("attestation needs the SQL store")
	}
	st := attestsql.New(db.SQL(), db.SQLDialect())
	var roots *x509.CertPool
	if s.cfg.EKRoots != "" {
		b, err := os.ReadFile(s.cfg.EKRoots)
		if err != nil {
			return fmt.Errorf("ek_roots: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			return fmt.Errorf("ek_roots: %s holds no PEM certificate", s.cfg.EKRoots)
		}
	}
	v, err := attest.New(attest.Config{Store: st, EKRoots: roots, RefKeys: st, Now: s.now})
	if err != nil {
		return err
	}
	s.attest = &attestState{v: v, st: st, pending: map[string]*wire.AKEnrollRequest{}}
	s.Tenants.AfterDelete(func(ctx context.Context, id string) {
		if err := st.DeleteTenant(ctx, id); err != nil {
			s.log.Error("delete attestation state of a deleted tenant", "tenant", id, "err", err)
		}
	})
	return nil
}

// Attestation returns the verifier (tests and the demo).
func (s *Server) Attestation() *attest.Verifier { return s.attest.v }

// attestDevice describes a device to the verifier.
func (s *Server) attestDevice(ctx context.Context, tenant, device string) (attest.Device, error) {
	d, err := s.store.GetDevice(ctx, tenant, device)
	if err != nil {
		return attest.Device{}, err
	}
	dev := attest.Device{Tenant: tenant, ID: device, Group: d.Group,
		HWModel: d.Tags["hw_model"], Release: d.Tags["release"], PreviousRelease: d.Tags["previous_release"]}
	if dev.HWModel == "" || dev.Release == "" {
		if tw, err := s.Twins.Get(ctx, tenant, device, wire.DefaultTwinName); err == nil && len(tw.Reported.Doc) > 0 {
			var rep struct {
				Firmware struct {
					HWModel         string `json:"hw_model"`
					Release         string `json:"release"`
					PreviousRelease string `json:"previous_release"`
				} `json:"firmware"`
			}
			if json.Unmarshal(tw.Reported.Doc, &rep) == nil {
				dev.HWModel, dev.Release, dev.PreviousRelease = rep.Firmware.HWModel, rep.Firmware.Release, rep.Firmware.PreviousRelease
			}
		}
	}
	// The operational key signs software-tier reports: the newest valid
	// certificate's.
	certs, err := s.store.ListCerts(ctx, store.CertFilter{Tenant: tenant, Device: device, Status: "good"})
	if err != nil {
		return attest.Device{}, err
	}
	now := s.now()
	for i := len(certs) - 1; i >= 0; i-- {
		if now.After(certs[i].NotAfter) {
			continue
		}
		if c, err := x509.ParseCertificate(certs[i].CertDER); err == nil {
			dev.PublicKey = c.PublicKey
			break
		}
	}
	s.rolloutAttestRelease(tenant, device, &dev) // rollout.go
	return dev, nil
}

func (s *Server) publishChallenge(tenant, device string, c *wire.AttestChallenge) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.Gateway.Publish(tenant, device, wire.TopicAttestRequest, b, 1)
}

// Challenge sends a device an attestation challenge now (`ward device
// attest`).
func (s *Server) Challenge(ctx context.Context, actor, tenant, device string) (*api.AttestChallenge, error) {
	dev, err := s.attestDevice(ctx, tenant, device)
	if err != nil {
		return nil, err
	}
	c, err := s.attest.v.NewChallenge(ctx, dev)
	if errors.Is(err, attest.ErrTooManyChallenges) {
		return nil, &api.Error{Status: http.StatusConflict, Title: "Conflict", Detail: err.Error() + "; wait for them to expire"}
	}
	if err != nil {
		return nil, err
	}
	if err := s.publishChallenge(tenant, device, c); err != nil {
		return nil, err
	}
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.challenge", Target: "device:" + device, Tenant: tenant,
		Detail: "challenge " + c.ID}); err != nil {
		return nil, err
	}
	return &api.AttestChallenge{Device: device, ID: c.ID, PCRs: c.PCRs, Expires: c.Expires}, nil
}

// ChallengeDue challenges every active or quarantined device whose
// attestation is due under its policy and returns how many were sent.
// Devices that are offline get the challenge if their session is up
// before it expires; otherwise the next run sends another.
func (s *Server) ChallengeDue(ctx context.Context) (int, error) {
	var devs []*store.Device
	err := s.store.ForEachDevice(ctx, func(d *store.Device) error {
		if d.State == store.DeviceActive || d.State == store.DeviceQuarantined {
			devs = append(devs, d)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range devs {
		dev, err := s.attestDevice(ctx, d.Tenant, d.ID)
		if err != nil {
			return n, err
		}
		due, err := s.attest.v.Due(ctx, dev)
		if err != nil {
			return n, err
		}
		if !due {
			continue
		}
		c, err := s.attest.v.NewChallenge(ctx, dev)
		if errors.Is(err, attest.ErrTooManyChallenges) {
			continue // the device has not answered the previous ones yet
		}
		if err != nil {
			return n, err
		}
		if err := s.publishChallenge(d.Tenant, d.ID, c); err != nil {
			s.log.Debug("attestation challenge not delivered", "tenant", d.Tenant, "device", d.ID, "err", err)
			continue
		}
		n++
	}
	return n, nil
}

// attestLoop runs ChallengeDue periodically until ctx ends.
func (s *Server) attestLoop(ctx context.Context) {
	t := time.NewTicker(attestSchedulePeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := s.ChallengeDue(ctx); err != nil {
				s.log.Error("attestation scheduler", "err", err)
			} else if n > 0 {
				s.log.Debug("attestation challenges sent", "count", n)
			}
		}
	}
}

// ingestAttestReply appraises evidence and applies the verdict.
func (s *Server) ingestAttestReply(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	ev, err := wire.ParseAttestEvidence(payload)
	if err != nil {
		return err
	}
	dev, err := s.attestDevice(ctx, id.Tenant, id.Device)
	if err != nil {
		return err
	}
	prev, prevErr := s.attest.st.LastResult(ctx, id.Tenant, id.Device)
	v, err := s.attest.v.Verify(ctx, dev, ev)
	if errors.Is(err, attest.ErrChallenge) {
		// Late, replayed or unsolicited: no verdict. Acknowledge and drop,
		// so a slow device is not cut off; a new challenge will come.
		s.log.Info("attestation evidence answers no outstanding challenge", "tenant", id.Tenant, "device", id.Device)
		return nil
	}
	if err != nil {
		return err
	}
	if b, err := json.Marshal(v.Wire(ev.ChallengeID)); err == nil {
		_ = s.Gateway.Publish(id.Tenant, id.Device, wire.TopicAttestVerdict, b, 1)
	}
	return s.applyVerdict(ctx, dev, v, prevErr == nil && prev.Verdict.Result == attest.Fail)
}

// applyVerdict records the security consequences of a verdict. A pass
// lifts a quarantine only when the previous verdict failed, so a device
// an operator quarantined by hand stays quarantined.
func (s *Server) applyVerdict(ctx context.Context, dev attest.Device, v attest.Verdict, prevFailed bool) error {
	reasons := strings.Join(v.Reasons, "; ")
	target := "device:" + dev.ID
	s.rolloutVerdict(dev, v) // rollout.go
	switch v.Result {
	case attest.Fail:
		s.Monitor.Emit(monitor.Event{Type: monitor.AttestationFailed, Tenant: dev.Tenant, Device: dev.ID, Reason: reasons, Time: v.Time})
		if err := s.Audit(ctx, audit.Entry{Actor: attestActor, Action: "attest.verdict", Target: target, Tenant: dev.Tenant,
			Result: audit.ResultFailed, Detail: "fail: " + reasons}); err != nil {
			return err
		}
		if v.Quarantine {
			if st, _ := s.Fleet.State(dev.Tenant, dev.ID); st == store.DeviceActive {
				return s.Fleet.SetState(ctx, attestActor, dev.Tenant, dev.ID, store.DeviceQuarantined, "attestation failed: "+reasons)
			}
		}
	case attest.Flag:
		s.Monitor.Emit(monitor.Event{Type: monitor.AttestationFlagged, Tenant: dev.Tenant, Device: dev.ID, Reason: reasons, Time: v.Time})
	case attest.Pass:
		if err := s.Audit(ctx, audit.Entry{Actor: attestActor, Action: "attest.verdict", Target: target, Tenant: dev.Tenant,
			Result: audit.ResultOK, Detail: "pass: release " + v.Release + " assurance " + string(v.Assurance)}); err != nil {
			return err
		}
		if st, _ := s.Fleet.State(dev.Tenant, dev.ID); st == store.DeviceQuarantined && prevFailed {
			return s.Fleet.SetState(ctx, attestActor, dev.Tenant, dev.ID, store.DeviceActive, "attestation passed (release "+v.Release+")")
		}
	}
	return nil
}

// ingestAttestEnroll keeps a device's AK enrollment request until an
// operator approves it. A request for the AK already enrolled is ignored.
func (s *Server) ingestAttestEnroll(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	req, err := wire.ParseAKEnrollRequest(payload)
	if err != nil {
		return err
	}
	if ak, err := s.attest.st.AK(ctx, id.Tenant, id.Device); err == nil && string(ak.Public) == string(req.AK.Public) {
		return nil
	}
	key := id.Tenant + "/" + id.Device
	s.attest.mu.Lock()
	defer s.attest.mu.Unlock()
	if _, ok := s.attest.pending[key]; !ok && len(s.attest.pending) >= maxPendingAKEnrollments {
		s.log.Warn("too many AK enrollment requests pending approval; dropped one", "tenant", id.Tenant, "device", id.Device)
		return nil
	}
	s.attest.pending[key] = req
	return nil
}

// ApproveAKEnrollment starts credential activation for the AK the device
// asked to enroll.
func (s *Server) ApproveAKEnrollment(ctx context.Context, actor, tenant, device string) error {
	key := tenant + "/" + device
	s.attest.mu.Lock()
	req := s.attest.pending[key]
	delete(s.attest.pending, key)
	s.attest.mu.Unlock()
	if req == nil {
		return &api.Error{Status: http.StatusConflict, Title: "Conflict",
			Detail: "the device has not asked to enroll an attestation key; connect it with a TPM (the agent asks when it connects) and try again"}
	}
	dev, err := s.attestDevice(ctx, tenant, device)
	if err != nil {
		return err
	}
	ch, err := s.attest.v.BeginAKEnrollment(ctx, dev, req)
	if errors.Is(err, attest.ErrEnrollment) {
		s.Monitor.Emit(monitor.Event{Type: monitor.AttestationFailed, Tenant: tenant, Device: device, Reason: err.Error()})
		_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.ak_enroll", Target: "device:" + device, Tenant: tenant,
			Result: audit.ResultDenied, Detail: err.Error()})
		return &api.Error{Status: http.StatusUnprocessableEntity, Title: "AK enrollment refused", Detail: err.Error()}
	}
	if err != nil {
		return err
	}
	b, err := json.Marshal(ch)
	if err != nil {
		return err
	}
	if err := s.Gateway.Publish(tenant, device, wire.TopicAttestActivation, b, 1); err != nil {
		return err
	}
	return s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.ak_enroll", Target: "device:" + device, Tenant: tenant,
		Detail: "approved; credential activation sent"})
}

// ingestAttestActivate finishes AK enrollment with the device's answer.
func (s *Server) ingestAttestActivate(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	resp, err := wire.ParseAKActivationResponse(payload)
	if err != nil {
		return err
	}
	dev, err := s.attestDevice(ctx, id.Tenant, id.Device)
	if err != nil {
		return err
	}
	actor := "device:" + id.Tenant + "/" + id.Device
	if err := s.attest.v.FinishAKEnrollment(ctx, dev, resp); err != nil {
		if !errors.Is(err, attest.ErrEnrollment) {
			return err
		}
		s.Monitor.Emit(monitor.Event{Type: monitor.AttestationFailed, Tenant: id.Tenant, Device: id.Device, Reason: err.Error()})
		return s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.ak_enrolled", Target: "device:" + id.Device, Tenant: id.Tenant,
			Result: audit.ResultDenied, Detail: err.Error()})
	}
	return s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.ak_enrolled", Target: "device:" + id.Device, Tenant: id.Tenant,
		Detail: "credential activation succeeded"})
}

// ingestAttestRenewal answers a renewal request with a challenge bound to
// the new key.
func (s *Server) ingestAttestRenewal(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	req, err := wire.ParseAttestRenewalRequest(payload)
	if err != nil {
		return err
	}
	if _, err := x509.ParsePKIXPublicKey(req.SPKI); err != nil {
		return fmt.Errorf("attest/renewal: spki: %w", err)
	}
	dev, err := s.attestDevice(ctx, id.Tenant, id.Device)
	if err != nil {
		return err
	}
	c, err := s.attest.v.RenewalChallenge(ctx, dev, req.SPKI)
	if errors.Is(err, attest.ErrTooManyChallenges) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.publishChallenge(id.Tenant, id.Device, c)
}

// renewalAttested decides whether a device may renew with a CSR whose key
// is spki: never while quarantined, and with a fresh pass binding the key
// when its policy says so. A refusal is audited and raises an event.
func (s *Server) renewalAttested(ctx context.Context, tenant, device string, spki []byte) error {
	refuse := func(why string) error {
		s.Monitor.Emit(monitor.Event{Type: monitor.AttestationRenewalRefused, Tenant: tenant, Device: device, Reason: why})
		if err := s.Audit(ctx, audit.Entry{Actor: "device:" + tenant + "/" + device, Action: "est.reenroll", Target: "device:" + device,
			Tenant: tenant, Result: audit.ResultDenied, Detail: why}); err != nil {
			return err
		}
		return errRenewalRefused{why}
	}
	if st, _ := s.Fleet.State(tenant, device); st == store.DeviceQuarantined {
		return refuse("device is quarantined: attestation must pass first")
	}
	dev, err := s.attestDevice(ctx, tenant, device)
	if err != nil {
		return err
	}
	if err := s.attest.v.RenewalAllowed(ctx, dev, spki, s.now()); err != nil {
		if errors.Is(err, attest.ErrRenewalRefused) {
			return refuse(err.Error())
		}
		return err
	}
	return nil
}

// errRenewalRefused is turned into a 403 by the EST glue.
type errRenewalRefused struct{ why string }

func (e errRenewalRefused) Error() string { return "renewal refused: " + e.why }

// ImportRefValues verifies and stores a release's reference values.
func (s *Server) ImportRefValues(ctx context.Context, actor, tenant string, doc, sig []byte) (*api.RefValuesInfo, error) {
	r, err := s.attest.v.ImportRefValues(ctx, tenant, doc, sig)
	if errors.Is(err, attest.ErrNotFound) {
		return nil, &api.Error{Status: http.StatusConflict, Title: "Conflict",
			Detail: "the tenant has no reference-value key; set one first (ward release refvalues key)"}
	}
	if err != nil {
		if _, ok := err.(*api.Error); ok {
			return nil, err
		}
		_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.refvalues_import", Target: "refvalues", Tenant: tenant,
			Result: audit.ResultDenied, Detail: err.Error()})
		return nil, api.Invalid(err)
	}
	info := &api.RefValuesInfo{HWModel: r.HWModel, Release: r.Release, Imported: r.Imported}
	for _, st := range r.Stages {
		info.Stages = append(info.Stages, st.Name)
	}
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.refvalues_import", Target: "release:" + r.HWModel + "/" + r.Release,
		Tenant: tenant, Detail: "release approved for attestation"}); err != nil {
		return nil, err
	}
	return info, nil
}

// SetRefValueKey registers the tenant's reference-value public key.
func (s *Server) SetRefValueKey(ctx context.Context, actor, tenant string, pemKey []byte) error {
	blk, _ := pem.Decode(pemKey)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return api.Invalid(errors.New("body must be a PEM \"PUBLIC KEY\" (Ed25519 or ECDSA)"))
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return api.Invalid(fmt.Errorf("public key: %w", err))
	}
	if _, err := s.store.GetTenant(ctx, tenant); err != nil {
		return err
	}
	if err := s.attest.st.SetRefValueKey(ctx, tenant, k); err != nil {
		return api.Invalid(err)
	}
	return s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.refvalue_key", Target: "tenant:" + tenant, Tenant: tenant})
}

// SetAttestPolicy sets a tenant's or group's attestation policy.
func (s *Server) SetAttestPolicy(ctx context.Context, actor, tenant string, p api.AttestPolicy) error {
	pol := attest.DefaultPolicy()
	pol.QuarantineOnFailure, pol.RenewalRequiresPass, pol.AllowSoftware = p.QuarantineOnFailure, p.RenewalRequiresPass, p.AllowSoftware
	for _, f := range []struct {
		name string
		v    string
		dst  *time.Duration
	}{{"interval", p.Interval, &pol.Interval}, {"challenge_ttl", p.ChallengeTTL, &pol.ChallengeTTL}, {"renewal_max_age", p.RenewalMaxAge, &pol.RenewalMaxAge}} {
		if f.v == "" {
			continue
		}
		d, err := time.ParseDuration(f.v)
		if err != nil || d <= 0 {
			return api.Invalid(fmt.Errorf("%s: %q is not a positive duration (for example 24h or 10m)", f.name, f.v))
		}
		*f.dst = d
	}
	if _, err := s.store.GetTenant(ctx, tenant); err != nil {
		return err
	}
	if err := s.attest.st.SetPolicy(ctx, tenant, p.Group, pol); err != nil {
		return err
	}
	b, _ := json.Marshal(p)
	return s.Audit(ctx, audit.Entry{Actor: actor, Action: "attest.policy", Target: "group:" + p.Group, Tenant: tenant, Detail: string(b)})
}

// AttestationState returns a device's attestation state.
func (s *Server) AttestationState(ctx context.Context, tenant, device string) (*api.AttestationState, error) {
	out := &api.AttestationState{}
	found := false
	if ak, err := s.attest.st.AK(ctx, tenant, device); err == nil {
		out.AKEnrolled, out.AKEnrolledAt, found = true, ak.Enrolled, true
	} else if !errors.Is(err, attest.ErrNotFound) {
		return nil, err
	}
	s.attest.mu.Lock()
	if s.attest.pending[tenant+"/"+device] != nil {
		out.AKPending, found = true, true
	}
	s.attest.mu.Unlock()
	r, err := s.attest.st.LastResult(ctx, tenant, device)
	switch {
	case err == nil:
		found = true
		v := r.Verdict
		out.Result, out.Reasons, out.Release, out.Assurance = string(v.Result), v.Reasons, v.Release, string(v.Assurance)
		out.TPMVerified, out.Time, out.Quarantine = v.TPMVerified, v.Time, v.Quarantine
		out.Events, out.TPMInfo = r.Summary.Events, r.Summary.TPMInfo
		out.ResetCount, out.RestartCount = r.Summary.Counters.ResetCount, r.Summary.Counters.RestartCount
	case !errors.Is(err, attest.ErrNotFound):
		return nil, err
	}
	if !found {
		return nil, nil
	}
	return out, nil
}

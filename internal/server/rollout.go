package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"gopkg.in/yaml.v3"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/rollout"
	"github.com/wardiot/ward/internal/ota/tufrepo"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/otasql"
	"github.com/wardiot/ward/wire"
)

// Rollout wiring (issue #10). The engine (package rollout) decides; this
// file feeds it and carries out what it returns:
//
//   - CreateRollout selects the fleet from the device registry (hardware
//     model from the hw_model tag or the twin, as for assignments; only
//     devices whose model the release is published for) and records what
//     each device runs now, which is where a rollback goes.
//   - Every event (operator command, ota/status report, health verdict,
//     tick) runs under one mutex, the snapshot is saved (otasql) and only
//     then are the actions carried out: assign = the Director names the
//     release, publish_job = wire.OTAJob on ota/job, roll_back = the
//     Director names the previous release again (and a job says so),
//     pause/abort/complete = audited state changes.
//   - The health gate opens when a device reports "committed" (the agent
//     commits only after its own health check, so that is the healthy
//     report). A device with an enrolled AK is then challenged and must
//     pass attestation against the NEW release's reference values
//     (attestDevice asks rolloutAttestRelease which release to appraise);
//     without an AK the healthy report alone counts. Any high-severity
//     security event for the device (monitor.Subscribe) from the commit
//     to the end of the health window fails the gate. Verdicts are taken
//     by TickRollouts, which rolloutLoop runs every few seconds.
//
// Health gates in progress live in memory: after a restart a committed
// device's window starts again from the restart, so a restart delays a
// verdict but never skips the gate.

const (
	// rolloutTickPeriod: stage soaks and health windows are minutes long;
	// a few seconds of lag is invisible and costs one pass per period.
	rolloutTickPeriod = 5 * time.Second
	// maxRolloutFailuresShown bounds the failed devices a status lists.
	maxRolloutFailuresShown = 100
	// maxRolloutFleet bounds the devices one rollout may select: the
	// snapshot is one document rewritten on every event.
	maxRolloutFleet = 100_000
)

// rolloutState holds loaded engines and health gates in progress.
//
// Lock order: mu, then healthMu. The monitor subscriber takes healthMu
// only, and nothing emits a security event while holding healthMu.
type rolloutState struct {
	mu      sync.Mutex // serialises every engine event (engines are not concurrency-safe)
	engines map[string]*liveRollout

	healthMu sync.Mutex
	health   map[string]*healthGate // tenant/device
}

// liveRollout is a loaded engine and what the server needs beside it.
type liveRollout struct {
	tenant string
	e      *rollout.Engine
	spec   rollout.Spec
	saved  []byte // last saved snapshot, to skip identical writes
}

// healthGate is one committed device waiting for its health verdict.
type healthGate struct {
	rollout    string
	release    string // the release the rollout installs
	since      time.Time
	needAttest bool
	challenged bool
	attest     string // "", "pass" or the failure reason
	highEvent  string // the first high-severity event type seen
}

func rolloutKey(tenant, id string) string { return tenant + "/" + id }

// openRollouts prepares the rollout part and listens for security events.
func (s *Server) openRollouts() {
	s.rollouts = &rolloutState{engines: map[string]*liveRollout{}, health: map[string]*healthGate{}}
	s.Monitor.Subscribe(func(ev monitor.Event) {
		if ev.Device == "" || monitor.Severity(ev.Type) != "high" {
			return
		}
		r := s.rollouts
		r.healthMu.Lock()
		if g := r.health[rolloutKey(ev.Tenant, ev.Device)]; g != nil && !ev.Time.Before(g.since) && g.highEvent == "" {
			g.highEvent = ev.Type
		}
		r.healthMu.Unlock()
	})
	s.Tenants.AfterDelete(func(_ context.Context, id string) {
		r := s.rollouts
		r.mu.Lock()
		for k, l := range r.engines {
			if l.tenant == id {
				delete(r.engines, k)
			}
		}
		r.mu.Unlock()
		r.healthMu.Lock()
		for k := range r.health {
			if strings.HasPrefix(k, id+"/") {
				delete(r.health, k)
			}
		}
		r.healthMu.Unlock()
	})
}

func (s *Server) rolloutStore(tid string) *otasql.Rollouts {
	return otasql.NewRollouts(s.ota.db.SQL(), s.ota.db.SQLDialect(), tid)
}

// parseRolloutSpec decodes a spec strictly; Target may be left out (the
// server fills it in), so validation comes after.
func parseRolloutSpec(b []byte) (*rollout.Spec, error) {
	if len(b) > rollout.MaxSpecSize {
		return nil, api.Invalid(fmt.Errorf("the rollout spec is larger than %d bytes", rollout.MaxSpecSize))
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var sp rollout.Spec
	if err := dec.Decode(&sp); err != nil {
		return nil, api.Invalid(fmt.Errorf("rollout spec: %w", err))
	}
	return &sp, nil
}

// CreateRollout creates a rollout from a YAML spec.
func (s *Server) CreateRollout(ctx context.Context, actor, tid string, specYAML []byte) (*api.RolloutStatus, error) {
	if _, err := s.store.GetTenant(ctx, tid); err != nil {
		return nil, err
	}
	sp, err := parseRolloutSpec(specYAML)
	if err != nil {
		return nil, err
	}
	rs, err := s.ListReleases(ctx, tid)
	if err != nil {
		return nil, err
	}
	targets := map[string]string{} // hardware -> image target
	var hws []string
	for _, r := range rs {
		if r.Release == sp.Release {
			targets[r.HardwareID] = r.Target
			hws = append(hws, r.HardwareID)
		}
	}
	if len(targets) == 0 {
		return nil, &api.Error{Status: http.StatusNotFound, Title: "Not found",
			Detail: fmt.Sprintf("release %q is not published; see ward release list", sp.Release)}
	}
	if h := sp.Selector.Hardware; h != "" {
		if targets[h] == "" {
			return nil, &api.Error{Status: http.StatusConflict, Title: "Wrong hardware",
				Detail: fmt.Sprintf("release %s is published for %s, not for %s", sp.Release, strings.Join(hws, ", "), h)}
		}
		hws = []string{h}
	}
	sort.Strings(hws)
	if sp.Target == "" {
		sp.Target = targets[hws[0]]
	} else if !slices.ContainsFunc(hws, func(h string) bool { return targets[h] == sp.Target }) {
		return nil, api.Invalid(fmt.Errorf("target %q is not an image of release %s (leave target out: the server picks each device's image)", sp.Target, sp.Release))
	}
	if err := sp.Validate(); err != nil {
		return nil, api.Invalid(err)
	}
	fleet, err := s.rolloutFleet(ctx, tid, hws)
	if err != nil {
		return nil, err
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	id := "ro-" + hex.EncodeToString(rnd[:])
	e, err := rollout.New(rollout.Config{ID: id, Spec: sp, Creator: actor, Fleet: fleet, Now: s.now})
	if err != nil {
		return nil, api.Invalid(err)
	}
	r := s.rollouts
	r.mu.Lock()
	defer r.mu.Unlock()
	l := &liveRollout{tenant: tid, e: e, spec: *sp}
	if err := s.saveRollout(ctx, l); err != nil {
		return nil, err
	}
	r.engines[rolloutKey(tid, id)] = l
	st, _ := e.State()
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.rollout_create", Target: "rollout:" + id, Tenant: tid,
		Detail: fmt.Sprintf("release=%s devices=%d state=%s", sp.Release, len(fleet), st)}); err != nil {
		return nil, err
	}
	if err := s.advance(ctx, l, e.Tick(), true); err != nil {
		return nil, err
	}
	return rolloutStatus(l), nil
}

// rolloutFleet lists the tenant's active and quarantined devices of the
// given hardware models with what they run now.
func (s *Server) rolloutFleet(ctx context.Context, tid string, hws []string) ([]rollout.Device, error) {
	var fleet []rollout.Device
	after := ""
	for {
		ds, err := s.store.ListDevices(ctx, store.DeviceFilter{Tenant: tid, After: after, Limit: 1000})
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			if d.State != store.DeviceActive && d.State != store.DeviceQuarantined {
				continue
			}
			hw, err := s.deviceHardware(ctx, tid, d.ID)
			if errors.Is(err, errNoHardware) {
				continue
			} else if err != nil {
				return nil, err
			}
			if !slices.Contains(hws, hw) {
				continue
			}
			if len(fleet) >= maxRolloutFleet {
				return nil, api.Invalid(fmt.Errorf("a rollout may select at most %d devices; narrow the selector or split the fleet", maxRolloutFleet))
			}
			fleet = append(fleet, rollout.Device{ID: d.ID, HardwareID: hw, Tags: d.Tags, Release: s.currentRelease(ctx, tid, d)})
		}
		if len(ds) < 1000 {
			return fleet, nil
		}
		after = ds[len(ds)-1].ID
	}
}

// currentRelease is what the device runs now, "" if unknown: its last
// committed OTA status, else firmware.release in its twin, else its
// release tag.
func (s *Server) currentRelease(ctx context.Context, tid string, d *store.Device) string {
	if rec, _ := lastOTAStatus(ctx, s.otaMeta(tid), d.ID); rec != nil && rec.Status.Phase == wire.OTAPhaseCommitted && rec.Status.Release != "" {
		return rec.Status.Release
	}
	if tw, err := s.Twins.Get(ctx, tid, d.ID, wire.DefaultTwinName); err == nil && len(tw.Reported.Doc) > 0 {
		var rep struct {
			Firmware struct {
				Release string `json:"release"`
			} `json:"firmware"`
		}
		if json.Unmarshal(tw.Reported.Doc, &rep) == nil && rep.Firmware.Release != "" {
			return rep.Firmware.Release
		}
	}
	return d.Tags["release"]
}

// loadRollout returns a loaded engine; r.mu must be held.
func (s *Server) loadRollout(ctx context.Context, tid, id string) (*liveRollout, error) {
	r := s.rollouts
	if l := r.engines[rolloutKey(tid, id)]; l != nil {
		return l, nil
	}
	snap, err := s.rolloutStore(tid).Load(ctx, id)
	if errors.Is(err, rollout.ErrNotFound) {
		return nil, &api.Error{Status: http.StatusNotFound, Title: "Not found", Detail: "no such rollout; see ward rollout list"}
	}
	if err != nil {
		return nil, err
	}
	e, err := rollout.Restore(snap, s.now, nil)
	if err != nil {
		return nil, fmt.Errorf("restore rollout %s: %w", id, err)
	}
	l := &liveRollout{tenant: tid, e: e, spec: snap.Spec}
	l.saved, _ = json.Marshal(e.Snapshot())
	r.engines[rolloutKey(tid, id)] = l
	// Devices that committed before a restart get their health gate again.
	for _, d := range snap.Devices {
		if d.State == rollout.DeviceCommitted {
			s.openHealthGate(ctx, l, d.ID)
		}
	}
	return l, nil
}

// saveRollout stores the engine's snapshot unless it did not change.
func (s *Server) saveRollout(ctx context.Context, l *liveRollout) error {
	snap := l.e.Snapshot()
	b, err := json.Marshal(snap)
	if err != nil {
		return err
	}
	if bytes.Equal(b, l.saved) {
		return nil
	}
	if err := s.rolloutStore(l.tenant).Save(ctx, snap); err != nil {
		return err
	}
	l.saved = b
	return nil
}

// advance saves the engine and carries out its actions, feeding back
// assignment failures; r.mu must be held. auto says the engine decided
// state changes itself (they are audited as the rollout's).
func (s *Server) advance(ctx context.Context, l *liveRollout, acts []rollout.Action, auto bool) error {
	id := l.e.ID()
	actor := "rollout:" + id
	for len(acts) > 0 {
		if err := s.saveRollout(ctx, l); err != nil {
			return err
		}
		var more []rollout.Action
		failed := map[string]bool{}
		for _, a := range acts {
			switch a.Kind {
			case rollout.ActAssign:
				if _, err := s.assignRelease(ctx, actor, l.tenant, a.Device, a.Release); err != nil {
					failed[a.Device] = true
					msg := "assignment refused: " + publicError(err)
					s.log.Info("rollout assignment failed", "tenant", l.tenant, "rollout", id, "device", a.Device, "err", err)
					next, herr := l.e.HandleStatus(a.Device, wire.OTAStatus{Rollout: id, Release: l.spec.Release, Phase: wire.OTAPhaseFailed, Error: msg, Time: s.now()})
					if herr != nil {
						return herr
					}
					more = append(more, next...)
				}
			case rollout.ActPublishJob:
				if failed[a.Device] || a.Job == nil {
					continue
				}
				s.publishJob(l.tenant, a.Device, *a.Job)
			case rollout.ActRollBack:
				s.dropHealthGate(l.tenant, a.Device)
				s.rollBack(ctx, l, a)
			case rollout.ActPause, rollout.ActAbort, rollout.ActComplete:
				if !auto && a.Kind != rollout.ActComplete {
					continue // the operator's command is audited under their name
				}
				if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.rollout_" + a.Kind, Target: "rollout:" + id, Tenant: l.tenant,
					Detail: a.Reason}); err != nil {
					return err
				}
				s.log.Info("rollout state changed", "tenant", l.tenant, "rollout", id, "change", a.Kind, "reason", a.Reason)
				if ev := map[string]string{rollout.ActPause: monitor.RolloutPaused, rollout.ActAbort: monitor.RolloutAborted}[a.Kind]; ev != "" {
					s.Monitor.Emit(monitor.Event{Type: ev, Tenant: l.tenant, Reason: a.Reason, Detail: "rollout " + id + " of " + l.spec.Release})
				}
			}
		}
		acts = more
	}
	return s.saveRollout(ctx, l)
}

// publicError is an error's text when it is safe for the audit log and
// operators (an API error's detail), else a generic phrase.
func publicError(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Detail
	}
	return "server error (see the server log)"
}

func (s *Server) publishJob(tid, device string, job wire.OTAJob) {
	b, err := json.Marshal(job)
	if err == nil {
		err = s.Gateway.Publish(tid, device, wire.TopicOTAJob, b, 1)
	}
	if err != nil {
		// Offline: the Director names the release; the device finds it at
		// its next check, or the rollout times it out.
		s.log.Debug("OTA job not published", "tenant", tid, "device", device, "err", err)
	}
}

// rollBack makes the device's Director name its previous release again.
// It cannot go below the device's floor: anti-rollback wins, and the
// refusal is audited.
func (s *Server) rollBack(ctx context.Context, l *liveRollout, a rollout.Action) {
	actor := "rollout:" + l.e.ID()
	if a.Release == "" {
		_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.rollback", Target: "device:" + a.Device, Tenant: l.tenant,
			Result: audit.ResultFailed, Detail: "no previous release known for the device (" + a.Reason + ")"})
		return
	}
	if _, err := s.assignRelease(ctx, actor, l.tenant, a.Device, a.Release); err != nil {
		_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.rollback", Target: "device:" + a.Device, Tenant: l.tenant,
			Result: audit.ResultFailed, Detail: "back to " + a.Release + ": " + publicError(err)})
		return
	}
	_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.rollback", Target: "device:" + a.Device, Tenant: l.tenant,
		Detail: "back to " + a.Release + " (" + a.Reason + ")"})
	// Without a rollout ID: the device's reports about its old release
	// are not this rollout's progress.
	s.publishJob(l.tenant, a.Device, wire.OTAJob{Release: a.Release})
}

// rolloutStatus feeds an ota/status report to the rollout it names.
// Errors are logged: a report the rollout cannot use must not make the
// gateway refuse the device's message.
func (s *Server) rolloutStatus(ctx context.Context, tid, device string, st wire.OTAStatus) {
	if st.Rollout == "" || s.rollouts == nil {
		return
	}
	r := s.rollouts
	r.mu.Lock()
	defer r.mu.Unlock()
	l, err := s.loadRollout(ctx, tid, st.Rollout)
	if err != nil {
		s.log.Debug("ota/status names an unknown rollout", "tenant", tid, "device", device, "rollout", st.Rollout)
		return
	}
	acts, err := l.e.HandleStatus(device, st)
	if err != nil {
		s.log.Info("ota/status not used by its rollout", "tenant", tid, "device", device, "rollout", st.Rollout, "err", err)
		return
	}
	if l.e.DeviceState(device) == rollout.DeviceCommitted {
		s.openHealthGate(ctx, l, device)
	}
	if err := s.advance(ctx, l, acts, true); err != nil {
		s.log.Error("rollout", "tenant", tid, "rollout", st.Rollout, "err", err)
	}
}

// openHealthGate starts a committed device's health window and, when the
// device has an enrolled AK, challenges it; r.mu must be held.
func (s *Server) openHealthGate(ctx context.Context, l *liveRollout, device string) {
	key := rolloutKey(l.tenant, device)
	r := s.rollouts
	r.healthMu.Lock()
	if g := r.health[key]; g != nil && g.rollout == l.e.ID() {
		r.healthMu.Unlock()
		return
	}
	g := &healthGate{rollout: l.e.ID(), release: l.spec.Release, since: s.now()}
	r.health[key] = g
	r.healthMu.Unlock()
	if _, err := s.attest.st.AK(ctx, l.tenant, device); err == nil {
		r.healthMu.Lock()
		g.needAttest = true
		r.healthMu.Unlock()
		s.challengeForGate(ctx, l.tenant, device, g)
	} else if !errors.Is(err, attest.ErrNotFound) {
		s.log.Error("rollout health gate: read the device's AK", "tenant", l.tenant, "device", device, "err", err)
		r.healthMu.Lock()
		g.needAttest = true // fail closed: retried at the next tick
		r.healthMu.Unlock()
	}
}

// challengeForGate sends the attestation challenge of a health gate.
func (s *Server) challengeForGate(ctx context.Context, tid, device string, g *healthGate) {
	dev, err := s.attestDevice(ctx, tid, device) // appraised against g.release
	if err == nil {
		var c *wire.AttestChallenge
		if c, err = s.attest.v.NewChallenge(ctx, dev); err == nil {
			err = s.publishChallenge(tid, device, c)
		}
	}
	if err != nil {
		s.log.Info("rollout health gate: attestation challenge not sent; retried", "tenant", tid, "device", device, "err", err)
		return
	}
	s.rollouts.healthMu.Lock()
	g.challenged = true
	s.rollouts.healthMu.Unlock()
}

func (s *Server) dropHealthGate(tid, device string) {
	r := s.rollouts
	r.healthMu.Lock()
	delete(r.health, rolloutKey(tid, device))
	r.healthMu.Unlock()
}

// rolloutAttestRelease makes a device in a health gate be appraised
// against the release the rollout installs, with what it ran before as
// the previous release (called by attestDevice; takes healthMu only).
func (s *Server) rolloutAttestRelease(tid, device string, dev *attest.Device) {
	if s.rollouts == nil {
		return
	}
	r := s.rollouts
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	if g := r.health[rolloutKey(tid, device)]; g != nil {
		if dev.Release != g.release {
			dev.PreviousRelease = dev.Release
		}
		dev.Release = g.release
	}
}

// rolloutVerdict records an attestation verdict for a device in a
// health gate (called by applyVerdict; takes healthMu only). Only a pass
// that matched the new release's reference values counts.
func (s *Server) rolloutVerdict(dev attest.Device, v attest.Verdict) {
	if s.rollouts == nil {
		return
	}
	r := s.rollouts
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	g := r.health[rolloutKey(dev.Tenant, dev.ID)]
	if g == nil || !g.needAttest || g.attest != "" || v.Time.Before(g.since) {
		return
	}
	switch {
	case v.Result == attest.Pass && v.Release == g.release:
		g.attest = "pass"
	case v.Result == attest.Pass:
		g.attest = "passed against " + v.Release + ", not " + g.release
	case v.Result == attest.Fail:
		g.attest = "failed: " + strings.Join(v.Reasons, "; ")
	}
}

// TickRollouts advances every running rollout of every tenant to the
// clock: health verdicts that are due, then the engine's Tick.
func (s *Server) TickRollouts(ctx context.Context) error {
	ts, err := s.store.ListTenants(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, tn := range ts {
		ids, err := s.rolloutStore(tn.ID).List(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, id := range ids {
			if err := s.tickRollout(ctx, tn.ID, id); err != nil {
				errs = append(errs, fmt.Errorf("rollout %s of %s: %w", id, tn.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (s *Server) tickRollout(ctx context.Context, tid, id string) error {
	r := s.rollouts
	r.mu.Lock()
	defer r.mu.Unlock()
	l, err := s.loadRollout(ctx, tid, id)
	if err != nil {
		return err
	}
	if st, _ := l.e.State(); st != rollout.StateRunning {
		return nil
	}
	now := s.now()
	type verdict struct {
		h   rollout.HealthResult
		why string
	}
	var due []verdict
	var rechallenge []string
	r.healthMu.Lock()
	for key, g := range r.health {
		device, ok := strings.CutPrefix(key, tid+"/")
		if !ok || g.rollout != id {
			continue
		}
		if l.e.DeviceState(device) != rollout.DeviceCommitted {
			delete(r.health, key) // timed out, aborted or rolled back meanwhile
			continue
		}
		h := rollout.HealthResult{Device: device, Healthy: true, AttestationPassed: !g.needAttest || g.attest == "pass", HighSeverityEvent: g.highEvent != ""}
		attestFailed := g.needAttest && g.attest != "" && g.attest != "pass"
		windowOver := !now.Before(g.since.Add(l.spec.HealthWindow))
		switch {
		case h.HighSeverityEvent || attestFailed:
			due = append(due, verdict{h, fmt.Sprintf("security event %q, attestation %q", g.highEvent, g.attest)})
		case windowOver && h.AttestationPassed:
			due = append(due, verdict{h, "healthy"})
		case g.needAttest && !g.challenged:
			rechallenge = append(rechallenge, device)
		}
	}
	for _, v := range due {
		delete(r.health, rolloutKey(tid, v.h.Device))
	}
	gates := map[string]*healthGate{}
	for _, d := range rechallenge {
		gates[d] = r.health[rolloutKey(tid, d)]
	}
	r.healthMu.Unlock()
	for d, g := range gates {
		if _, err := s.attest.st.AK(ctx, tid, d); err == nil {
			s.challengeForGate(ctx, tid, d, g)
		} else if errors.Is(err, attest.ErrNotFound) {
			r.healthMu.Lock()
			g.needAttest = false // the AK went away: the healthy report alone counts
			r.healthMu.Unlock()
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].h.Device < due[j].h.Device })
	for _, v := range due {
		acts, err := l.e.HandleHealth(v.h)
		if err != nil {
			return err
		}
		if v.why == "healthy" {
			s.log.Debug("rollout health verdict", "tenant", tid, "rollout", id, "device", v.h.Device, "verdict", v.why)
		} else {
			// The operator sees "health gate: ..." in the audit log; the
			// detail (which event, which attestation result) is here.
			s.log.Warn("rollout health gate failed", "tenant", tid, "rollout", id, "device", v.h.Device, "verdict", v.why)
		}
		if err := s.advance(ctx, l, acts, true); err != nil {
			return err
		}
	}
	return s.advance(ctx, l, l.e.Tick(), true)
}

// rolloutLoop runs TickRollouts until ctx ends.
func (s *Server) rolloutLoop(ctx context.Context) {
	t := time.NewTicker(rolloutTickPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.TickRollouts(ctx); err != nil {
				s.log.Error("rollout tick", "err", err)
			}
		}
	}
}

// RolloutCommand applies approve, pause, resume or abort.
func (s *Server) RolloutCommand(ctx context.Context, actor, tid, id, cmd, reason string) (*api.RolloutStatus, error) {
	if _, err := s.store.GetTenant(ctx, tid); err != nil {
		return nil, err
	}
	r := s.rollouts
	r.mu.Lock()
	defer r.mu.Unlock()
	l, err := s.loadRollout(ctx, tid, id)
	if err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "no reason given"
	}
	reason = strings.ToValidUTF8(reason, "?")
	var acts []rollout.Action
	switch cmd {
	case "approve":
		acts, err = l.e.Approve(actor)
	case "pause":
		acts, err = l.e.Pause(actor, reason)
	case "resume":
		acts, err = l.e.Resume(actor)
	case "abort":
		acts, err = l.e.Abort(actor, reason)
	default:
		return nil, api.Invalid(fmt.Errorf("unknown rollout command %q", cmd))
	}
	target := "rollout:" + id
	if err != nil {
		st, _ := l.e.State()
		detail := ""
		switch {
		case errors.Is(err, rollout.ErrSelfApproval):
			detail = "the creator of a rollout cannot approve it; another operator must"
		case errors.Is(err, rollout.ErrState):
			detail = fmt.Sprintf("cannot %s a rollout that is %s", cmd, st)
		default:
			return nil, err
		}
		_ = s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.rollout_" + cmd, Target: target, Tenant: tid, Result: audit.ResultDenied, Detail: detail})
		return nil, &api.Error{Status: http.StatusConflict, Title: "Conflict", Detail: detail}
	}
	if err := s.Audit(ctx, audit.Entry{Actor: actor, Action: "ota.rollout_" + cmd, Target: target, Tenant: tid, Detail: reason}); err != nil {
		return nil, err
	}
	if err := s.advance(ctx, l, acts, false); err != nil {
		return nil, err
	}
	return rolloutStatus(l), nil
}

// RolloutStatus returns a rollout's progress.
func (s *Server) RolloutStatus(ctx context.Context, tid, id string) (*api.RolloutStatus, error) {
	if _, err := s.store.GetTenant(ctx, tid); err != nil {
		return nil, err
	}
	r := s.rollouts
	r.mu.Lock()
	defer r.mu.Unlock()
	l, err := s.loadRollout(ctx, tid, id)
	if err != nil {
		return nil, err
	}
	return rolloutStatus(l), nil
}

// ListRollouts lists the tenant's rollouts by ID, without failure lists.
func (s *Server) ListRollouts(ctx context.Context, tid string) ([]api.RolloutStatus, error) {
	if _, err := s.store.GetTenant(ctx, tid); err != nil {
		return nil, err
	}
	ids, err := s.rolloutStore(tid).List(ctx)
	if err != nil {
		return nil, err
	}
	sort.Strings(ids)
	r := s.rollouts
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.RolloutStatus, 0, len(ids))
	for _, id := range ids {
		l, err := s.loadRollout(ctx, tid, id)
		if err != nil {
			return nil, err
		}
		st := rolloutStatus(l)
		st.Failures = nil
		out = append(out, *st)
	}
	return out, nil
}

// rolloutStatus converts the engine's status; r.mu must be held.
func rolloutStatus(l *liveRollout) *api.RolloutStatus {
	es := l.e.Status()
	snap := l.e.Snapshot()
	out := &api.RolloutStatus{ID: es.ID, Release: l.spec.Release, State: es.State, Reason: es.Reason, Creator: snap.Creator,
		Approver: snap.Approver, Phase: es.Phase, Devices: len(snap.Devices)}
	for _, p := range es.Phases {
		out.Phases = append(out.Phases, api.RolloutPhase{Name: p.Name, Percent: p.Percent, Devices: p.Devices, Pending: p.Pending,
			InProgress: p.InProgress, Succeeded: p.Succeeded, Failed: p.Failed, RolledBack: p.RolledBack, TimedOut: p.TimedOut})
	}
	for _, d := range snap.Devices {
		switch d.State {
		case rollout.DeviceFailed, rollout.DeviceRolledBack, rollout.DeviceTimedOut:
			if len(out.Failures) < maxRolloutFailuresShown {
				out.Failures = append(out.Failures, api.RolloutDevice{Device: d.ID, State: d.State})
			}
		}
	}
	return out
}

// maxOTAGetSize bounds an ota/get payload: empty or "{}".
const maxOTAGetSize = 64

// ingestOTAGet sends a device that (re)connected the job it should be
// running, which it may have missed while offline: the job of a rollout
// that started it and has no verdict from it yet, else the release its
// Director names unless the device already reported how that ended. A
// job the device already handled is harmless: the agent resumes the
// same release, or finds it runs it already.
func (s *Server) ingestOTAGet(ctx context.Context, id broker.Identity, _ string, payload []byte) error {
	if p := bytes.TrimSpace(payload); len(payload) > maxOTAGetSize || (len(p) > 0 && !bytes.Equal(p, []byte("{}"))) {
		return errors.New(`ota/get: payload must be empty or {}`)
	}
	job, err := s.rolloutJob(ctx, id.Tenant, id.Device)
	if err != nil {
		return err
	}
	if job == nil {
		rel, err := s.directorRelease(ctx, id.Tenant, id.Device)
		if err != nil || rel == "" {
			return err
		}
		last, err := lastOTAStatus(ctx, s.otaMeta(id.Tenant), id.Device)
		if err != nil {
			return err
		}
		if last != nil && last.Status.Release == rel && finalOTAPhase(last.Status.Phase) {
			return nil
		}
		job = &wire.OTAJob{Release: rel}
	}
	s.publishJob(id.Tenant, id.Device, *job)
	return nil
}

func finalOTAPhase(p string) bool {
	return p == wire.OTAPhaseCommitted || p == wire.OTAPhaseRolledBack || p == wire.OTAPhaseFailed
}

// rolloutJob returns the job of the rollout that has the device in
// progress, if any.
func (s *Server) rolloutJob(ctx context.Context, tid, device string) (*wire.OTAJob, error) {
	if s.rollouts == nil {
		return nil, nil
	}
	ids, err := s.rolloutStore(tid).List(ctx)
	if err != nil {
		return nil, err
	}
	r := s.rollouts
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		l, err := s.loadRollout(ctx, tid, id)
		if err != nil {
			s.log.Warn("rollout unreadable", "tenant", tid, "rollout", id, "err", err)
			continue
		}
		if j := l.e.PendingJob(device); j != nil {
			return j, nil
		}
	}
	return nil, nil
}

// directorRelease is the release the device's Director names ("" if
// none).
func (s *Server) directorRelease(ctx context.Context, tid, device string) (string, error) {
	b, err := s.otaMeta(tid).Get(ctx, "director/"+device+"/targets.json")
	if errors.Is(err, tufrepo.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	tm, err := metadata.Targets().FromBytes(b)
	if err != nil {
		return "", err
	}
	for _, tf := range tm.Signed.Targets {
		if tf.Custom == nil {
			continue
		}
		if c, err := ota.ParseCustom(*tf.Custom); err == nil && c.Kind == ota.KindImage {
			return c.Release, nil
		}
	}
	return "", nil
}

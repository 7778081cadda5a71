package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wardiot/ward/wire"
)

// States of a rollout.
const (
	StatePendingApproval = "pending_approval"
	StateRunning         = "running"
	StatePaused          = "paused"
	StateAborted         = "aborted"
	StateCompleted       = "completed"
)

// States of a device within a rollout.
const (
	DevicePending    = "pending"     // not started (or waiting to retry)
	DeviceInProgress = "in_progress" // job published, no verdict yet
	DeviceCommitted  = "committed"   // committed, waiting for the health gate
	DeviceSucceeded  = "succeeded"
	DeviceFailed     = OutcomeFailed
	DeviceRolledBack = OutcomeRolledBack
	DeviceTimedOut   = OutcomeTimedOut
)

// Kinds of [Action].
const (
	// ActAssign: make the device's Director name Target (Release).
	ActAssign = "assign"
	// ActPublishJob: publish Job on ward/v1/<device>/ota/job.
	ActPublishJob = "publish_job"
	// ActRollBack: make the device's Director name its previous release
	// (Release) again.
	ActRollBack = "roll_back"
	// ActPause, ActAbort, ActComplete report a change of rollout state,
	// with Reason, for the audit log and the operator.
	ActPause    = "pause"
	ActAbort    = "abort"
	ActComplete = "complete"
)

var (
	// ErrSelfApproval is returned when the creator approves their own rollout.
	ErrSelfApproval = errors.New("rollout: a rollout must be approved by another operator than its creator")
	// ErrState is returned for a command the rollout's state does not allow.
	ErrState = errors.New("rollout: not allowed in the rollout's current state")
	// ErrUnknownDevice is returned for an event about a device outside the rollout.
	ErrUnknownDevice = errors.New("rollout: device is not part of this rollout")
)

// Device is a fleet member as the engine needs it.
type Device struct {
	ID         string            `json:"id"`
	HardwareID string            `json:"hardware_id"`
	Tags       map[string]string `json:"tags,omitempty"`
	// Release is what the device runs now; a rollback goes back to it.
	Release string `json:"release"`
}

// Action is something the caller must do for the engine.
type Action struct {
	Kind    string
	Device  string
	Target  string // ActAssign: image target path
	Release string // ActAssign: new release; ActRollBack: previous release
	Job     *wire.OTAJob
	Reason  string
}

// HealthResult is the health gate verdict for one device after its
// health window: a healthy report, attestation passing against the new
// release's reference values, and no high-severity security event. The
// server assembles it from the twin, the attestation verifier and the
// monitor.
type HealthResult struct {
	Device            string
	Healthy           bool
	AttestationPassed bool
	HighSeverityEvent bool
}

func (h HealthResult) pass() bool { return h.Healthy && h.AttestationPassed && !h.HighSeverityEvent }

func (h HealthResult) reason() string {
	var r []string
	if !h.Healthy {
		r = append(r, "unhealthy")
	}
	if !h.AttestationPassed {
		r = append(r, "attestation failed")
	}
	if h.HighSeverityEvent {
		r = append(r, "high-severity security event")
	}
	return strings.Join(r, ", ")
}

// Config creates an [Engine].
type Config struct {
	ID      string
	Spec    *Spec
	Creator string
	Fleet   []Device // the tenant's devices; the selector picks from them
	Now     func() time.Time
	// LoadLocation resolves IANA zones (time.LoadLocation by default). It
	// is called only by [New] and [Restore], so the engine itself does no
	// I/O afterwards.
	LoadLocation func(string) (*time.Location, error)
}

type phase struct {
	name    string
	percent int
	soak    time.Duration
}

type device struct {
	Device
	bucket   int
	phase    int
	loc      *time.Location
	state    string
	attempts int
	started  time.Time
	deadline time.Time
}

// Engine is one rollout's state machine. It is not safe for concurrent
// use: the caller serialises events per rollout.
type Engine struct {
	id, creator, approver string
	spec                  *Spec
	now                   func() time.Time
	phases                []phase
	state, reason         string
	phase                 int
	phaseDoneAt           time.Time
	runningSince          time.Time
	starts                []time.Time
	resumeExecuted        int
	devices               map[string]*device
	order                 []*device
	// resumeOutcomes counts the finished devices per terminal state at
	// the last resume, as resumeExecuted counts them all: abort rules
	// judge only what finished after it.
	resumeOutcomes map[string]int
	// phaseAccepted: an operator resumed after the current phase had
	// finished, accepting its success share.
	phaseAccepted bool
}

// Bucket is the device's deterministic position in a rollout, 0..99:
// SHA-256(deviceID || rolloutID) mod 100. A device's stage never changes
// with pauses, restarts or fleet changes, and differs between rollouts so
// the same devices are not always first.
func Bucket(deviceID, rolloutID string) int {
	h := sha256.Sum256([]byte(deviceID + rolloutID))
	return int(binary.BigEndian.Uint64(h[:8]) % 100)
}

// New starts a rollout: selects the fleet, computes buckets and phases.
// Without required approval it is running at once.
func New(cfg Config) (*Engine, error) {
	if cfg.ID == "" || cfg.Spec == nil || cfg.Creator == "" {
		return nil, errors.New("rollout: id, spec and creator are required")
	}
	if err := cfg.Spec.Validate(); err != nil {
		return nil, err
	}
	e, err := build(cfg)
	if err != nil {
		return nil, err
	}
	e.state = StatePendingApproval
	if !cfg.Spec.Approval.Required {
		e.state, e.runningSince = StateRunning, e.now()
	}
	return e, nil
}

func build(cfg Config) (*Engine, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LoadLocation == nil {
		cfg.LoadLocation = time.LoadLocation
	}
	s := cfg.Spec
	e := &Engine{id: cfg.ID, creator: cfg.Creator, spec: s, now: cfg.Now, devices: map[string]*device{}}
	if len(s.Canary.Devices) > 0 || s.Canary.Percent > 0 {
		e.phases = append(e.phases, phase{"canary", s.Canary.Percent, s.Canary.Soak})
	}
	for i, st := range s.Stages {
		e.phases = append(e.phases, phase{fmt.Sprintf("stage %d", i+1), st.Percent, st.Soak})
	}
	zones := map[string]*time.Location{}
	zone := func(name string) *time.Location {
		if l, ok := zones[name]; ok {
			return l
		}
		l, err := cfg.LoadLocation(name)
		if err != nil {
			l = nil
		}
		zones[name] = l
		return l
	}
	var defLoc = time.UTC
	zoneTag := "tz"
	if m := s.Maintenance; m != nil {
		if m.ZoneTag != "" {
			zoneTag = m.ZoneTag
		}
		if m.DefaultZone != "" {
			if defLoc = zone(m.DefaultZone); defLoc == nil {
				return nil, fmt.Errorf("rollout: unknown defaultZone %q", m.DefaultZone)
			}
		}
	}
	canary := map[string]bool{}
	for _, d := range s.Canary.Devices {
		canary[d] = true
	}
	for _, d := range cfg.Fleet {
		if !s.Selector.match(d) {
			continue
		}
		rec := &device{Device: d, bucket: Bucket(d.ID, cfg.ID), state: DevicePending, loc: defLoc}
		if l := zone(d.Tags[zoneTag]); d.Tags[zoneTag] != "" && l != nil {
			rec.loc = l
		}
		rec.phase = e.memberPhase(rec, canary)
		e.devices[d.ID] = rec
		e.order = append(e.order, rec)
	}
	if len(e.order) == 0 {
		return nil, errors.New("rollout: the selector matches no device")
	}
	for d := range canary {
		if e.devices[d] == nil {
			return nil, fmt.Errorf("rollout: canary device %q is not selected", d)
		}
	}
	sort.Slice(e.order, func(i, j int) bool {
		a, b := e.order[i], e.order[j]
		if a.bucket != b.bucket {
			return a.bucket < b.bucket
		}
		return a.ID < b.ID
	})
	return e, nil
}

func (s Selector) match(d Device) bool {
	if s.Hardware != "" && d.HardwareID != s.Hardware {
		return false
	}
	if len(s.Devices) > 0 && !slices.Contains(s.Devices, d.ID) {
		return false
	}
	for k, v := range s.Tags {
		if d.Tags[k] != v {
			return false
		}
	}
	return true
}

func (e *Engine) memberPhase(d *device, canary map[string]bool) int {
	if len(canary) > 0 {
		if canary[d.ID] {
			return 0
		}
		for i := 1; i < len(e.phases); i++ {
			if d.bucket < e.phases[i].percent {
				return i
			}
		}
	}
	for i, p := range e.phases {
		if len(canary) > 0 && i == 0 {
			continue
		}
		if d.bucket < p.percent {
			return i
		}
	}
	return len(e.phases) - 1
}

// ID returns the rollout ID.
func (e *Engine) ID() string { return e.id }

// State returns the rollout state and the reason of the last change.
func (e *Engine) State() (state, reason string) { return e.state, e.reason }

// Phase returns the device's phase index (0 is the canary when there is
// one) and bucket.
func (e *Engine) Phase(deviceID string) (phase, bucket int, ok bool) {
	d := e.devices[deviceID]
	if d == nil {
		return 0, 0, false
	}
	return d.phase, d.bucket, true
}

// PendingJob returns the job of a device the rollout started and has no
// verdict from yet (nil otherwise), to send again to a device that was
// offline when it was first published. A rollout awaiting approval,
// aborted or completed has none; a paused one still lets started devices
// finish.
func (e *Engine) PendingJob(deviceID string) *wire.OTAJob {
	d := e.devices[deviceID]
	if d == nil || d.state != DeviceInProgress || (e.state != StateRunning && e.state != StatePaused) {
		return nil
	}
	return &wire.OTAJob{Rollout: e.id, Attempt: d.attempts, Release: e.spec.Release, Deadline: d.deadline, HealthWindow: e.spec.HealthWindow}
}

// DeviceState returns the device's state in the rollout.
func (e *Engine) DeviceState(deviceID string) string {
	if d := e.devices[deviceID]; d != nil {
		return d.state
	}
	return ""
}

// Approve starts a rollout awaiting approval; the approver must not be
// its creator.
func (e *Engine) Approve(operator string) ([]Action, error) {
	if e.state != StatePendingApproval {
		return nil, ErrState
	}
	if operator == "" || operator == e.creator {
		return nil, ErrSelfApproval
	}
	e.approver = operator
	e.state, e.reason, e.runningSince = StateRunning, "approved by "+operator, e.now()
	return e.Tick(), nil
}

// Pause stops starting devices; devices already updating finish.
func (e *Engine) Pause(operator, reason string) ([]Action, error) {
	if e.state != StateRunning {
		return nil, ErrState
	}
	return []Action{e.pause(fmt.Sprintf("paused by %s: %s", operator, reason))}, nil
}

// Resume continues a paused rollout. The operator has judged the
// outcomes that caused the pause, so from now on the abort rules
// (minExecuted included) count only devices that finish after the
// resume: the old failures neither pause it again at the next device
// nor dilute new ones. If the current phase has finished, its success
// share is accepted as it is; otherwise the success threshold still
// judges it when it finishes.
func (e *Engine) Resume(operator string) ([]Action, error) {
	if e.state != StatePaused {
		return nil, ErrState
	}
	e.state, e.reason = StateRunning, "resumed by "+operator
	e.resumeExecuted, e.resumeOutcomes = e.executed(), e.outcomes()
	total, done, _ := e.phaseCounts()
	e.phaseAccepted = done == total
	return e.Tick(), nil
}

// Abort ends the rollout and rolls back devices still updating.
func (e *Engine) Abort(operator, reason string) ([]Action, error) {
	if e.state == StateAborted || e.state == StateCompleted {
		return nil, ErrState
	}
	return e.abort(fmt.Sprintf("aborted by %s: %s", operator, reason)), nil
}

func (e *Engine) pause(reason string) Action {
	e.state, e.reason = StatePaused, reason
	return Action{Kind: ActPause, Reason: reason}
}

func (e *Engine) abort(reason string) []Action {
	e.state, e.reason = StateAborted, reason
	acts := []Action{{Kind: ActAbort, Reason: reason}}
	for _, d := range e.order {
		if d.state == DeviceInProgress || d.state == DeviceCommitted {
			d.state = DeviceRolledBack
			acts = append(acts, Action{Kind: ActRollBack, Device: d.ID, Release: d.Release, Reason: reason})
		}
	}
	return acts
}

// HandleStatus consumes a device's OTA status report.
func (e *Engine) HandleStatus(deviceID string, st wire.OTAStatus) ([]Action, error) {
	d := e.devices[deviceID]
	if d == nil || st.Rollout != e.id {
		return nil, ErrUnknownDevice
	}
	if st.Release != e.spec.Release {
		return nil, fmt.Errorf("rollout: status for release %q, rollout installs %q", st.Release, e.spec.Release)
	}
	if d.state != DeviceInProgress && d.state != DeviceCommitted {
		return nil, nil // late or duplicate report
	}
	var acts []Action
	switch st.Phase {
	case wire.OTAPhaseCommitted:
		d.state = DeviceCommitted
	case wire.OTAPhaseFailed:
		if d.attempts <= e.spec.Retries {
			d.state = DevicePending // retried by Tick, inside window and rate
		} else {
			d.state = DeviceFailed
		}
	case wire.OTAPhaseRolledBack:
		d.state = DeviceRolledBack
		acts = append(acts, Action{Kind: ActRollBack, Device: d.ID, Release: d.Release, Reason: "device rolled back: " + st.Error})
	}
	return append(acts, e.Tick()...), nil
}

// HandleHealth consumes a device's health gate verdict. A failing device
// is rolled back.
func (e *Engine) HandleHealth(h HealthResult) ([]Action, error) {
	d := e.devices[h.Device]
	if d == nil {
		return nil, ErrUnknownDevice
	}
	if d.state != DeviceCommitted {
		return nil, nil // no verdict expected (timed out, aborted, duplicate)
	}
	var acts []Action
	if h.pass() {
		d.state = DeviceSucceeded
	} else {
		d.state = DeviceRolledBack
		acts = append(acts, Action{Kind: ActRollBack, Device: d.ID, Release: d.Release, Reason: "health gate: " + h.reason()})
	}
	return append(acts, e.Tick()...), nil
}

func terminal(s string) bool {
	switch s {
	case DeviceSucceeded, DeviceFailed, DeviceRolledBack, DeviceTimedOut:
		return true
	}
	return false
}

func (e *Engine) executed() int {
	n := 0
	for _, d := range e.order {
		if terminal(d.state) {
			n++
		}
	}
	return n
}

// phaseCounts counts the current phase's devices, those finished and
// those succeeded.
func (e *Engine) phaseCounts() (total, done, ok int) {
	for _, d := range e.order {
		if d.phase == e.phase {
			total++
			if terminal(d.state) {
				done++
			}
			if d.state == DeviceSucceeded {
				ok++
			}
		}
	}
	return total, done, ok
}

// outcomes counts the devices in each terminal state.
func (e *Engine) outcomes() map[string]int {
	m := map[string]int{}
	for _, d := range e.order {
		if terminal(d.state) {
			m[d.state]++
		}
	}
	return m
}

// Tick advances the rollout to the clock: timeouts, abort criteria, phase
// completion and soak, then starts devices inside their windows and the
// rate limit. Call it periodically (every few seconds) and after events.
func (e *Engine) Tick() []Action {
	if e.state != StateRunning {
		return nil
	}
	now := e.now()
	var acts []Action
	for _, d := range e.order {
		if (d.state == DeviceInProgress || d.state == DeviceCommitted) && !now.Before(d.deadline) {
			if d.state == DeviceInProgress && d.attempts <= e.spec.Retries {
				d.state = DevicePending
			} else {
				d.state = DeviceTimedOut
				acts = append(acts, Action{Kind: ActRollBack, Device: d.ID, Release: d.Release, Reason: "timed out"})
			}
		}
	}
	if a := e.checkAbort(); a != nil {
		return append(acts, a...)
	}
	for {
		total, done, ok := e.phaseCounts()
		if done < total {
			break
		}
		p := e.phases[e.phase]
		if total > 0 && ok*100 < e.spec.Success.MinPercent*total && !e.phaseAccepted {
			return append(acts, e.pause(fmt.Sprintf("%s: %d of %d devices succeeded, below the %d%% success threshold", p.name, ok, total, e.spec.Success.MinPercent)))
		}
		if e.phaseDoneAt.IsZero() {
			e.phaseDoneAt = now
		}
		if now.Before(e.phaseDoneAt.Add(p.soak)) {
			return acts // soaking
		}
		if e.phase == len(e.phases)-1 {
			e.state, e.reason = StateCompleted, "all phases done"
			return append(acts, Action{Kind: ActComplete, Reason: e.reason})
		}
		e.phase++
		e.phaseDoneAt, e.phaseAccepted = time.Time{}, false
	}
	budget := e.budget(now)
	for _, d := range e.order {
		if budget <= 0 {
			break
		}
		if d.phase > e.phase || d.state != DevicePending || !e.inWindow(d, now) {
			continue
		}
		d.state, d.attempts, d.started, d.deadline = DeviceInProgress, d.attempts+1, now, now.Add(e.spec.Timeout)
		e.starts = append(e.starts, now)
		budget--
		acts = append(acts,
			Action{Kind: ActAssign, Device: d.ID, Target: e.spec.Target, Release: e.spec.Release},
			Action{Kind: ActPublishJob, Device: d.ID, Release: e.spec.Release, Job: e.PendingJob(d.ID)})
	}
	return acts
}

// checkAbort applies the abort rules to the devices finished since the
// last resume (all finished devices before any resume). A terminal device
// never changes state again, so the counts since the resume are the
// current counts minus those at the resume.
func (e *Engine) checkAbort() []Action {
	executed := e.executed() - e.resumeExecuted
	if executed <= 0 {
		return nil
	}
	since := ""
	if e.resumeExecuted > 0 {
		since = " since the last resume"
	}
	now := e.outcomes()
	for _, a := range e.spec.Abort {
		if executed < max(a.MinExecuted, 1) {
			continue
		}
		n := 0
		for i, o := range a.On {
			if !slices.Contains(a.On[:i], o) {
				n += now[o] - e.resumeOutcomes[o]
			}
		}
		if n*100 >= a.ThresholdPercent*executed {
			reason := fmt.Sprintf("%d of %d executed devices %s%s (threshold %d%%) in %s",
				n, executed, strings.Join(a.On, "/"), since, a.ThresholdPercent, e.phases[e.phase].name)
			if a.Action == "abort" {
				return e.abort(reason)
			}
			return []Action{e.pause(reason)}
		}
	}
	return nil
}

// budget is how many devices may start now: the per-minute limit (ramped
// exponentially from Initial) minus starts in the last minute.
func (e *Engine) budget(now time.Time) int {
	r := e.spec.Rate
	if r.MaxPerMinute == 0 {
		return math.MaxInt
	}
	limit := r.MaxPerMinute
	if r.Initial > 0 {
		steps := float64(now.Sub(e.runningSince) / r.Every)
		l := float64(r.Initial) * math.Pow(r.Factor, steps)
		if l < float64(limit) {
			limit = int(l)
		}
	}
	cut := now.Add(-time.Minute)
	kept := e.starts[:0]
	for _, t := range e.starts {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	e.starts = kept
	return limit - len(kept)
}

// inWindow reports whether now falls in a maintenance window in the
// device's local time. Local wall-clock minutes are compared, so a window
// inside a skipped DST hour does not occur that day and one inside a
// repeated hour lasts twice as long, as the device's own clock shows.
func (e *Engine) inWindow(d *device, now time.Time) bool {
	m := e.spec.Maintenance
	if m == nil {
		return true
	}
	local := now.In(d.loc)
	mins := local.Hour()*60 + local.Minute()
	wd := local.Weekday()
	for _, w := range m.Windows {
		s, _ := parseClock(w.Start) // validated
		end, _ := parseClock(w.End)
		if s < end {
			if w.onDay(wd) && mins >= s && mins < end {
				return true
			}
			continue
		}
		if (w.onDay(wd) && mins >= s) || (w.onDay((wd+6)%7) && mins < end) {
			return true
		}
	}
	return false
}

func (w Window) onDay(d time.Weekday) bool {
	if len(w.Days) == 0 {
		return true
	}
	for _, s := range w.Days {
		if weekdays[strings.ToLower(s)] == d {
			return true
		}
	}
	return false
}

// PhaseStatus counts a phase's devices by state.
type PhaseStatus struct {
	Name                                    string
	Percent                                 int
	Devices, Pending, InProgress, Succeeded int
	Failed, RolledBack, TimedOut            int
}

// Status is a rollout's progress.
type Status struct {
	ID, State, Reason string
	Phase             int // index into Phases of the current phase
	Phases            []PhaseStatus
}

// Status returns per-phase counts.
func (e *Engine) Status() Status {
	s := Status{ID: e.id, State: e.state, Reason: e.reason, Phase: e.phase}
	for _, p := range e.phases {
		s.Phases = append(s.Phases, PhaseStatus{Name: p.name, Percent: p.percent})
	}
	for _, d := range e.order {
		p := &s.Phases[d.phase]
		p.Devices++
		switch d.state {
		case DevicePending:
			p.Pending++
		case DeviceInProgress, DeviceCommitted:
			p.InProgress++
		case DeviceSucceeded:
			p.Succeeded++
		case DeviceFailed:
			p.Failed++
		case DeviceRolledBack:
			p.RolledBack++
		case DeviceTimedOut:
			p.TimedOut++
		}
	}
	return s
}

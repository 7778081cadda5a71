package rollout

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"
)

// Snapshot is an engine's persistent state. Buckets and phases are not
// stored: [Restore] recomputes them from the IDs, which is what keeps
// membership stable across restarts.
type Snapshot struct {
	ID             string           `json:"id"`
	Creator        string           `json:"creator"`
	Approver       string           `json:"approver,omitempty"`
	Spec           Spec             `json:"spec"`
	State          string           `json:"state"`
	Reason         string           `json:"reason,omitempty"`
	Phase          int              `json:"phase"`
	PhaseDoneAt    time.Time        `json:"phase_done_at,omitzero"`
	RunningSince   time.Time        `json:"running_since,omitzero"`
	Starts         []time.Time      `json:"starts,omitempty"`
	ResumeExecuted int              `json:"resume_executed"`
	Devices        []DeviceSnapshot `json:"devices"`
	// ResumeOutcomes counts devices per terminal state at the last
	// resume. A snapshot from before it existed has none: its abort rules
	// then count every outcome against the devices finished since the
	// resume, which pauses early rather than late.
	ResumeOutcomes map[string]int `json:"resume_outcomes,omitempty"`
	// PhaseAccepted: an operator resumed after the current phase had
	// finished, accepting its success share.
	PhaseAccepted bool `json:"phase_accepted,omitempty"`
}

// DeviceSnapshot is a device's persistent state in a rollout.
type DeviceSnapshot struct {
	Device
	State    string    `json:"state"`
	Attempts int       `json:"attempts"`
	Started  time.Time `json:"started,omitzero"`
	Deadline time.Time `json:"deadline,omitzero"`
}

// Snapshot returns the engine's state for [Store.Save].
func (e *Engine) Snapshot() *Snapshot {
	s := &Snapshot{
		ID: e.id, Creator: e.creator, Approver: e.approver, Spec: *e.spec, State: e.state, Reason: e.reason,
		Phase: e.phase, PhaseDoneAt: e.phaseDoneAt, RunningSince: e.runningSince,
		Starts: append([]time.Time(nil), e.starts...), ResumeExecuted: e.resumeExecuted,
		ResumeOutcomes: maps.Clone(e.resumeOutcomes), PhaseAccepted: e.phaseAccepted,
	}
	for _, d := range e.order {
		s.Devices = append(s.Devices, DeviceSnapshot{Device: d.Device, State: d.state, Attempts: d.attempts, Started: d.started, Deadline: d.deadline})
	}
	return s
}

// Restore rebuilds an engine from a snapshot, with a clock and zone
// loader as in [Config].
func Restore(s *Snapshot, now func() time.Time, loadLocation func(string) (*time.Location, error)) (*Engine, error) {
	if err := s.Spec.Validate(); err != nil {
		return nil, err
	}
	fleet := make([]Device, len(s.Devices))
	for i, d := range s.Devices {
		fleet[i] = d.Device
	}
	spec := s.Spec
	e, err := build(Config{ID: s.ID, Spec: &spec, Creator: s.Creator, Fleet: fleet, Now: now, LoadLocation: loadLocation})
	if err != nil {
		return nil, err
	}
	if s.Phase < 0 || s.Phase >= len(e.phases) {
		return nil, errors.New("rollout: snapshot phase out of range")
	}
	e.approver, e.state, e.reason, e.phase = s.Approver, s.State, s.Reason, s.Phase
	e.phaseDoneAt, e.runningSince, e.starts, e.resumeExecuted = s.PhaseDoneAt, s.RunningSince, s.Starts, s.ResumeExecuted
	e.resumeOutcomes, e.phaseAccepted = maps.Clone(s.ResumeOutcomes), s.PhaseAccepted
	for _, d := range s.Devices {
		if r := e.devices[d.ID]; r != nil {
			r.state, r.attempts, r.started, r.deadline = d.State, d.Attempts, d.Started, d.Deadline
		}
	}
	return e, nil
}

// ErrNotFound is returned by a [Store] for an unknown rollout.
var ErrNotFound = errors.New("rollout: not found")

// Store persists rollouts. The server saves after every event it feeds
// the engine, before carrying out the returned actions.
type Store interface {
	Save(ctx context.Context, s *Snapshot) error
	Load(ctx context.Context, id string) (*Snapshot, error)
	List(ctx context.Context) ([]string, error)
}

// MemStore is an in-memory [Store] for tests.
type MemStore struct {
	mu sync.Mutex
	m  map[string]*Snapshot
}

// Save implements [Store].
func (m *MemStore) Save(_ context.Context, s *Snapshot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string]*Snapshot{}
	}
	c := *s
	c.Devices = append([]DeviceSnapshot(nil), s.Devices...)
	c.ResumeOutcomes = maps.Clone(s.ResumeOutcomes)
	m.m[s.ID] = &c
	return nil
}

// Load implements [Store].
func (m *MemStore) Load(_ context.Context, id string) (*Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.m[id]
	if !ok {
		return nil, ErrNotFound
	}
	c := *s
	c.Devices = append([]DeviceSnapshot(nil), s.Devices...)
	c.ResumeOutcomes = maps.Clone(s.ResumeOutcomes)
	return &c, nil
}

// List implements [Store].
func (m *MemStore) List(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id := range m.m {
		ids = append(ids, id)
	}
	return ids, nil
}

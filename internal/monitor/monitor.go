// Package monitor is Ward's security event stream. Parts of the server
// report what they saw (a failed handshake, a revoked certificate
// presented, a cloned certificate, a replay, a rate-limit hit) with Emit,
// which never blocks a hot path: events are queued, aggregated (repeats of
// the same kind within a window become one row with a count) and written in
// batches. The first occurrence of each aggregated event is also written to
// the audit log, so security decisions are in the tamper-evident record
// without a flood turning the log into noise.
package monitor

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/store"
)

// Event types. Severity comes from the table below.
const (
	TLSHandshakeFailed   = "tls.handshake_failed"
	ClientIDMismatch     = "mqtt.client_id_mismatch"
	PolicyDenied         = "policy.denied"
	RateLimited          = "ratelimit.exceeded"
	CertShared           = "cert.shared"
	CertRevokedPresented = "cert.revoked_presented"
	BootstrapCertForMQTT = "cert.bootstrap_for_mqtt"
	EnrollRefused        = "enroll.refused"
	SecondOnboarding     = "provision.second_onboarding"
	AttestationFailed    = "attestation.failed"
	AttestationFlagged   = "attestation.flagged"
	// AttestationRenewalRefused: a renewal without a fresh passing
	// attestation (or by a quarantined device) was refused.
	AttestationRenewalRefused = "attestation.renewal_refused"
	TelemetryRejected         = "telemetry.rejected"
	DeviceTokenReuse          = "device_token.refresh_reuse"
	DeviceTokenOther          = "device_token.refused"
	FloorWentDown             = "ota.floor_decreased"
	ConnectionRefused         = "mqtt.connect_refused"
	// RolloutPaused and RolloutAborted: a rollout stopped itself on its
	// abort rules or success threshold (not an operator's command), so
	// whoever watches the event stream learns of a failing release.
	RolloutPaused  = "ota.rollout_paused"
	RolloutAborted = "ota.rollout_aborted"
)

var severity = map[string]string{
	TLSHandshakeFailed:        "low",
	ClientIDMismatch:          "medium",
	PolicyDenied:              "low",
	RateLimited:               "low",
	CertShared:                "high",
	CertRevokedPresented:      "high",
	BootstrapCertForMQTT:      "medium",
	EnrollRefused:             "medium",
	SecondOnboarding:          "high",
	AttestationFailed:         "high",
	AttestationFlagged:        "low",
	AttestationRenewalRefused: "medium",
	TelemetryRejected:         "medium",
	DeviceTokenReuse:          "high",
	DeviceTokenOther:          "medium",
	FloorWentDown:             "high",
	ConnectionRefused:         "medium",
	RolloutPaused:             "medium",
	RolloutAborted:            "high",
}

// Severity returns the severity of an event type ("medium" if unknown).
func Severity(typ string) string {
	if s, ok := severity[typ]; ok {
		return s
	}
	return "medium"
}

// Event is what a part reports. Fields must hold no secrets.
type Event struct {
	Type   string
	Tenant string
	Device string
	Remote string
	Reason string
	Detail string
	Time   time.Time // zero: now
}

// Tuning. A queue of 8192 events absorbs bursts (a connect flood) while
// the writer catches up; beyond it events are dropped and counted, never
// blocking the gateway.
const (
	queueSize   = 8192
	batchSize   = 512
	batchWait   = 50 * time.Millisecond
	aggregation = time.Minute
)

// Monitor queues, aggregates and stores events.
type Monitor struct {
	store   store.Store
	log     *slog.Logger
	now     func() time.Time
	q       chan Event
	dropped atomic.Int64
	wg      sync.WaitGroup
	flush   chan chan struct{}
	subsMu  sync.RWMutex
	subs    []func(Event)
}

// New starts a monitor; stop it by cancelling ctx and calling Wait.
func New(ctx context.Context, s store.Store, log *slog.Logger, now func() time.Time) *Monitor {
	m := &Monitor{store: s, log: log, now: now, q: make(chan Event, queueSize), flush: make(chan chan struct{})}
	m.wg.Add(1)
	go m.run(ctx)
	return m
}

// Emit queues an event without blocking.
func (m *Monitor) Emit(e Event) {
	if e.Time.IsZero() {
		e.Time = m.now()
	}
	m.subsMu.RLock()
	for _, fn := range m.subs {
		fn(e)
	}
	m.subsMu.RUnlock()
	select {
	case m.q <- e:
	default:
		if m.dropped.Add(1)%1000 == 1 {
			m.log.Warn("security event queue full; events dropped", "dropped", m.dropped.Load())
		}
	}
}

// Subscribe calls fn (synchronously, so it must be quick) for every event
// emitted from now on; detectors and actions hook in here.
func (m *Monitor) Subscribe(fn func(Event)) {
	m.subsMu.Lock()
	m.subs = append(m.subs, fn)
	m.subsMu.Unlock()
}

// Dropped is how many events were lost to a full queue.
func (m *Monitor) Dropped() int64 { return m.dropped.Load() }

// Flush waits until every event emitted before the call is stored.
func (m *Monitor) Flush(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case m.flush <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wait blocks until the writer has stopped (after ctx is cancelled).
func (m *Monitor) Wait() { m.wg.Wait() }

func (m *Monitor) run(ctx context.Context) {
	defer m.wg.Done()
	var batch []Event
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	write := func() {
		if len(batch) == 0 {
			return
		}
		if err := m.write(context.WithoutCancel(ctx), batch); err != nil {
			m.log.Error("write security events", "count", len(batch), "err", err)
		}
		batch = batch[:0]
	}
	drain := func() {
		for {
			select {
			case e := <-m.q:
				batch = append(batch, e)
				if len(batch) >= batchSize {
					write()
				}
			default:
				return
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			drain()
			write()
			return
		case done := <-m.flush:
			drain()
			write()
			close(done)
		case e := <-m.q:
			if len(batch) == 0 {
				timer.Reset(batchWait)
			}
			batch = append(batch, e)
			if len(batch) >= batchSize {
				write()
			}
		case <-timer.C:
			write()
		}
	}
}

type aggKey struct{ tenant, typ, device, reason string }

// write aggregates a batch in memory and records it in one transaction.
func (m *Monitor) write(ctx context.Context, batch []Event) error {
	agg := map[aggKey]*store.Event{}
	var order []aggKey
	for _, e := range batch {
		k := aggKey{e.Tenant, e.Type, e.Device, clip(e.Reason)}
		if a, ok := agg[k]; ok {
			a.Count++
			if e.Time.After(a.LastAt) {
				a.LastAt, a.Remote, a.Detail = e.Time, e.Remote, clip(e.Detail)
			}
			continue
		}
		agg[k] = &store.Event{Tenant: e.Tenant, Type: e.Type, Severity: Severity(e.Type), Device: e.Device, Remote: e.Remote,
			Reason: clip(e.Reason), Detail: clip(e.Detail), FirstAt: e.Time, LastAt: e.Time, Count: 1}
		order = append(order, k)
	}
	return m.store.InTx(ctx, func(tx store.Tx) error {
		for _, k := range order {
			e := agg[k]
			created, err := tx.RecordEvent(ctx, e, aggregation)
			if err != nil {
				return err
			}
			if created {
				target := "device:" + e.Device
				if e.Device == "" {
					target = e.Remote
				}
				if _, err := audit.Append(ctx, tx, m.now(), audit.Entry{Actor: "system", Action: "event." + e.Type, Target: target,
					Tenant: e.Tenant, Result: audit.ResultDenied, Detail: fmt.Sprintf("severity=%s reason=%s", e.Severity, e.Reason)}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// maxText bounds reasons and details taken from untrusted sources.
const maxText = 512

func clip(s string) string {
	if len(s) > maxText {
		return s[:maxText]
	}
	return s
}

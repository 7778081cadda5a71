package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/wire"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func mustSpec(t testing.TB, y string) *Spec {
	t.Helper()
	s, err := ParseSpec(strings.NewReader(y))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fleet(n int) []Device {
	var out []Device
	for i := range n {
		out = append(out, Device{ID: fmt.Sprintf("dev-%03d", i), HardwareID: "board-a", Release: "fw@1.0.0", Tags: map[string]string{"site": "berlin"}})
	}
	return out
}

const baseSpec = `
release: fw@1.1.0
target: images/board-a/fw@1.1.0.img
selector: {hardware: board-a}
canary: {percent: 10, soak: 1h}
stages:
  - {percent: 50, soak: 30m}
  - {percent: 100}
timeout: 2h
healthWindow: 10m
`

type run struct {
	t     *testing.T
	c     *clock
	e     *Engine
	acts  []Action
	fails map[string]bool // devices whose install fails
}

func newRun(t *testing.T, spec string, n int) *run {
	t.Helper()
	c := &clock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	e, err := New(Config{ID: "ro-1", Spec: mustSpec(t, spec), Creator: "alice", Fleet: fleet(n), Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return &run{t: t, c: c, e: e, fails: map[string]bool{}}
}

func (r *run) record(a []Action, err error) []Action {
	r.t.Helper()
	if err != nil {
		r.t.Fatal(err)
	}
	r.acts = append(r.acts, a...)
	return a
}

func started(acts []Action) []string {
	var out []string
	for _, a := range acts {
		if a.Kind == ActPublishJob {
			out = append(out, a.Device)
		}
	}
	return out
}

func kinds(acts []Action, kind string) int {
	n := 0
	for _, a := range acts {
		if a.Kind == kind {
			n++
		}
	}
	return n
}

// answer plays every started device: committed then a passing health
// gate, or failed for devices in r.fails.
func (r *run) answer(devs []string) []Action {
	var out []Action
	for _, d := range devs {
		if r.fails[d] {
			out = append(out, r.record(r.e.HandleStatus(d, wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: wire.OTAPhaseFailed}))...)
			continue
		}
		out = append(out, r.record(r.e.HandleStatus(d, wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: wire.OTAPhaseCommitted}))...)
		out = append(out, r.record(r.e.HandleHealth(HealthResult{Device: d, Healthy: true, AttestationPassed: true}))...)
	}
	return out
}

func (r *run) phaseOf(devs []string) []int {
	var out []int
	for _, d := range devs {
		p, _, _ := r.e.Phase(d)
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func TestEngine(t *testing.T) {
	for name, f := range map[string]func(t *testing.T){
		"ok/canary-then-stages-with-soak": func(t *testing.T) {
			r := newRun(t, baseSpec, 100)
			first := started(r.record(r.e.Tick(), nil))
			if len(first) == 0 || !slices.Equal(r.phaseOf(first), []int{0}) {
				t.Fatalf("first starts %v in phases %v, want canary only", first, r.phaseOf(first))
			}
			for _, d := range first {
				if _, b, _ := r.e.Phase(d); b >= 10 {
					t.Fatalf("canary device %s has bucket %d", d, b)
				}
			}
			more := started(r.answer(first))
			if len(more) != 0 {
				t.Fatalf("stage 1 started before the canary soak: %v", more)
			}
			r.c.add(59 * time.Minute)
			if s := started(r.record(r.e.Tick(), nil)); len(s) != 0 {
				t.Fatal("started during soak")
			}
			r.c.add(time.Minute)
			second := started(r.record(r.e.Tick(), nil))
			if !slices.Equal(r.phaseOf(second), []int{1}) {
				t.Fatalf("after soak: phases %v", r.phaseOf(second))
			}
			r.answer(second)
			r.c.add(30 * time.Minute)
			third := started(r.record(r.e.Tick(), nil))
			r.answer(third)
			if len(first)+len(second)+len(third) != 100 {
				t.Fatalf("started %d devices", len(first)+len(second)+len(third))
			}
			if st, _ := r.e.State(); st != StateCompleted {
				t.Fatalf("state %s", st)
			}
			s := r.e.Status()
			for _, p := range s.Phases {
				if p.Succeeded != p.Devices {
					t.Fatalf("status %+v", s)
				}
			}
		},
		"pause/failed-threshold-then-resume": func(t *testing.T) {
			r := newRun(t, baseSpec+`
abort:
  - {on: [failed, timed_out], thresholdPercent: 20, minExecuted: 5, action: pause}
`, 100)
			first := started(r.record(r.e.Tick(), nil))
			for _, d := range first[:3] {
				r.fails[d] = true
			}
			r.answer(first)
			if st, reason := r.e.State(); st != StatePaused || !strings.Contains(reason, "failed") {
				t.Fatalf("state %s %q", st, reason)
			}
			r.c.add(2 * time.Hour)
			if len(r.e.Tick()) != 0 {
				t.Fatal("paused rollout acted")
			}
			if _, err := r.e.Resume("bob"); err != nil {
				t.Fatal(err)
			}
			if st, _ := r.e.State(); st != StateRunning {
				t.Fatalf("not running after resume: %s", st)
			}
		},
		"pause/resume-judges-only-later-outcomes": func(t *testing.T) {
			r := newRun(t, baseSpec+`
abort:
  - {on: [rolled_back], thresholdPercent: 10, minExecuted: 5, action: pause}
`, 200)
			rolledBack := wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: wire.OTAPhaseRolledBack}
			first := started(r.record(r.e.Tick(), nil))
			r.record(r.e.HandleStatus(first[0], rolledBack))
			r.answer(first[1:])
			if st, reason := r.e.State(); st != StatePaused || !strings.Contains(reason, "in canary") {
				t.Fatalf("canary: %s %q", st, reason)
			}
			r.record(r.e.Resume("bob"))
			// The baseline survives a restart.
			b, _ := json.Marshal(r.e.Snapshot())
			var snap Snapshot
			if err := json.Unmarshal(b, &snap); err != nil {
				t.Fatal(err)
			}
			e2, err := Restore(&snap, r.c.now, nil)
			if err != nil {
				t.Fatal(err)
			}
			r.e = e2
			r.c.add(time.Hour)
			second := started(r.record(r.e.Tick(), nil))
			// The canary's rollback no longer counts: four rollbacks since
			// the resume are under minExecuted, the fifth pauses again.
			for i, d := range second[:5] {
				r.record(r.e.HandleStatus(d, rolledBack))
				if st, reason := r.e.State(); i < 4 && st != StateRunning {
					t.Fatalf("paused after %d rollbacks since the resume: %s", i+1, reason)
				}
			}
			if st, reason := r.e.State(); st != StatePaused || reason != "5 of 5 executed devices rolled_back since the last resume (threshold 10%) in stage 1" {
				t.Fatalf("after five stage rollbacks: %s %q", st, reason)
			}
		},
		"pause/success-threshold": func(t *testing.T) {
			r := newRun(t, baseSpec+"success: {minPercent: 100}\n", 100)
			first := started(r.record(r.e.Tick(), nil))
			r.fails[first[0]] = true
			r.answer(first)
			if st, reason := r.e.State(); st != StatePaused || !strings.Contains(reason, "success threshold") {
				t.Fatalf("state %s %q", st, reason)
			}
		},
		"ok/resume-accepts-a-finished-phase-below-success-threshold": func(t *testing.T) {
			r := newRun(t, baseSpec+"success: {minPercent: 100}\n", 100)
			first := started(r.record(r.e.Tick(), nil))
			// Paused by the operator mid-canary, resumed: the canary is
			// not finished, so the threshold still judges it.
			r.record(r.e.Pause("bob", "checking dashboards"))
			r.record(r.e.Resume("bob"))
			r.fails[first[0]] = true
			r.answer(first)
			if st, reason := r.e.State(); st != StatePaused || !strings.Contains(reason, "canary: ") {
				t.Fatalf("canary below the threshold: %s %q", st, reason)
			}
			// Resumed after it finished: the canary is accepted, and
			// stays accepted across a restart.
			r.record(r.e.Resume("bob"))
			e2, err := Restore(r.e.Snapshot(), r.c.now, nil)
			if err != nil {
				t.Fatal(err)
			}
			r.e = e2
			r.c.add(time.Hour)
			second := started(r.record(r.e.Tick(), nil))
			if st, _ := r.e.State(); st != StateRunning || !slices.Equal(r.phaseOf(second), []int{1}) {
				t.Fatalf("after accepting the canary: %s, stage 1 started %v", st, second)
			}
			// The next phase is judged again.
			r.fails[second[0]] = true
			r.answer(second)
			if st, reason := r.e.State(); st != StatePaused || !strings.Contains(reason, "stage 1: ") {
				t.Fatalf("stage 1 below the threshold: %s %q", st, reason)
			}
		},
		"abort/rolled-back-rolls-back-in-progress": func(t *testing.T) {
			r := newRun(t, baseSpec+`
abort:
  - {on: [rolled_back], thresholdPercent: 50, minExecuted: 1, action: abort}
`, 100)
			first := started(r.record(r.e.Tick(), nil))
			acts := r.record(r.e.HandleStatus(first[0], wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: wire.OTAPhaseRolledBack}))
			if st, _ := r.e.State(); st != StateAborted {
				t.Fatalf("state %s", st)
			}
			// The reporting device plus every other canary device in progress.
			if n := kinds(acts, ActRollBack); n != len(first) {
				t.Fatalf("%d rollbacks for %d started devices", n, len(first))
			}
			for _, a := range acts {
				if a.Kind == ActRollBack && a.Release != "fw@1.0.0" {
					t.Fatalf("rollback to %q", a.Release)
				}
			}
		},
		"ok/retry-after-failure": func(t *testing.T) {
			r := newRun(t, baseSpec+"retries: 1\n", 20)
			first := started(r.record(r.e.Tick(), nil))
			d := first[0]
			// A job sent again (ota/get) is the same attempt; a retry is
			// the next one.
			if j := r.e.PendingJob(d); j == nil || j.Attempt != 1 || j.Rollout != "ro-1" || j.Release != "fw@1.1.0" || j.Deadline.IsZero() {
				t.Fatalf("pending job %+v", j)
			}
			acts := r.record(r.e.HandleStatus(d, wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: wire.OTAPhaseFailed}))
			if again := started(acts); !slices.Equal(again, []string{d}) {
				t.Fatalf("retry started %v", again)
			}
			for _, a := range acts {
				if a.Kind == ActPublishJob && a.Job.Attempt != 2 {
					t.Fatalf("retry job %+v", a.Job)
				}
			}
			r.record(r.e.HandleStatus(d, wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: wire.OTAPhaseFailed}))
			if s := r.e.DeviceState(d); s != DeviceFailed {
				t.Fatalf("after retries: %s", s)
			}
			if j := r.e.PendingJob(d); j != nil {
				t.Fatalf("a job for a device that failed: %+v", j)
			}
			if j := r.e.PendingJob("nobody"); j != nil {
				t.Fatalf("a job for a device outside the rollout: %+v", j)
			}
		},
		"timeout/device-rolled-back": func(t *testing.T) {
			r := newRun(t, baseSpec, 20)
			first := started(r.record(r.e.Tick(), nil))
			r.c.add(2 * time.Hour)
			acts := r.record(r.e.Tick(), nil)
			if kinds(acts, ActRollBack) != len(first) || r.e.DeviceState(first[0]) != DeviceTimedOut {
				t.Fatalf("acts %+v", acts)
			}
		},
		"rollback/health-gate-fails": func(t *testing.T) {
			r := newRun(t, baseSpec, 20)
			d := started(r.record(r.e.Tick(), nil))[0]
			r.record(r.e.HandleStatus(d, wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: wire.OTAPhaseCommitted}))
			acts := r.record(r.e.HandleHealth(HealthResult{Device: d, Healthy: true, AttestationPassed: false}))
			if kinds(acts, ActRollBack) != 1 || !strings.Contains(acts[0].Reason, "attestation") || r.e.DeviceState(d) != DeviceRolledBack {
				t.Fatalf("acts %+v", acts)
			}
		},
		"fail/self-approval": func(t *testing.T) {
			r := newRun(t, baseSpec+"approval: {required: true}\n", 20)
			if len(r.e.Tick()) != 0 {
				t.Fatal("unapproved rollout started devices")
			}
			if _, err := r.e.Approve("alice"); !errors.Is(err, ErrSelfApproval) {
				t.Fatalf("creator approved: %v", err)
			}
			if st, _ := r.e.State(); st != StatePendingApproval {
				t.Fatal(st)
			}
		},
		"ok/second-operator-approves": func(t *testing.T) {
			r := newRun(t, baseSpec+"approval: {required: true}\n", 20)
			acts := r.record(r.e.Approve("bob"))
			if len(started(acts)) == 0 {
				t.Fatal("approval started nothing")
			}
			if _, err := r.e.Approve("carol"); !errors.Is(err, ErrState) {
				t.Fatalf("second approval: %v", err)
			}
		},
		"ok/rate-exponential-ramp": func(t *testing.T) {
			r := newRun(t, `
release: fw@1.1.0
target: t
stages: [{percent: 100}]
timeout: 10h
rate: {maxPerMinute: 8, initial: 2, factor: 2, every: 1m}
`, 100)
			var per []int
			for range 5 {
				per = append(per, len(started(r.record(r.e.Tick(), nil))))
				r.c.add(time.Minute)
			}
			if !slices.Equal(per, []int{2, 4, 8, 8, 8}) {
				t.Fatalf("starts per minute %v, want [2 4 8 8 8]", per)
			}
		},
		"fail/status-from-other-rollout": func(t *testing.T) {
			r := newRun(t, baseSpec, 20)
			d := started(r.record(r.e.Tick(), nil))[0]
			if _, err := r.e.HandleStatus(d, wire.OTAStatus{Rollout: "other", Release: "fw@1.1.0", Phase: wire.OTAPhaseCommitted}); !errors.Is(err, ErrUnknownDevice) {
				t.Fatal(err)
			}
			if _, err := r.e.HandleStatus("ghost", wire.OTAStatus{Rollout: "ro-1"}); !errors.Is(err, ErrUnknownDevice) {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, f)
	}
}

// TestAbortThresholds: a rule judges the share of executed devices in
// its outcomes, at or above the threshold, once minExecuted finished.
// Outcomes are fed in order; "ok" is a committed device passing its gate.
func TestAbortThresholds(t *testing.T) {
	for name, c := range map[string]struct {
		rule     string
		outcomes []string
		want     string
	}{
		"pause/at-threshold": {`{on: [failed], thresholdPercent: 20, minExecuted: 5, action: pause}`,
			[]string{"ok", "ok", "ok", "ok", "failed"}, StatePaused},
		"ok/below-threshold": {`{on: [failed], thresholdPercent: 20, minExecuted: 5, action: pause}`,
			[]string{"ok", "ok", "ok", "ok", "ok", "failed"}, StateRunning},
		"ok/under-min-executed": {`{on: [failed], thresholdPercent: 20, minExecuted: 5, action: pause}`,
			[]string{"failed", "failed", "failed", "failed"}, StateRunning},
		"pause/min-executed-reached-by-a-success": {`{on: [failed], thresholdPercent: 20, minExecuted: 5, action: pause}`,
			[]string{"failed", "ok", "ok", "ok", "ok"}, StatePaused},
		"ok/outcome-not-listed": {`{on: [failed], thresholdPercent: 20, minExecuted: 5, action: pause}`,
			[]string{"rolled_back", "rolled_back", "rolled_back", "rolled_back", "rolled_back"}, StateRunning},
		"pause/outcomes-added-up": {`{on: [failed, rolled_back], thresholdPercent: 40, minExecuted: 5, action: pause}`,
			[]string{"ok", "ok", "ok", "failed", "rolled_back"}, StatePaused},
		"ok/outcome-listed-twice-counts-once": {`{on: [rolled_back, rolled_back], thresholdPercent: 50, minExecuted: 5, action: pause}`,
			[]string{"ok", "ok", "ok", "rolled_back", "rolled_back"}, StateRunning},
		"abort/action-abort": {`{on: [rolled_back], thresholdPercent: 100, minExecuted: 2, action: abort}`,
			[]string{"rolled_back", "rolled_back"}, StateAborted},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRun(t, baseSpec+"abort: ["+c.rule+"]\n", 200)
			first := started(r.record(r.e.Tick(), nil))
			if len(first) < len(c.outcomes) {
				t.Fatalf("canary of %d devices", len(first))
			}
			for i, o := range c.outcomes {
				d := first[i]
				if o == "ok" {
					r.answer([]string{d})
					continue
				}
				r.record(r.e.HandleStatus(d, wire.OTAStatus{Rollout: "ro-1", Release: "fw@1.1.0", Phase: o}))
			}
			if st, reason := r.e.State(); st != c.want {
				t.Fatalf("state %s (%s), want %s", st, reason, c.want)
			}
		})
	}
}

// openMinutes counts the minutes of the UTC day [from, from+span) during
// which the device may start.
func openMinutes(e *Engine, dev string, from time.Time, span time.Duration) int {
	n := 0
	for t := from; t.Before(from.Add(span)); t = t.Add(time.Minute) {
		if e.inWindow(e.devices[dev], t) {
			n++
		}
	}
	return n
}

func windowEngine(t *testing.T, window string, zones map[string]string) *Engine {
	t.Helper()
	var devs []Device
	for id, z := range zones {
		devs = append(devs, Device{ID: id, Tags: map[string]string{"tz": z}})
	}
	e, err := New(Config{ID: "w", Creator: "alice", Fleet: devs, Spec: mustSpec(t, `
release: fw@2
target: t
stages: [{percent: 100}]
timeout: 1h
maintenance:
  windows: [`+window+`]
`)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestMaintenanceWindows(t *testing.T) {
	for name, f := range map[string]func(t *testing.T){
		"ok/device-local-time-per-zone": func(t *testing.T) {
			e := windowEngine(t, `{start: "02:00", end: "04:00"}`, map[string]string{"tokyo": "Asia/Tokyo", "ny": "America/New_York", "none": ""})
			at := time.Date(2026, 6, 1, 17, 30, 0, 0, time.UTC) // 02:30 in Tokyo, 13:30 in New York
			if !e.inWindow(e.devices["tokyo"], at) || e.inWindow(e.devices["ny"], at) || e.inWindow(e.devices["none"], at) {
				t.Fatal("window evaluated in the wrong zone")
			}
			if !e.inWindow(e.devices["ny"], time.Date(2026, 6, 1, 6, 30, 0, 0, time.UTC)) { // 02:30 EDT
				t.Fatal("New York window closed at 02:30 local")
			}
		},
		"ok/crossing-midnight-belongs-to-start-day": func(t *testing.T) {
			e := windowEngine(t, `{days: [sat], start: "23:00", end: "01:00"}`, map[string]string{"d": "UTC"})
			sat := time.Date(2026, 6, 6, 23, 30, 0, 0, time.UTC)
			if !e.inWindow(e.devices["d"], sat) || !e.inWindow(e.devices["d"], sat.Add(time.Hour)) {
				t.Fatal("Saturday night window closed")
			}
			if e.inWindow(e.devices["d"], sat.Add(-24*time.Hour)) || e.inWindow(e.devices["d"], sat.Add(25*time.Hour)) {
				t.Fatal("window open on Friday night or Sunday night")
			}
		},
		"dst/spring-forward-skipped-window": func(t *testing.T) {
			e := windowEngine(t, `{start: "02:00", end: "03:00"}`, map[string]string{"d": "Europe/Berlin"})
			day := time.Date(2026, 3, 28, 22, 0, 0, 0, time.UTC) // Berlin midnight, 29 March: 02:00 -> 03:00
			if n := openMinutes(e, "d", day, 24*time.Hour); n != 0 {
				t.Fatalf("window open %d minutes on the spring-forward day, want 0", n)
			}
			if n := openMinutes(e, "d", day.Add(-24*time.Hour), 24*time.Hour); n != 60 {
				t.Fatalf("window open %d minutes the day before, want 60", n)
			}
		},
		"dst/fall-back-repeated-hour": func(t *testing.T) {
			e := windowEngine(t, `{start: "02:00", end: "03:00"}`, map[string]string{"d": "Europe/Berlin"})
			day := time.Date(2026, 10, 24, 22, 0, 0, 0, time.UTC) // 25 October: 03:00 -> 02:00
			if n := openMinutes(e, "d", day, 25*time.Hour); n != 120 {
				t.Fatalf("window open %d minutes on the fall-back day, want 120", n)
			}
		},
		"dst/us-spring-forward-partial": func(t *testing.T) {
			e := windowEngine(t, `{start: "01:30", end: "02:30"}`, map[string]string{"d": "America/New_York"})
			day := time.Date(2026, 3, 8, 5, 0, 0, 0, time.UTC) // local midnight EST
			if n := openMinutes(e, "d", day, 23*time.Hour); n != 30 {
				t.Fatalf("window open %d minutes, want 30 (01:30-02:00 EST)", n)
			}
		},
		"dst/zones-start-at-local-time-on-a-change-day": func(t *testing.T) {
			// 29 March 2026: Berlin springs forward at 02:00 CET, New York
			// has been on summer time for three weeks, Tokyo has none.
			e := windowEngine(t, `{start: "03:00", end: "05:00"}`, map[string]string{
				"tokyo": "Asia/Tokyo", "berlin": "Europe/Berlin", "ny": "America/New_York", "none": ""})
			c := &clock{t: time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC)}
			e.now = c.now
			first := map[string]time.Time{}
			for ; c.t.Before(time.Date(2026, 3, 29, 12, 0, 0, 0, time.UTC)); c.add(time.Minute) {
				for _, d := range started(e.Tick()) {
					if _, ok := first[d]; !ok {
						first[d] = c.t
					}
				}
			}
			want := map[string]time.Time{
				"tokyo":  time.Date(2026, 3, 28, 18, 0, 0, 0, time.UTC), // 03:00 JST
				"berlin": time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC),  // 03:00 CEST, the minute after 01:59 CET
				"none":   time.Date(2026, 3, 29, 3, 0, 0, 0, time.UTC),  // no zone tag: UTC
				"ny":     time.Date(2026, 3, 29, 7, 0, 0, 0, time.UTC),  // 03:00 EDT
			}
			if !maps.Equal(first, want) {
				t.Fatalf("first starts %v, want %v", first, want)
			}
		},
		"ok/outside-window-devices-wait": func(t *testing.T) {
			e := windowEngine(t, `{start: "02:00", end: "04:00"}`, map[string]string{"tokyo": "Asia/Tokyo", "ny": "America/New_York"})
			c := &clock{t: time.Date(2026, 6, 1, 17, 30, 0, 0, time.UTC)}
			e.now = c.now
			if got := started(e.Tick()); !slices.Equal(got, []string{"tokyo"}) {
				t.Fatalf("started %v, want [tokyo]", got)
			}
		},
	} {
		t.Run(name, f)
	}
}

func TestBucketsDeterministic(t *testing.T) {
	ctx := context.Background()
	r := newRun(t, baseSpec, 200)
	before := map[string][2]int{}
	for _, d := range fleet(200) {
		p, b, _ := r.e.Phase(d.ID)
		before[d.ID] = [2]int{p, b}
		if b != Bucket(d.ID, "ro-1") {
			t.Fatal("bucket differs from Bucket()")
		}
	}
	first := started(r.record(r.e.Tick(), nil))
	r.record(r.e.Pause("bob", "lunch"))
	r.record(r.e.Resume("bob"))

	// Restart: persist, reload through JSON, rebuild.
	st := &MemStore{}
	st.Save(ctx, r.e.Snapshot())
	s, err := st.Load(ctx, "ro-1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s)
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	e2, err := Restore(&back, r.c.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, pb := range before {
		p, b, _ := e2.Phase(id)
		if [2]int{p, b} != pb {
			t.Fatalf("%s moved from %v to %v", id, pb, [2]int{p, b})
		}
	}
	for _, d := range first {
		if e2.DeviceState(d) != DeviceInProgress {
			t.Fatalf("%s lost its state across restart", d)
		}
	}
	if len(e2.Tick()) != 0 {
		t.Fatal("restored engine restarted devices already in progress")
	}
	// Another rollout orders the fleet differently.
	same := 0
	for _, d := range fleet(200) {
		if Bucket(d.ID, "ro-2") == before[d.ID][1] {
			same++
		}
	}
	if same > 20 {
		t.Fatalf("%d of 200 devices keep their bucket in another rollout", same)
	}
}

// TestSimulated200DevicesPausesAtCanary plays a fleet of 200 devices of
// which 5% (every 20th) fail to install, minute by minute.
func TestSimulated200DevicesPausesAtCanary(t *testing.T) {
	r := newRun(t, baseSpec+`
rate: {maxPerMinute: 10}
abort:
  - {on: [failed, rolled_back, timed_out], thresholdPercent: 5, minExecuted: 10, action: pause}
`, 200)
	for i := 0; i < 200; i += 20 {
		r.fails[fmt.Sprintf("dev-%03d", i)] = true
	}
	inFlight := []string{}
	for minute := 0; minute < 600; minute++ {
		acts := r.record(r.e.Tick(), nil)
		next := started(acts)
		next = append(next, started(r.answer(inFlight))...)
		inFlight = next
		if st, _ := r.e.State(); st != StateRunning {
			break
		}
		r.c.add(time.Minute)
	}
	st, reason := r.e.State()
	if st != StatePaused {
		t.Fatalf("state %s (%s), want paused", st, reason)
	}
	s := r.e.Status()
	if s.Phase != 0 || s.Phases[0].Name != "canary" {
		t.Fatalf("paused in phase %d, want the canary", s.Phase)
	}
	for _, p := range s.Phases[1:] {
		if p.Pending != p.Devices {
			t.Fatalf("a stage device was started: %+v", p)
		}
	}
	c := s.Phases[0]
	if c.Failed == 0 || c.Failed*100 < 5*(c.Succeeded+c.Failed) {
		t.Fatalf("canary %+v", c)
	}
	t.Logf("canary: %d devices, %d succeeded, %d failed; %s", c.Devices, c.Succeeded, c.Failed, reason)
}

package server_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/ota/rollout"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// simFleet enrolls simulated devices (simDevice) eight at a time, so the
// round trips of one device's EST enrollment, TLS handshake and twin
// report overlap with another's crypto.
func (e *estEnv) simFleet(t *testing.T, ids []string, release string) map[string]*simDevice {
	t.Helper()
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		out  = map[string]*simDevice{}
		next = make(chan string)
	)
	for range 8 {
		wg.Go(func() {
			for id := range next {
				d, err := e.newSimDevice(t, id, release)
				if err != nil {
					t.Error(err)
					continue
				}
				mu.Lock()
				out[id] = d
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// auditTail reads acme's audit log from where it last stopped.
type auditTail struct {
	e     *estEnv
	after int64
	recs  []*store.AuditRecord
}

func (a *auditTail) read(t *testing.T) []*store.AuditRecord {
	t.Helper()
	for {
		recs, err := a.e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", AfterSeq: a.after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return a.recs
		}
		a.recs = append(a.recs, recs...)
		a.after = recs[len(recs)-1].Seq
	}
}

// waitIngested waits until the server audited each device's report of
// the given phase of release (ingestOTAStatus feeds the rollout before it
// audits).
func (a *auditTail) waitIngested(t *testing.T, release string, want map[string]string) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d OTA status reports ingested", len(want)), func() bool {
		seen := map[string]bool{}
		for _, r := range a.read(t) {
			dev, ok := strings.CutPrefix(r.Target, "device:")
			if ok && r.Action == "ota.status" && want[dev] != "" && strings.HasPrefix(r.Detail, "phase="+want[dev]+" release="+release+" ") {
				seen[dev] = true
			}
		}
		return len(seen) == len(want)
	})
}

// TestRollout200DevicesPausesAtCanary is issue #10's end-to-end rollout
// at fleet size. 200 devices enroll over EST and hold mTLS MQTT sessions
// (gw-real runs the real agent update engine, the test plays the others'
// engines), all on fw@1.0; 10 of them (5%) fail their health check after
// updating and roll back. fw@1.1 goes out with a 10% canary (bucket
// SHA-256(device || rollout) mod 100 below 10) and "pause once 10% of at
// least 5 executed devices rolled back". Only the canary gets jobs, its
// rollbacks are counted and rolled back, the rollout pauses itself at the
// canary, and hours of ticks later still no device outside it has a job
// or an assignment. An operator's resume continues with the stage: the
// canary's rollbacks no longer count, and it completes with the fleet's
// 10 rollbacks counted in their phases.
func TestRollout200DevicesPausesAtCanary(t *testing.T) {
	const (
		fleetSize = 200
		failing   = fleetSize * 5 / 100
		percent   = 10 // canary
		threshold = 10 // abort rule, percent of executed devices
		minExec   = 5
	)
	began := time.Now()
	e := newESTEnv(t)
	admin := e.adminClient(t)
	r10, r11 := publishV10V11(t, admin)

	real := e.otaDevice(t, "gw-real")
	real.client()
	rep, _ := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName, Patch: json.RawMessage(`{"firmware":{"release":"fw@1.0"}}`)})
	if err := real.conn.Publish(wire.TopicTwinReported, rep, 1); err != nil {
		t.Fatal(err)
	}
	ids := []string{"gw-real"}
	for i := range fleetSize - 1 {
		ids = append(ids, fmt.Sprintf("dev-%03d", i))
	}
	sims := e.simFleet(t, ids[1:], "fw@1.0")
	waitUntil(t, "gw-real's release in its twin", func() bool {
		tw, err := e.srv.Twins.Get(ctx, "acme", "gw-real", wire.DefaultTwinName)
		return err == nil && strings.Contains(string(tw.Reported.Doc), "fw@1.0")
	})
	enrolled := time.Since(began)

	spec := fmt.Sprintf(`release: fw@1.1
canary:
  percent: %d
  soak: 30m
stages:
  - percent: 100
abort:
  - on: [rolled_back]
    thresholdPercent: %d
    minExecuted: %d
    action: pause
timeout: 2h
healthWindow: 10m
`, percent, threshold, minExec)
	var st api.RolloutStatus
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts", api.RolloutRequest{Spec: spec}, &st); err != nil {
		t.Fatal(err)
	}
	id := st.ID
	// The canary as the engine draws it, from the rollout's own ID.
	var canary, rest []string
	for _, d := range ids {
		if rollout.Bucket(d, id) < percent {
			canary = append(canary, d)
		} else {
			rest = append(rest, d)
		}
	}
	// 5% of the fleet is bad. In the canary: the fewest whose rollbacks
	// stay at the threshold even with one more device executed, so that
	// the resumed rollout's first stage device would tip it back into a
	// pause if old outcomes still counted. The other bad devices are
	// outside the canary.
	need := ((len(canary)+1)*threshold + 99) / 100
	// The story needs at least minExecuted canary devices and fewer bad
	// ones: a canary of 5..39 devices, which 200 draws at 10% miss with a
	// chance of 2.5e-5.
	if len(canary) < minExec || need >= minExec {
		t.Fatalf("rollout %s drew a canary of %d devices; the test needs %d..%d", id, len(canary), minExec, 100*(minExec-1)/threshold-1)
	}
	bad := map[string]bool{}
	var badCanary, badRest []string
	for _, d := range canary {
		if d != "gw-real" && len(badCanary) < need {
			badCanary, bad[d] = append(badCanary, d), true
		}
	}
	for _, d := range rest {
		if d != "gw-real" && len(badRest) < failing-need {
			badRest, bad[d] = append(badRest, d), true
		}
	}
	t.Logf("rollout %s: canary of %d devices with %d bad ones, %d bad ones outside it", id, len(canary), len(badCanary), len(badRest))
	if st.State != "running" || st.Devices != fleetSize || len(st.Phases) != 2 || st.Phase != 0 ||
		st.Phases[0].Devices != len(canary) || st.Phases[0].InProgress != len(canary) ||
		st.Phases[1].Devices != len(rest) || st.Phases[1].Pending != len(rest) {
		t.Fatalf("created %+v", st)
	}
	tail := &auditTail{e: e}

	// Canary: every member gets the job; the bad ones roll back, the
	// others commit and open their health gates.
	want := map[string]string{}
	for _, d := range canary {
		if d == "gw-real" {
			booted, jr := real.update(agentota.SlotA)
			if booted != agentota.SlotB || jr.Phase != agentota.PhaseCommitted || jr.Installed.Release != "fw@1.1" {
				t.Fatalf("gw-real in the canary: booted %s, journal %+v", booted, jr)
			}
			want[d] = wire.OTAPhaseCommitted
			continue
		}
		j := sims[d].job()
		if j.Rollout != id || j.Release != "fw@1.1" || j.HealthWindow != 10*time.Minute {
			t.Fatalf("%s job %+v", d, j)
		}
		if bad[d] {
			sims[d].rollBack(j, "health check failed after boot: watchdog reset")
			want[d] = wire.OTAPhaseRolledBack
		} else {
			sims[d].report(j, wire.OTAPhaseCommitted)
			want[d] = wire.OTAPhaseCommitted
		}
	}
	tail.waitIngested(t, "fw@1.1", want)
	s := rolloutStatus(t, admin, id)
	if s.State != "running" || s.Phases[0].RolledBack != need || s.Phases[0].InProgress != len(canary)-need || s.Phases[1].Pending != len(rest) {
		t.Fatalf("canary reported, %d rollbacks under minExecuted: %+v", need, s)
	}
	for _, d := range badCanary {
		if j := sims[d].job(); j.Release != "fw@1.0" || j.Rollout != "" {
			t.Fatalf("%s rollback job %+v", d, j)
		}
		if os, _ := e.srv.OTAState(ctx, "acme", d); os == nil || !slices.Equal(os.Assigned, []string{r10.Target}) {
			t.Fatalf("%s assignment after its rollback: %+v", d, os)
		}
	}

	// The health windows end: the successes bring the executed devices to
	// minExecuted and the rule pauses the rollout inside the canary.
	e.clock.Advance(10*time.Minute + time.Second)
	e.tick(t)
	paused := rolloutStatus(t, admin, id)
	reason := fmt.Sprintf("%d of %d executed devices rolled_back (threshold %d%%) in canary", need, minExec, threshold)
	if paused.State != "paused" || paused.Reason != reason || paused.Phase != 0 {
		t.Fatalf("after the health windows: %+v, want paused: %s", paused, reason)
	}
	if c := paused.Phases[0]; c.Succeeded != len(canary)-need || c.RolledBack != need || c.InProgress != 0 || c.Pending != 0 {
		t.Fatalf("canary counts %+v", c)
	}
	if p := paused.Phases[1]; p.Pending != len(rest) || p.InProgress+p.Succeeded+p.RolledBack+p.Failed+p.TimedOut != 0 {
		t.Fatalf("stage counts %+v", p)
	}
	var failed []string
	for _, f := range paused.Failures {
		failed = append(failed, f.Device)
	}
	if sort.Strings(failed); !slices.Equal(failed, badCanary) {
		t.Fatalf("failures %v, want %v", failed, badCanary)
	}
	pauses := 0
	for _, r := range tail.read(t) {
		if r.Action == "ota.rollout_pause" && r.Target == "rollout:"+id {
			pauses++
			if r.Actor != "rollout:"+id || r.Detail != reason {
				t.Fatalf("pause audited as %+v", r)
			}
		}
	}
	if pauses != 1 {
		t.Fatalf("%d pause entries in the audit log", pauses)
	}
	// ... and raised on the event stream (ward event list, webhooks).
	if err := e.srv.Monitor.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	evs, err := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "ota.rollout_paused", Limit: 10})
	if err != nil || len(evs) != 1 || evs[0].Reason != reason || !strings.Contains(evs[0].Detail, id) || evs[0].Severity != "medium" {
		t.Fatalf("rollout_paused events: %+v %v", evs, err)
	}

	// Paused: hours of ticks start nobody outside the canary.
	for range 3 {
		e.clock.Advance(time.Hour)
		e.tick(t)
	}
	if s := rolloutStatus(t, admin, id); s.State != "paused" || s.Reason != reason || !slices.Equal(s.Phases, paused.Phases) {
		t.Fatalf("paused rollout moved: %+v", s)
	}
	for _, d := range rest {
		if os, _ := e.srv.OTAState(ctx, "acme", d); os != nil && slices.Contains(os.Assigned, r11.Target) {
			t.Fatalf("%s outside the canary was assigned fw@1.1", d)
		}
		if d == "gw-real" {
			if len(real.jobs) != 0 {
				t.Fatal("gw-real outside the canary got a job")
			}
			continue
		}
		sims[d].noJob()
	}

	// An operator looks at the rollbacks and resumes. The canary soaks,
	// then the stage starts on every remaining device.
	op := e.operatorClient(t)
	if err := op.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts/"+id+"/resume", api.RolloutCommandRequest{Reason: "known-bad board revision, RMA opened"}, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "running" || st.Phases[1].Pending != len(rest) {
		t.Fatalf("after resume: %+v", st)
	}
	e.clock.Advance(30 * time.Minute)
	e.tick(t)
	if s := rolloutStatus(t, admin, id); s.Phase != 1 || s.Phases[1].InProgress != len(rest) {
		t.Fatalf("stage: %+v", s)
	}
	jobs := map[string]wire.OTAJob{}
	for _, d := range rest {
		if d != "gw-real" {
			if jobs[d] = sims[d].job(); jobs[d].Rollout != id || jobs[d].Release != "fw@1.1" {
				t.Fatalf("%s job %+v", d, jobs[d])
			}
		}
	}
	// The healthy devices commit and pass their gates: with the canary's
	// rollbacks no longer counted, nothing pauses.
	want = map[string]string{}
	for _, d := range rest {
		switch {
		case d == "gw-real":
			booted, jr := real.update(agentota.SlotA)
			if booted != agentota.SlotB || jr.Phase != agentota.PhaseCommitted || jr.Installed.Release != "fw@1.1" {
				t.Fatalf("gw-real in the stage: booted %s, journal %+v", booted, jr)
			}
			want[d] = wire.OTAPhaseCommitted
		case !bad[d]:
			sims[d].report(jobs[d], wire.OTAPhaseCommitted)
			want[d] = wire.OTAPhaseCommitted
		}
	}
	tail.waitIngested(t, "fw@1.1", want)
	e.clock.Advance(10*time.Minute + time.Second)
	e.tick(t)
	if s := rolloutStatus(t, admin, id); s.State != "running" || s.Phases[1].Succeeded != len(rest)-len(badRest) {
		t.Fatalf("stage after the health windows: %+v", s)
	}
	// The stage's bad devices roll back: 5% of it, under the threshold.
	want = map[string]string{}
	for _, d := range badRest {
		sims[d].rollBack(jobs[d], "health check failed after boot: watchdog reset")
		want[d] = wire.OTAPhaseRolledBack
	}
	tail.waitIngested(t, "fw@1.1", want)
	e.tick(t)

	done := rolloutStatus(t, admin, id)
	if done.State != "completed" || done.Reason != "all phases done" {
		t.Fatalf("final: %+v", done)
	}
	if c, p := done.Phases[0], done.Phases[1]; c != paused.Phases[0] ||
		p.Succeeded != len(rest)-len(badRest) || p.RolledBack != len(badRest) || p.Pending+p.InProgress+p.Failed+p.TimedOut != 0 {
		t.Fatalf("final counts %+v", done.Phases)
	}
	failed = failed[:0]
	for _, f := range done.Failures {
		failed = append(failed, f.Device)
	}
	var allBad []string
	for d := range bad {
		allBad = append(allBad, d)
	}
	sort.Strings(failed)
	sort.Strings(allBad)
	if !slices.Equal(failed, allBad) || len(failed) != failing {
		t.Fatalf("failures %v, want the %d bad devices %v", failed, failing, allBad)
	}
	// Each bad device was sent back to fw@1.0 once; no device got a
	// second fw@1.1 job.
	for _, d := range badRest {
		if j := sims[d].job(); j.Release != "fw@1.0" || j.Rollout != "" {
			t.Fatalf("%s rollback job %+v", d, j)
		}
	}
	for _, d := range ids[1:] {
		sims[d].noJob()
	}
	t.Logf("%d devices enrolled with MQTT sessions in %v; whole test %v", fleetSize, enrolled.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

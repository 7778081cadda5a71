package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// simDevice is an enrolled device with a real MQTT session whose update
// engine the test plays: it receives jobs and publishes ota/status.
type simDevice struct {
	t    *testing.T
	id   string
	conn interface {
		Publish(topic string, payload []byte, qos byte) error
	}
	jobs chan wire.OTAJob
}

func (e *estEnv) simDevice(t *testing.T, id, release string) *simDevice {
	t.Helper()
	d, err := e.newSimDevice(t, id, release)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newSimDevice is simDevice returning its error, so goroutines can use it.
func (e *estEnv) newSimDevice(t *testing.T, id, release string) (*simDevice, error) {
	a, err := e.enroll(t, id)
	if err != nil {
		return nil, err
	}
	c, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	t.Cleanup(c.Close)
	d := &simDevice{t: t, id: id, conn: c, jobs: make(chan wire.OTAJob, 8)}
	if err := c.Subscribe(wire.TopicOTAJob, func(_ string, p []byte) {
		var j wire.OTAJob
		if json.Unmarshal(p, &j) == nil {
			d.jobs <- j
		}
	}); err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	rep, _ := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName,
		Patch: json.RawMessage(`{"firmware":{"hw_model":"` + otaHW + `","release":"` + release + `"}}`)})
	if err := c.Publish(wire.TopicTwinReported, rep, 1); err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	return d, poll("the twin of "+id, func() bool {
		tw, err := e.srv.Twins.Get(ctx, "acme", id, wire.DefaultTwinName)
		return err == nil && strings.Contains(string(tw.Reported.Doc), release)
	})
}

// job waits for the device's next job.
func (d *simDevice) job() wire.OTAJob {
	d.t.Helper()
	select {
	case j := <-d.jobs:
		return j
	case <-time.After(10 * time.Second):
		d.t.Fatalf("%s: no OTA job arrived", d.id)
		return wire.OTAJob{}
	}
}

// noJob checks that no job is waiting.
func (d *simDevice) noJob() {
	d.t.Helper()
	select {
	case j := <-d.jobs:
		d.t.Fatalf("%s got an unexpected job %+v", d.id, j)
	default:
	}
}

func (d *simDevice) report(j wire.OTAJob, phase string) {
	d.t.Helper()
	b, _ := json.Marshal(wire.OTAStatus{Rollout: j.Rollout, Release: j.Release, Phase: phase, Time: time.Now()})
	if err := d.conn.Publish(wire.TopicOTAStatus, b, 1); err != nil {
		d.t.Fatal(err)
	}
}

// rollBack reports that the device's health check failed after the
// update and it went back to its previous slot.
func (d *simDevice) rollBack(j wire.OTAJob, why string) {
	d.t.Helper()
	b, _ := json.Marshal(wire.OTAStatus{Rollout: j.Rollout, Release: j.Release, Phase: wire.OTAPhaseRolledBack, Error: why, Time: time.Now()})
	if err := d.conn.Publish(wire.TopicOTAStatus, b, 1); err != nil {
		d.t.Fatal(err)
	}
}

// waitStatusIngested waits until the server audited the device's report
// (ingestOTAStatus feeds the rollout before it audits).
func (e *estEnv) waitStatusIngested(t *testing.T, device, phase string) {
	t.Helper()
	waitUntil(t, device+" "+phase+" ingested", func() bool {
		recs, _ := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 10000})
		for _, r := range recs {
			if r.Action == "ota.status" && r.Target == "device:"+device && strings.Contains(r.Detail, "phase="+phase) {
				return true
			}
		}
		return false
	})
}

func (e *estEnv) operatorClient(t *testing.T) *client.Client {
	t.Helper()
	sec, _, err := e.srv.Tokens.Create(ctx, nil, tenant.NewTokenRequest{Role: tenant.RoleOperator, Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	c := e.adminClient(t)
	c.Token = sec
	return c
}

func (e *estEnv) tick(t *testing.T) {
	t.Helper()
	if err := e.srv.TickRollouts(ctx); err != nil {
		t.Fatal(err)
	}
}

func rolloutStatus(t *testing.T, c *client.Client, id string) *api.RolloutStatus {
	t.Helper()
	var st api.RolloutStatus
	if err := c.Do(ctx, "GET", "/api/v1/tenants/acme/rollouts/"+id, nil, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func publishV10V11(t *testing.T, c *client.Client) (*api.Release, *api.Release) {
	t.Helper()
	r10, code := publishRelease(t, c, "1.0", 1, randomImage(t))
	if code != http.StatusCreated {
		t.Fatalf("publish 1.0: %d", code)
	}
	r11, code := publishRelease(t, c, "1.1", 2, randomImage(t))
	if code != http.StatusCreated {
		t.Fatalf("publish 1.1: %d", code)
	}
	return r10, r11
}

// TestRolloutCanaryThenFull: a rollout of fw@1.1 over 20 devices (one of
// them runs the real agent update engine over mTLS, the others are
// played by the test on real MQTT sessions) needs a second operator's
// approval, starts with its canary, soaks, widens to the whole fleet,
// rolls back the one device that raised a high-severity security event
// inside its health window, and completes; per-phase counts show it.
func TestRolloutCanaryThenFull(t *testing.T) {
	e := newESTEnv(t)
	admin := e.adminClient(t)
	r10, _ := publishV10V11(t, admin)

	real := e.otaDevice(t, "gw-real")
	real.client()
	sims := map[string]*simDevice{}
	var ids []string
	for i := range 19 {
		id := fmt.Sprintf("sim-%02d", i)
		sims[id], ids = e.simDevice(t, id, "fw@1.0"), append(ids, id)
	}
	spec := `release: fw@1.1
canary:
  devices: [gw-real, sim-00, sim-01]
  soak: 30m
stages:
  - percent: 100
success:
  minPercent: 80
abort:
  - on: [rolled_back, failed]
    thresholdPercent: 50
    minExecuted: 2
    action: pause
timeout: 2h
healthWindow: 10m
approval:
  required: true
`
	var st api.RolloutStatus
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts", api.RolloutRequest{Spec: spec}, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "pending_approval" || st.Devices != 20 || len(st.Phases) != 2 || st.Phases[0].Devices != 3 || st.Phases[1].Devices != 17 {
		t.Fatalf("created %+v", st)
	}
	id := st.ID
	// The creator cannot approve; another operator can.
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts/"+id+"/approve", nil, nil); !isProblem(err, http.StatusConflict) {
		t.Fatalf("self-approval: %v, want 409", err)
	}
	e.tick(t)
	for _, d := range sims {
		d.noJob()
	}
	if err := e.operatorClient(t).Do(ctx, "POST", "/api/v1/tenants/acme/rollouts/"+id+"/approve", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "running" || st.Approver == "" || st.Approver == st.Creator || st.Phases[0].InProgress != 3 {
		t.Fatalf("after approval: %+v", st)
	}

	// Canary: two simulated devices commit, the real engine installs.
	for _, id := range []string{"sim-00", "sim-01"} {
		j := sims[id].job()
		if j.Rollout != st.ID || j.Release != "fw@1.1" || j.HealthWindow != 10*time.Minute {
			t.Fatalf("%s job %+v", id, j)
		}
		sims[id].report(j, wire.OTAPhaseCommitted)
	}
	booted, jr := real.update(agentota.SlotA)
	if booted != agentota.SlotB || jr.Phase != agentota.PhaseCommitted || jr.Installed.Release != "fw@1.1" {
		t.Fatalf("real device: booted %s, journal %+v", booted, jr)
	}
	for _, id := range []string{"sim-00", "sim-01", "gw-real"} {
		e.waitStatusIngested(t, id, wire.OTAPhaseCommitted)
	}
	for _, id := range ids[2:] {
		sims[id].noJob()
	}
	// Inside the health window nothing is decided yet.
	e.clock.Advance(5 * time.Minute)
	e.tick(t)
	if s := rolloutStatus(t, admin, id); s.Phases[0].Succeeded != 0 || s.Phases[0].InProgress != 3 {
		t.Fatalf("before the health window ended: %+v", s.Phases[0])
	}
	e.clock.Advance(5*time.Minute + time.Second)
	e.tick(t)
	if s := rolloutStatus(t, admin, id); s.Phases[0].Succeeded != 3 || s.Phase != 0 {
		t.Fatalf("after the health window: %+v", s)
	}
	// Soaking: the stage waits 30 minutes.
	e.clock.Advance(20 * time.Minute)
	e.tick(t)
	for _, id := range ids[2:] {
		sims[id].noJob()
	}
	e.clock.Advance(10 * time.Minute)
	e.tick(t)
	if s := rolloutStatus(t, admin, id); s.Phase != 1 || s.Phases[1].InProgress != 17 {
		t.Fatalf("full stage: %+v", s)
	}
	jobs := map[string]wire.OTAJob{}
	for _, id := range ids[2:] {
		jobs[id] = sims[id].job()
		sims[id].report(jobs[id], wire.OTAPhaseCommitted)
	}
	for _, id := range ids[2:] {
		e.waitStatusIngested(t, id, wire.OTAPhaseCommitted)
	}
	// A cloned certificate seen for sim-07 inside its window fails its
	// gate at once: the Director names fw@1.0 again and a job says so.
	e.srv.Monitor.Emit(monitor.Event{Type: monitor.CertShared, Tenant: "acme", Device: "sim-07", Reason: "test"})
	e.tick(t)
	if j := sims["sim-07"].job(); j.Release != "fw@1.0" || j.Rollout != "" {
		t.Fatalf("rollback job %+v", j)
	}
	os, err := e.srv.OTAState(ctx, "acme", "sim-07")
	if err != nil || os == nil || !slices.Equal(os.Assigned, []string{r10.Target}) {
		t.Fatalf("sim-07 assignment after the rollback: %+v %v", os, err)
	}
	e.clock.Advance(10*time.Minute + time.Second)
	e.tick(t)
	s := rolloutStatus(t, admin, id)
	if s.State != "completed" || s.Phases[1].Succeeded != 16 || s.Phases[1].RolledBack != 1 ||
		len(s.Failures) != 1 || s.Failures[0].Device != "sim-07" {
		t.Fatalf("final status %+v", s)
	}
	var list []api.RolloutStatus
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/rollouts", nil, &list); err != nil || len(list) != 1 || list[0].State != "completed" {
		t.Fatalf("list: %v %+v", err, list)
	}
	// The decisions are audited.
	recs, _ := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 10000})
	seen := map[string]bool{}
	for _, r := range recs {
		if r.Target == "rollout:"+id || r.Target == "device:sim-07" && r.Action == "ota.rollback" {
			seen[r.Action+"/"+string(r.Result)] = true
		}
	}
	for _, k := range []string{"ota.rollout_create/ok", "ota.rollout_approve/denied", "ota.rollout_approve/ok", "ota.rollout_complete/ok", "ota.rollback/ok"} {
		if !seen[k] {
			t.Errorf("audit lacks %s (have %v)", k, seen)
		}
	}
}

// TestRolloutPausesOnCanaryRollbacks: canary devices that roll back
// above the threshold pause the rollout before any other device gets the
// job; the rolled-back devices are assigned their previous release; an
// abort then rolls back the canary device still updating.
func TestRolloutPausesOnCanaryRollbacks(t *testing.T) {
	e := newESTEnv(t)
	admin := e.adminClient(t)
	r10, _ := publishV10V11(t, admin)
	sims := map[string]*simDevice{}
	for i := range 8 {
		id := fmt.Sprintf("sim-%02d", i)
		sims[id] = e.simDevice(t, id, "fw@1.0")
	}
	spec := `release: fw@1.1
canary:
  devices: [sim-00, sim-01, sim-02]
  soak: 10m
stages:
  - percent: 100
abort:
  - on: [rolled_back]
    thresholdPercent: 50
    minExecuted: 2
    action: pause
timeout: 1h
healthWindow: 5m
`
	var st api.RolloutStatus
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts", api.RolloutRequest{Spec: spec}, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "running" || st.Phases[0].InProgress != 3 {
		t.Fatalf("created %+v", st)
	}
	for _, id := range []string{"sim-00", "sim-01"} {
		sims[id].report(sims[id].job(), wire.OTAPhaseRolledBack)
		e.waitStatusIngested(t, id, wire.OTAPhaseRolledBack)
	}
	j2 := sims["sim-02"].job()
	s := rolloutStatus(t, admin, st.ID)
	if s.State != "paused" || !strings.Contains(s.Reason, "2 of 2 executed devices rolled_back") || s.Phases[0].RolledBack != 2 {
		t.Fatalf("after two rollbacks: %+v", s)
	}
	for _, id := range []string{"sim-00", "sim-01"} {
		if j := sims[id].job(); j.Release != "fw@1.0" {
			t.Fatalf("%s rollback job %+v", id, j)
		}
		if os, _ := e.srv.OTAState(ctx, "acme", id); os == nil || !slices.Equal(os.Assigned, []string{r10.Target}) {
			t.Fatalf("%s assignment: %+v", id, os)
		}
	}
	// Paused: time passes, nobody else starts.
	e.clock.Advance(time.Hour)
	e.tick(t)
	for i := 3; i < 8; i++ {
		sims[fmt.Sprintf("sim-%02d", i)].noJob()
	}
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts/"+st.ID+"/pause", nil, nil); !isProblem(err, http.StatusConflict) {
		t.Fatalf("pausing a paused rollout: %v, want 409", err)
	}
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts/"+st.ID+"/abort", api.RolloutCommandRequest{Reason: "bad canary"}, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "aborted" || !strings.Contains(st.Reason, "bad canary") || st.Phases[0].RolledBack != 3 {
		t.Fatalf("after abort: %+v", st)
	}
	if j := sims["sim-02"].job(); j.Release != "fw@1.0" || j2.Release != "fw@1.1" {
		t.Fatalf("sim-02 was not rolled back: %+v", j)
	}
	// A late report from the aborted rollout changes nothing.
	sims["sim-02"].report(j2, wire.OTAPhaseCommitted)
	e.waitStatusIngested(t, "sim-02", wire.OTAPhaseCommitted)
	if s := rolloutStatus(t, admin, st.ID); s.State != "aborted" || s.Phases[0].RolledBack != 3 {
		t.Fatalf("after a late report: %+v", s)
	}
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/rollouts/ro-ffffffffffffffff", nil, nil); !isProblem(err, http.StatusNotFound) {
		t.Fatalf("unknown rollout: %v", err)
	}
}

// TestOTAGetResendsMissedJob: a device that was offline when its rollout
// job was published gets it, with the rollout ID and attempt, when it
// asks on ota/get after reconnecting; once it reported the outcome
// nothing is sent again. A plain assignment missed while offline is sent
// again until the device reports how it ended. A malformed ask is refused.
func TestOTAGetResendsMissedJob(t *testing.T) {
	e := newESTEnv(t)
	admin := e.adminClient(t)
	publishV10V11(t, admin)

	// connect opens a session listening for jobs.
	connect := func(a interface {
		ConnectMQTT(context.Context, string) (*agent.Conn, error)
	}) (*agent.Conn, chan wire.OTAJob) {
		t.Helper()
		c, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		jobs := make(chan wire.OTAJob, 8)
		if err := c.Subscribe(wire.TopicOTAJob, func(_ string, p []byte) {
			var j wire.OTAJob
			if json.Unmarshal(p, &j) == nil {
				jobs <- j
			}
		}); err != nil {
			t.Fatal(err)
		}
		return c, jobs
	}
	ask := func(c *agent.Conn, jobs chan wire.OTAJob) *wire.OTAJob {
		t.Helper()
		if err := c.Publish(wire.TopicOTAGet, []byte("{}"), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case j := <-jobs:
			return &j
		case <-time.After(time.Second):
			return nil
		}
	}
	status := func(c *agent.Conn, j wire.OTAJob, phase string) {
		t.Helper()
		b, _ := json.Marshal(wire.OTAStatus{Rollout: j.Rollout, Release: j.Release, Phase: phase, Time: time.Now()})
		if err := c.Publish(wire.TopicOTAStatus, b, 1); err != nil {
			t.Fatal(err)
		}
	}

	// Registered (hardware model and release in the twin), then away.
	away, plain := e.enrollAgent(t, "gw-away"), e.enrollAgent(t, "gw-plain")
	for id, a := range map[string]*agent.Agent{"gw-away": away, "gw-plain": plain} {
		c, _ := connect(a)
		rep, _ := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName,
			Patch: json.RawMessage(`{"firmware":{"hw_model":"` + otaHW + `","release":"fw@1.0"}}`)})
		if err := c.Publish(wire.TopicTwinReported, rep, 1); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the twin of "+id, func() bool {
			tw, err := e.srv.Twins.Get(ctx, "acme", id, wire.DefaultTwinName)
			return err == nil && strings.Contains(string(tw.Reported.Doc), "fw@1.0")
		})
		c.Close()
	}
	var st api.RolloutStatus
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts", api.RolloutRequest{Spec: "release: fw@1.1\nselector:\n  devices: [gw-away]\nstages:\n  - percent: 100\ntimeout: 2h\n"}, &st); err != nil {
		t.Fatal(err)
	}
	e.tick(t)
	if st = *rolloutStatus(t, admin, st.ID); st.Phases[0].InProgress != 1 {
		t.Fatalf("rollout did not start the device: %+v", st)
	}
	var as api.OTAAssignment
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/devices/gw-plain/ota/assign", api.AssignRequest{Release: "fw@1.1"}, &as); err != nil {
		t.Fatal(err)
	}

	c, jobs := connect(away)
	j := ask(c, jobs)
	if j == nil || j.Rollout != st.ID || j.Attempt != 1 || j.Release != "fw@1.1" || j.Deadline.IsZero() {
		t.Fatalf("rollout job sent again: %+v", j)
	}
	status(c, *j, wire.OTAPhaseCommitted)
	e.waitStatusIngested(t, "gw-away", wire.OTAPhaseCommitted)
	if j := ask(c, jobs); j != nil {
		t.Fatalf("a job after the device reported committed: %+v", j)
	}

	pc, pjobs := connect(plain)
	j = ask(pc, pjobs)
	if j == nil || j.Rollout != "" || j.Release != "fw@1.1" {
		t.Fatalf("assignment sent again: %+v", j)
	}
	status(pc, *j, wire.OTAPhaseFailed)
	e.waitStatusIngested(t, "gw-plain", wire.OTAPhaseFailed)
	if j := ask(pc, pjobs); j != nil {
		t.Fatalf("a job after the device reported failed: %+v", j)
	}
	// A malformed ask is refused like any malformed device message: the
	// gateway drops the session.
	err := pc.Publish(wire.TopicOTAGet, []byte(`{"release":"x"}`), 1)
	waitUntil(t, "the session dropped", func() bool { return err != nil || !pc.Connected() })
}

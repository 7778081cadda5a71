package server_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	agentattest "github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// chainOf is the boot chain of firmware release rel.
func chainOf(rel string) agentattest.BootChain {
	c := goodChain()
	c.Rootfs = sha256.Sum256([]byte("rootfs image of " + rel))
	return c
}

// gateDevice is a tpmDevice that runs fw@1.0 per its twin and listens
// for OTA jobs.
func (e *estEnv) gateDevice(t *testing.T, id string, sim *tpmtest.Sim) (*tpmDevice, chan wire.OTAJob) {
	t.Helper()
	d := e.tpmDevice(t, id, sim, chainOf("fw@1.0"))
	rep, _ := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName,
		Patch: json.RawMessage(`{"firmware":{"release":"fw@1.0"}}`)})
	if err := d.conn.Publish(wire.TopicTwinReported, rep, 1); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the twin of "+id, func() bool {
		tw, err := e.srv.Twins.Get(ctx, "acme", id, wire.DefaultTwinName)
		return err == nil && strings.Contains(string(tw.Reported.Doc), "fw@1.0")
	})
	jobs := make(chan wire.OTAJob, 8)
	d.listenJobs(jobs)
	return d, jobs
}

func (d *tpmDevice) listenJobs(jobs chan wire.OTAJob) {
	d.t.Helper()
	if err := d.conn.Subscribe(wire.TopicOTAJob, func(_ string, p []byte) {
		var j wire.OTAJob
		if json.Unmarshal(p, &j) == nil {
			jobs <- j
		}
	}); err != nil {
		d.t.Fatal(err)
	}
}

func nextJob(t *testing.T, id string, jobs chan wire.OTAJob) wire.OTAJob {
	t.Helper()
	select {
	case j := <-jobs:
		return j
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no OTA job arrived", id)
		return wire.OTAJob{}
	}
}

// TestRolloutHealthGateAttestation: the attestation step of a rollout's
// health gate, with real (software) TPMs answering over MQTT. Three
// canary devices with enrolled AKs install fw@1.1 and report
// "committed": the one that boots fw@1.1's measured chain passes and
// succeeds once its window ends; the one that boots a tampered kernel
// fails at once; the one that says it committed but still boots fw@1.0
// passes only against its previous release, which does not count. Both
// are rolled back to fw@1.0 before their window ends.
func TestRolloutHealthGateAttestation(t *testing.T) {
	sims := []*tpmtest.Sim{tpmtest.Manufactured(t), tpmtest.Manufactured(t), tpmtest.Manufactured(t)}
	e := newAttestEnv(t, sims...)
	admin := e.adminClient(t)
	r10, _ := publishV10V11(t, admin)

	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	if err := e.srv.SetRefValueKey(ctx, "test", "acme", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"fw@1.0", "fw@1.1"} {
		doc := refDocFor(t, rel, chainOf(rel).Stages())
		sig, err := attest.SignRefValues(doc, priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.srv.ImportRefValues(ctx, "test", "acme", doc, sig); err != nil {
			t.Fatal(err)
		}
	}
	ids := []string{"good-1", "tampered-1", "stale-1"}
	devs := map[string]*tpmDevice{}
	jobs := map[string]chan wire.OTAJob{}
	for i, id := range ids {
		devs[id], jobs[id] = e.gateDevice(t, id, sims[i])
	}
	// Before the rollout every device passes against fw@1.0.
	for _, id := range ids {
		if st := devs[id].attest(); st.Result != wire.VerdictPass || st.Release != "fw@1.0" {
			t.Fatalf("%s before the rollout: %+v", id, st)
		}
	}

	spec := `release: fw@1.1
canary:
  devices: [good-1, tampered-1, stale-1]
  soak: 10m
stages:
  - percent: 100
timeout: 2h
healthWindow: 10m
`
	e.clock.Advance(time.Second)
	var st api.RolloutStatus
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts", api.RolloutRequest{Spec: spec}, &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "running" || st.Phases[0].InProgress != 3 {
		t.Fatalf("created %+v", st)
	}
	jv11 := map[string]wire.OTAJob{}
	for _, id := range ids {
		if jv11[id] = nextJob(t, id, jobs[id]); jv11[id].Release != "fw@1.1" || jv11[id].Rollout != st.ID {
			t.Fatalf("%s job %+v", id, jv11[id])
		}
	}
	gateOpened := e.clock.Now()
	// The devices "install": two reboot into a new chain, one does not.
	tampered := chainOf("fw@1.1")
	tampered.Kernel = sha256.Sum256([]byte("linux 6.12.9 with a rootkit"))
	for id, chain := range map[string]agentattest.BootChain{"good-1": chainOf("fw@1.1"), "tampered-1": tampered} {
		devs[id].reboot(chain)
		devs[id].connect()
		devs[id].listenJobs(jobs[id])
	}
	for _, id := range ids {
		b, _ := json.Marshal(wire.OTAStatus{Rollout: st.ID, Release: "fw@1.1", Phase: wire.OTAPhaseCommitted, Time: time.Now()})
		if err := devs[id].conn.Publish(wire.TopicOTAStatus, b, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		e.waitStatusIngested(t, id, wire.OTAPhaseCommitted)
	}
	// The commit opened each gate and challenged the device; wait for the
	// verdicts the gates asked for.
	verdict := map[string]*api.AttestationState{}
	for _, id := range ids {
		waitUntil(t, "the gate's verdict for "+id, func() bool {
			s, err := e.srv.AttestationState(ctx, "acme", id)
			if err != nil || s == nil || s.Result == "" || s.Time.Before(gateOpened) {
				return false
			}
			verdict[id] = s
			return true
		})
	}
	if v := verdict["good-1"]; v.Result != wire.VerdictPass || v.Release != "fw@1.1" || !v.TPMVerified {
		t.Fatalf("good-1 verdict %+v", v)
	}
	if v := verdict["tampered-1"]; v.Result != wire.VerdictFail {
		t.Fatalf("tampered-1 verdict %+v", v)
	}
	if v := verdict["stale-1"]; v.Result != wire.VerdictPass || v.Release != "fw@1.0" {
		t.Fatalf("stale-1 verdict %+v (want a pass against the previous release only)", v)
	}

	// Inside the window: the two failed gates are decided now, the
	// passed one waits for the window to end.
	e.tick(t)
	s := rolloutStatus(t, admin, st.ID)
	if s.Phases[0].RolledBack != 2 || s.Phases[0].InProgress != 1 || s.Phases[0].Succeeded != 0 {
		t.Fatalf("inside the window: %+v", s.Phases[0])
	}
	var failed []string
	for _, f := range s.Failures {
		failed = append(failed, f.Device)
	}
	slices.Sort(failed)
	if !slices.Equal(failed, []string{"stale-1", "tampered-1"}) {
		t.Fatalf("failures %+v", s.Failures)
	}
	for _, id := range failed {
		if os, _ := e.srv.OTAState(ctx, "acme", id); os == nil || !slices.Equal(os.Assigned, []string{r10.Target}) {
			t.Fatalf("%s assignment after the rollback: %+v", id, os)
		}
	}
	// stale-1 still has its session (it passed, against fw@1.0): the
	// rollback job reaches it.
	if j := nextJob(t, "stale-1", jobs["stale-1"]); j.Release != "fw@1.0" || j.Rollout != "" {
		t.Fatalf("stale-1 rollback job %+v", j)
	}
	recs, _ := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 10000})
	rolledBack := map[string]string{}
	for _, r := range recs {
		if r.Action == "ota.rollback" {
			rolledBack[strings.TrimPrefix(r.Target, "device:")] = r.Detail
		}
	}
	for _, id := range failed {
		if !strings.Contains(rolledBack[id], "attestation") {
			t.Errorf("%s rollback audit %q does not name the attestation", id, rolledBack[id])
		}
	}
	if _, ok := rolledBack["good-1"]; ok {
		t.Fatal("good-1 was rolled back")
	}

	e.clock.Advance(10*time.Minute + time.Second)
	e.tick(t)
	if s := rolloutStatus(t, admin, st.ID); s.Phases[0].Succeeded != 1 || s.Phases[0].RolledBack != 2 {
		t.Fatalf("after the window: %+v", s)
	}
}

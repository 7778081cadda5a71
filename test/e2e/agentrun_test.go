package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	agentattest "github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore/swtpm"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/internal/api"
)

// lockedBuffer collects a process's output for the test to search.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// agentProc is a running `ward-agent run`.
type agentProc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	code int
}

func startAgentRun(t *testing.T, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{cmd: exec.Command(agentBin, append([]string{"run"}, args...)...), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() || os.Getenv("WARD_E2E_VERBOSE") != "" {
			t.Logf("ward-agent run %v output:\n%s", args, p.out)
		}
	})
	return p
}

// waitExit waits for the agent to exit by itself and returns its code.
func (p *agentProc) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(within):
		t.Fatalf("ward-agent run did not exit within %v; output:\n%s", within, p.out)
	}
	return -1
}

// stop sends SIGTERM, as a supervisor does, and returns the exit code.
func (p *agentProc) stop(t *testing.T) int {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	return p.waitExit(t, 30*time.Second)
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: did not happen within %v", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAgentRunDaemon runs the real `ward-agent run` against a real `ward
// server`: an operator's twin change reaches the twin file through the
// hook and comes back as reported state; a rollout installs fw@1.1 into
// the other slot, the agent reboots (exits after --reboot-cmd), the test
// plays the bootloader and starts the agent on the new slot, which passes
// its health gate and commits; then, with the device off when its job is
// published, the agent asks for it on coming back, fw@1.2 fails
// --health-cmd on its trial boot and the agent rolls back to fw@1.1's
// slot by itself.
func TestAgentRunDaemon(t *testing.T) {
	const hw, device = "wardgate-e2e", "gw-run"
	dir := t.TempDir()
	srv := startServer(t, dir)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")

	work := t.TempDir()
	in := func(name string) string { return filepath.Join(work, name) }
	state, otaDir, twinFile := in("state"), in("ota"), in("config/desired.json")
	os.MkdirAll(filepath.Dir(twinFile), 0o700)
	// The operator's commands: the hook copies the file it is given, the
	// reboot command leaves a mark, the health check fails once a marker
	// file exists.
	script := func(name, body string) string {
		p := in(name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hook := script("hook.sh", `cp "$1" `+in("hook-saw.json"))
	reboot := script("reboot.sh", `echo reboot >> `+in("reboots.log"))
	health := script("health.sh", `test ! -e `+in("unhealthy")+` || { echo "self-test: watchdog did not start" >&2; exit 3; }`)

	tok := strings.TrimSpace(w("token", "create", "--enroll", "--tenant", "acme", "--device", device, "--ttl", "1h"))
	if _, errs, code := agent(t, []string{"WARD_ENROLL_TOKEN=" + tok}, "enroll", "--server", "https://"+srv.apiAddr,
		"--ca", filepath.Join(dir, "ca.pem"), "--tenant", "acme", "--device", device, "--state", state, "--mqtt", srv.mqttAddr); code != 0 {
		t.Fatalf("enroll: exit %d: %s", code, errs)
	}
	// The factory image in slot a.
	os.MkdirAll(filepath.Join(otaDir, "slots"), 0o700)
	factory := randomBytes(t, 48<<10)
	os.WriteFile(filepath.Join(otaDir, "slots", "a.img"), factory, 0o600)

	runArgs := func(booted string) []string {
		// --mqtt comes from the settings saved by enroll.
		return []string{"--state", state, "--twin-file", twinFile, "--twin-hook", hook,
			"--ota-dir", otaDir, "--hw", hw, "--booted", booted, "--reboot-cmd", reboot, "--health-cmd", health}
	}
	twin := func() api.Twin {
		var tw api.Twin
		if err := json.Unmarshal([]byte(w("-o", "json", "twin", "get", "--tenant", "acme", device)), &tw); err != nil {
			t.Fatal(err)
		}
		return tw
	}
	reportedFirmware := func() map[string]string {
		var rep struct {
			Firmware map[string]string `json:"firmware"`
		}
		json.Unmarshal(twin().Reported.Doc, &rep)
		return rep.Firmware
	}

	a := startAgentRun(t, runArgs("a")...)
	waitFor(t, "the firmware in the reported twin", 30*time.Second, func() bool {
		fw := reportedFirmware()
		return fw["hw_model"] == hw && fw["slot"] == "a"
	})

	// Twin: operator -> file (through the hook) -> reported.
	w("twin", "set", "--tenant", "acme", device, "--patch", `{"interval":30,"net":{"apn":"iot.example"}}`)
	waitFor(t, "the desired state in the twin file and reported back", 30*time.Second, func() bool {
		tw := twin()
		var rep struct {
			Net struct {
				APN string `json:"apn"`
			} `json:"net"`
		}
		json.Unmarshal(tw.Reported.Doc, &rep)
		return len(tw.Delta) == 0 && rep.Net.APN == "iot.example"
	})
	var doc map[string]any
	b, err := os.ReadFile(twinFile)
	if err != nil || json.Unmarshal(b, &doc) != nil || doc["interval"] != 30.0 {
		t.Fatalf("twin file: %s (%v)", b, err)
	}
	if fi, _ := os.Stat(twinFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("twin file mode %v, want 0600", fi.Mode().Perm())
	}
	if saw, err := os.ReadFile(in("hook-saw.json")); err != nil || !bytes.Equal(saw, b) {
		t.Fatalf("the hook saw %q (%v), the file holds %q", saw, err, b)
	}
	// A deletion: deltas carry only changed keys, so it reaches the file
	// with the whole desired document the device gets when it connects
	// again (below, after the reboot).
	w("twin", "set", "--tenant", "acme", device, "--patch", `{"interval":null,"mode":"eco"}`)
	waitFor(t, "the second change in the twin file", 30*time.Second, func() bool {
		b, _ := os.ReadFile(twinFile)
		return strings.Contains(string(b), `"eco"`)
	})

	// Two releases; a rollout of the first.
	v11, v12 := randomBytes(t, 48<<10), randomBytes(t, 48<<10)
	copy(v12, v11[:24<<10])
	publish := func(version string, sv int, img []byte) {
		f := in("fw-" + version + ".img")
		os.WriteFile(f, img, 0o600)
		w("release", "publish", "--tenant", "acme", "--name", "fw", "--version", version, "--hw", hw,
			"--security-version", fmt.Sprint(sv), "--image", f)
	}
	publish("1.1", 2, v11)
	publish("1.2", 3, v12)
	rollout := func(release string) string {
		spec := in("rollout-" + release + ".yaml")
		os.WriteFile(spec, []byte("release: "+release+"\nselector:\n  hardware: "+hw+
			"\nstages:\n  - percent: 100\ntimeout: 5m\nhealthWindow: 2s\n"), 0o600)
		var st api.RolloutStatus
		if err := json.Unmarshal([]byte(w("-o", "json", "rollout", "create", "--tenant", "acme", "-f", spec)), &st); err != nil {
			t.Fatal(err)
		}
		if st.State != "running" || st.Devices != 1 {
			t.Fatalf("rollout %s created as %+v", release, st)
		}
		return st.ID
	}
	rolloutStatus := func(id string) api.RolloutStatus {
		var st api.RolloutStatus
		if err := json.Unmarshal([]byte(w("-o", "json", "rollout", "status", "--tenant", "acme", id)), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	r1 := rollout("fw@1.1")

	// The agent installs into slot b and reboots: it exits 0 after the
	// reboot command, as it would when systemd takes the device down.
	if code := a.waitExit(t, 60*time.Second); code != 0 {
		t.Fatalf("agent exited %d after installing; output:\n%s", code, a.out)
	}
	if b, _ := os.ReadFile(in("reboots.log")); strings.Count(string(b), "reboot") != 1 {
		t.Fatalf("reboot command ran: %q", b)
	}
	fsys := agentota.DirFS(otaDir)
	boot := func() string {
		t.Helper()
		slot, err := agentota.Boot(fsys)
		if err != nil {
			t.Fatal(err)
		}
		return slot
	}
	if slot := boot(); slot != "b" {
		t.Fatalf("the bootloader boots slot %s, want the new slot b", slot)
	}
	a = startAgentRun(t, runArgs("b")...)
	waitFor(t, "the deleted key to leave the twin file and the reported state", 30*time.Second, func() bool {
		b, _ := os.ReadFile(twinFile)
		return !strings.Contains(string(b), "interval") && !strings.Contains(string(twin().Reported.Doc), "interval")
	})
	waitFor(t, "rollout "+r1+" to complete", 90*time.Second, func() bool { return rolloutStatus(r1).State == "completed" })
	if st := rolloutStatus(r1); st.Phases[0].Succeeded != 1 {
		t.Fatalf("rollout %s: %+v", r1, st)
	}
	if slotB, _ := os.ReadFile(filepath.Join(otaDir, "slots", "b.img")); !bytes.Equal(slotB, v11) {
		t.Fatal("slot b does not hold fw@1.1's image")
	}
	waitFor(t, "the committed release in the reported twin", 30*time.Second, func() bool {
		fw := reportedFirmware()
		return fw["release"] == "fw@1.1" && fw["slot"] == "b"
	})
	out, _, code := agent(t, nil, "status", "--state", state, "--ota-dir", otaDir)
	if code != 0 || !strings.Contains(out, "fw@1.1 in slot b") || !strings.Contains(out, "security version 2") {
		t.Fatalf("status after the commit (exit %d):\n%s", code, out)
	}

	// fw@1.2 fails its health check on the trial boot: the agent rolls
	// back by itself. The device is off when the rollout publishes its
	// job, and asks for it (ota/get) when it comes back.
	os.WriteFile(in("unhealthy"), nil, 0o600)
	if code := a.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	r2 := rollout("fw@1.2")
	waitFor(t, "rollout "+r2+" to start the device while it is off", 30*time.Second, func() bool { return rolloutStatus(r2).Phases[0].InProgress == 1 })
	a = startAgentRun(t, runArgs("b")...)
	if code := a.waitExit(t, 60*time.Second); code != 0 {
		t.Fatalf("agent exited %d after installing fw@1.2", code)
	}
	if slot := boot(); slot != "a" {
		t.Fatalf("the bootloader boots slot %s, want the trial slot a", slot)
	}
	a = startAgentRun(t, runArgs("a")...)
	if code := a.waitExit(t, 60*time.Second); code != 0 {
		t.Fatalf("agent exited %d after the failed health gate", code)
	}
	if !strings.Contains(a.out.String(), "health gate: --health-cmd exited with status 3") {
		t.Fatalf("the rollback does not say why:\n%s", a.out)
	}
	if slot := boot(); slot != "b" {
		t.Fatalf("after the rollback the bootloader boots slot %s, want b", slot)
	}
	a = startAgentRun(t, runArgs("b")...)
	waitFor(t, "rollout "+r2+" to count the rollback", 60*time.Second, func() bool { return rolloutStatus(r2).Phases[0].RolledBack == 1 })
	if slotB, _ := os.ReadFile(filepath.Join(otaDir, "slots", "b.img")); !bytes.Equal(slotB, v11) {
		t.Fatal("slot b no longer holds fw@1.1's image")
	}
	out, _, _ = agent(t, nil, "status", "--state", state, "--ota-dir", otaDir)
	if !strings.Contains(out, "fw@1.1 in slot b") || !strings.Contains(out, "rolled_back") || !strings.Contains(out, "security version 2") {
		t.Fatalf("status after the rollback:\n%s", out)
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	if logs := a.out.String(); strings.Contains(logs, tok) {
		t.Fatal("the enrollment token is in the agent's log")
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAgentRunAttestation: the real `ward-agent run --attest` on a
// software TPM manufactured like a device's (swtpm_setup, EK certificate
// from a maker CA the server trusts) enrolls its attestation key, answers
// the credential activation and a challenge with a TPM quote over the
// measured boot, which the server verifies.
func TestAgentRunAttestation(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	dir := t.TempDir()
	work := t.TempDir()
	in := func(name string) string { return filepath.Join(work, name) }
	var roots []byte
	for _, f := range []string{swtpm.RootCertFile, swtpm.IssuerCertFile} {
		b, err := os.ReadFile(filepath.Join(sim.EKCADir, f))
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, b...)
	}
	os.WriteFile(in("ek-roots.pem"), roots, 0o600)
	os.WriteFile(in("ward.yaml"), []byte("ek_roots: "+in("ek-roots.pem")+"\n"), 0o600)
	srv := startServer(t, dir, "--config", in("ward.yaml"))
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")

	// The measured boot: firmware extends the PCRs and leaves the event
	// log the agent sends with its quotes.
	eventLog := in("eventlog.bin")
	boot := agentattest.SimulatedBoot{Path: eventLog}
	tpm, err := agentattest.Open(agentattest.Config{Path: "tcp://" + sim.Addr, StateDir: t.TempDir(), Boot: boot})
	if err != nil {
		t.Fatal(err)
	}
	chain := agentattest.BootChain{Bootloader: sha256.Sum256([]byte("u-boot")), Config: sha256.Sum256([]byte("cfg")),
		Kernel: sha256.Sum256([]byte("linux")), Rootfs: sha256.Sum256([]byte("rootfs"))}
	if err := boot.Boot(tpm, chain.Stages()); err != nil {
		t.Fatal(err)
	}
	tpm.Close() // swtpm serves one connection at a time: the agent's next

	const device = "gw-tpm"
	state := in("state")
	tok := strings.TrimSpace(w("token", "create", "--enroll", "--tenant", "acme", "--device", device, "--ttl", "1h"))
	if _, errs, code := agent(t, []string{"WARD_ENROLL_TOKEN=" + tok}, "enroll", "--server", "https://"+srv.apiAddr,
		"--ca", filepath.Join(dir, "ca.pem"), "--tenant", "acme", "--device", device, "--state", state); code != 0 {
		t.Fatalf("enroll: exit %d: %s", code, errs)
	}
	a := startAgentRun(t, "--state", state, "--mqtt", srv.mqttAddr, "--attest", "--tpm", "tcp://"+sim.Addr, "--event-log", eventLog)
	admin := srv.admin(t)
	path := "/api/v1/tenants/acme/devices/" + device + "/attestation"
	attestation := func() api.AttestationState {
		var st api.AttestationState
		if err := admin.Do(bg, "GET", path, nil, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	waitFor(t, "the AK enrollment request", 30*time.Second, func() bool { return attestation().AKPending })
	w("device", "approve-ak", "--tenant", "acme", device)
	waitFor(t, "the credential activation answered by the agent", 30*time.Second, func() bool { return attestation().AKEnrolled })
	w("device", "attest", "--tenant", "acme", device)
	waitFor(t, "the verdict on the agent's evidence", 30*time.Second, func() bool { return attestation().Result != "" })
	st := attestation()
	if !st.TPMVerified || st.Assurance != "tpm" || st.Events < len(chain.Stages()) {
		t.Fatalf("attestation state: %+v\nagent output:\n%s", st, a.out)
	}
	// The test publishes no release or reference values, so only the
	// evidence is checked here, not the appraisal.
	t.Logf("verdict %s (%s)", st.Result, strings.Join(st.Reasons, "; "))
	if code := a.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

package agentcli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/wire"
)

// enrolled returns a state directory enrolled with a test server, with
// the given run defaults saved by enroll.
func enrolled(t *testing.T, extra ...string) string {
	t.Helper()
	s := newServer(t)
	s.ca.AddToken("tok", "gw-1")
	state := filepath.Join(t.TempDir(), "state")
	args := append([]string{"enroll", "--server", s.url, "--ca", s.caFile, "--tenant", tenant, "--device", "gw-1",
		"--token-file", writeFile(t, "tok"), "--state", state}, extra...)
	if r := runCLI(t, context.Background(), args...); r.code != 0 {
		t.Fatalf("enroll: %+v", r)
	}
	return state
}

func TestRunReportsEveryFlagProblemAtOnce(t *testing.T) {
	r := runCLI(t, context.Background(), "run", "--mqtt", "nohost", "--twin-hook", "true", "--hw", "m", "--booted", "c",
		"--log-level", "loud", "--event-log", "/x")
	if r.code != exitUsage {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"missing --state", "--log-level must be", "--mqtt must be HOST:PORT", "--twin-hook needs --twin-file",
		"--hw is only used with --ota-dir", "--booted is only used with --ota-dir", "--event-log is only used with --attest"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if n := strings.Count(r.stderr, "ward-agent: error:"); n != 1 {
		t.Errorf("%d error lines, want one listing every problem:\n%s", n, r.stderr)
	}
}

func TestRunValidatesOTAAndAttestation(t *testing.T) {
	state := enrolled(t)
	r := runCLI(t, context.Background(), "run", "--state", state, "--ota-dir", t.TempDir(), "--booted", "c",
		"--slot-a", "/dev/mmcblk0p2", "--image-root", "root.json", "--attest", "--twin-file", "f", "--mqtt", "127.0.0.1:0")
	if r.code != exitUsage {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"--mqtt port must be 1-65535", "--ota-dir needs --hw", "--ota-dir needs --reboot-cmd", "--booted must be a or b",
		"--slot-a and --slot-b go together", "--image-root and --director-root go together", "--attest needs a TPM"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	// Without --mqtt (and none saved), what needs the session says so.
	r = runCLI(t, context.Background(), "run", "--state", state, "--ota-dir", t.TempDir(), "--hw", "m", "--reboot-cmd", "true",
		"--booted", "a", "--twin-file", "f", "--attest", "--tpm", "/dev/tpmrm0")
	for _, want := range []string{"--ota-dir needs --mqtt", "--twin-file needs --mqtt", "--attest needs --mqtt"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}

func TestRunRefusesSharingASimulatorConnection(t *testing.T) {
	var f runFlags
	c := (&app{}).runCmd()
	f.state, f.level, f.mqtt, f.attest = "s", "info", "h:1", true
	p := f.validate(c, &settings{Keystore: "tpm:tcp://127.0.0.1:2321"})
	if len(p) != 1 || !strings.Contains(p[0], "one connection at a time") {
		t.Fatalf("problems: %q", p)
	}
	// A TPM device has a resource manager: sharing it is fine.
	if p := f.validate(c, &settings{Keystore: "tpm:/dev/tpmrm0"}); len(p) != 0 {
		t.Fatalf("problems: %q", p)
	}
	f.tpm = "tcp://127.0.0.1:2331"
	if p := f.validate(c, &settings{Keystore: "file:/k"}); len(p) != 0 {
		t.Fatalf("problems: %q", p)
	}
}

func TestRunReadsTheBootedSlotFromTheKernelCommandLine(t *testing.T) {
	state := enrolled(t, "--mqtt", "127.0.0.1:1", "--ota-dir", filepath.Join(t.TempDir(), "ota"))
	cmdline := writeFile(t, "BOOT_IMAGE=/vmlinuz root=/dev/mmcblk0p2 ro quiet\n")
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, cmdline: cmdline}
	code := runApp(context.Background(), a, []string{"run", "--state", state, "--hw", "m", "--reboot-cmd", "true"})
	if code != exitUsage || !strings.Contains(errb.String(), "no ward.slot= parameter") || !strings.Contains(errb.String(), "give --booted a|b") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	// With ward.slot= the agent starts (and stops with its context).
	os.WriteFile(cmdline, []byte("root=/dev/mmcblk0p3 ward.slot=b quiet\n"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	var serr syncBuffer
	a = &app{stdout: &out, stderr: &serr, cmdline: cmdline}
	done := make(chan int)
	go func() { done <- runApp(ctx, a, []string{"run", "--state", state, "--hw", "m", "--reboot-cmd", "true"}) }()
	waitFor(t, func() bool { return strings.Contains(serr.String(), "booted=b") })
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, serr.String())
	}
}

func TestParseCmdlineSlot(t *testing.T) {
	for in, want := range map[string]string{
		"ward.slot=a":                         "a",
		"root=/dev/sda1 ward.slot=b quiet\n":  "b",
		"ward.slot=a ward.slot=b":             "b", // the last one wins, as for the kernel
		`console=ttyS0 ward.slot="a" rw`:      "a",
		"\tward.slot=b\n":                     "b",
		"ward.slot=":                          "error",
		"ward.slot=c":                         "error",
		"ward.slots=a":                        "error",
		"xward.slot=a":                        "error",
		"":                                    "error",
		strings.Repeat("x", maxCmdlineSize+1): "error",
	} {
		got, err := parseCmdlineSlot([]byte(in))
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("parseCmdlineSlot(%.40q) = %q (%v), want %q", in, got, err, want)
		}
	}
}

func TestParseOTAJob(t *testing.T) {
	j, err := parseOTAJob([]byte(`{"rollout":"ro-1","release":"fw@1.1","health_window":2000000000,"future":true}`))
	if err != nil || j.Rollout != "ro-1" || j.Release != "fw@1.1" || j.HealthWindow != 2*time.Second {
		t.Fatalf("%+v %v", j, err)
	}
	for _, bad := range []string{
		`{"rollout":"ro-1"}`,
		`{"release":"fw@1.1","health_window":-1}`,
		`{"release":"fw@1.1","health_window":999999999999999999}`,
		`{"release":"fw@1.1"} {}`,
		`{"release":"` + strings.Repeat("x", maxReleaseLen+1) + `"}`,
		`{"release":"` + strings.Repeat("x", maxOTAJobSize) + `"}`,
		`[]`,
	} {
		if j, err := parseOTAJob([]byte(bad)); err == nil {
			t.Errorf("accepted %.60s as %+v", bad, j)
		}
	}
}

func TestOutboxKeepsOrderAcrossFailures(t *testing.T) {
	o := newOutbox()
	log := discardLogger()
	o.addStatus(wire.OTAStatus{Phase: wire.OTAPhaseTrial})
	o.addStatus(wire.OTAStatus{Phase: wire.OTAPhaseCommitted})
	o.setFirmware(json.RawMessage(`{"firmware":{"hw_model":"m"}}`))
	down := &fakeSession{failPub: true}
	o.flush(down, log)
	if o.empty() {
		t.Fatal("a failed flush emptied the queue")
	}
	up := &fakeSession{}
	o.flush(up, log)
	if got := strings.Join(up.topics(), ","); got != "ota/status,ota/status,twin/reported" || !o.empty() {
		t.Fatalf("sent %s", got)
	}
	// The engine reports while a flush is publishing: nothing waits for
	// the network, and the new status goes out on the next flush.
	slow := &hookSession{fakeSession: &fakeSession{}, onPublish: func() {
		o.addStatus(wire.OTAStatus{Phase: wire.OTAPhaseFailed})
	}}
	o.addStatus(wire.OTAStatus{Phase: wire.OTAPhaseDownloading})
	o.flush(slow, log)
	if o.empty() || len(o.statuses) != 1 || o.statuses[0].st.Phase != wire.OTAPhaseFailed {
		t.Fatalf("after a flush that raced a report: %+v", o.statuses)
	}
	o.flush(up, log)
	if !o.empty() {
		t.Fatal("the raced status was not sent")
	}
	for i := range maxQueuedStatuses + 5 {
		o.addStatus(wire.OTAStatus{Release: string(rune('a' + i%26))})
	}
	if len(o.statuses) != maxQueuedStatuses {
		t.Fatalf("queue holds %d", len(o.statuses))
	}
}

// TestOutboxAsksForTheJobAfterTheStatuses: on a new session the outbox
// asks for the pending job (ota/get) after the queued statuses, so the
// server judges with the outcomes in hand; a failed ask is repeated on
// the next flush, a successful one is not.
func TestOutboxAsksForTheJobAfterTheStatuses(t *testing.T) {
	o := newOutbox()
	log := discardLogger()
	o.addStatus(wire.OTAStatus{Phase: wire.OTAPhaseRolledBack})
	o.requestJob()
	if o.empty() {
		t.Fatal("a pending ask counts as nothing to send")
	}
	o.flush(&fakeSession{failPub: true}, log)
	up := &fakeSession{}
	o.flush(up, log)
	if got := strings.Join(up.topics(), ","); got != "ota/status,ota/get" || !o.empty() {
		t.Fatalf("sent %s", got)
	}
	again := &fakeSession{}
	o.flush(again, log)
	if len(again.topics()) != 0 {
		t.Fatalf("asked twice: %v", again.topics())
	}
}

func TestPathSlots(t *testing.T) {
	dir := t.TempDir()
	s := pathSlots{a: filepath.Join(dir, "a"), b: filepath.Join(dir, "b")}
	os.WriteFile(s.b, bytes.Repeat([]byte{1}, 100), 0o600)
	f, err := s.OpenSlot(agentota.SlotB, true)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("image"))
	f.Close()
	if b, _ := os.ReadFile(s.b); string(b) != "image" {
		t.Fatalf("slot b holds %q", b)
	}
	if _, err := s.OpenSlot("c", false); err == nil {
		t.Fatal("opened slot c")
	}
}

func TestFirmwareReport(t *testing.T) {
	j := agentota.Journal{Installed: agentota.Installed{Slot: "b", Release: "fw@1.1"}}
	if got := string(firmwareReport("m", j, "b")); got != `{"firmware":{"hw_model":"m","release":"fw@1.1","slot":"b"}}` {
		t.Fatal(got)
	}
	// Booted the other slot (on trial): its release is not yet known.
	if got := string(firmwareReport("m", j, "a")); got != `{"firmware":{"hw_model":"m","slot":"a"}}` {
		t.Fatal(got)
	}
}

// hookSession runs onPublish inside each Publish.
type hookSession struct {
	*fakeSession
	onPublish func()
}

func (h *hookSession) Publish(suffix string, p []byte, qos byte) error {
	h.onPublish()
	return h.fakeSession.Publish(suffix, p, qos)
}

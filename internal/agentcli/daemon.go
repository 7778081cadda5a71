package agentcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore"
	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/wire"
)

// runFlags are the flags of `ward-agent run`.
type runFlags struct {
	state, level                     string
	mqtt                             string
	twinFile, twinHook               string
	attest                           bool
	tpm, eventLog                    string
	otaDir, hw, booted, slotA, slotB string
	rebootCmd, healthCmd             string
	imageRoot, directorRoot          string
	healthTimeout                    time.Duration
}

// otaConfig is the validated OTA part of runFlags.
type otaConfig struct {
	dir, hw, booted         string
	slotA, slotB            string
	imageRoot, directorRoot string
	reboot, health          *shellCmd
	healthTimeout           time.Duration
}

// defaultHealthTimeout is how long a trial boot waits for the MQTT
// session before it is judged unhealthy: an image that cannot reach the
// server cannot be managed and is rolled back.
const defaultHealthTimeout = 10 * time.Minute

// maxHWModelLen bounds --hw, which is compared with the release's
// hardware ID.
const maxHWModelLen = 128

func (a *app) runCmd() *cobra.Command {
	var f runFlags
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the device daemon: renewal, MQTT session, twin, attestation, updates",
		Long: `run is the device daemon. It renews the certificate at two thirds of its
lifetime and, as configured:

  --mqtt HOST:PORT   holds an MQTT session with the gateway over mutual TLS,
                     reconnecting with capped, jittered backoff when it drops
                     and after each renewal (so the gateway sees the new
                     certificate). Saved by 'enroll --mqtt' if given there.
  --twin-file FILE   keeps the desired state of the device's default twin in
                     FILE (JSON, 0600, replaced atomically), runs --twin-hook
                     with FILE as its last argument (and in $WARD_TWIN_FILE),
                     and reports back what was applied. A hook that fails
                     means not applied: the previous file is put back.
  --attest           answers TPM attestation challenges (AK enrollment,
                     quotes, renewals that must attest first) with the TPM
                     of --tpm, or of the keystore when it is a TPM.
  --ota-dir DIR      installs updates: A/B slots (DIR/slots/{a,b}.img, or
                     --slot-a/--slot-b), the update journal, boot environment
                     and anti-rollback floor in DIR. The floor is the TPM's
                     NV counter when the keystore is a TPM, else a MAC-chained
                     log. Jobs come over MQTT and run one at a time; an update
                     interrupted by a crash or power cut resumes at start.
                     Installing ends with --reboot-cmd: when it succeeds the
                     agent exits 0 and expects its supervisor (or the boot)
                     to start it again. On the trial boot the agent waits for
                     the MQTT session, runs --health-cmd (exit 0 = healthy)
                     and keeps running it through the job's health window;
                     it then commits, or rolls back and reboots.

The booted slot comes from --booted or from ward.slot=a|b on the kernel
command line. Operator commands run with /bin/sh -c; their output goes
to the agent's stderr. SIGINT and SIGTERM stop the agent cleanly; an
update in progress is journaled and resumes at the next start.`,
		Example: `  ward-agent run --state /var/lib/ward-agent --mqtt ward.example.com:8883 \
    --twin-file /etc/gateway/desired.json --twin-hook /usr/libexec/gateway-apply-config \
    --ota-dir /var/lib/ward-agent/ota --hw wardgate-2 \
    --slot-a /dev/mmcblk0p2 --slot-b /dev/mmcblk0p3 \
    --reboot-cmd 'systemctl reboot' --health-cmd /usr/libexec/gateway-selftest`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runDaemon(c, &f) },
	}
	fl := c.Flags()
	fl.StringVar(&f.state, "state", "", "state directory written by enroll")
	fl.StringVar(&f.level, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.mqtt, "mqtt", "", "gateway address HOST:PORT for the MQTT session (default: as saved by enroll)")
	fl.StringVar(&f.twinFile, "twin-file", "", "file that receives the desired state of the default twin (needs --mqtt)")
	fl.StringVar(&f.twinHook, "twin-hook", "", "command run after --twin-file changes, with the file's path as its last argument; non-zero exit = not applied")
	fl.BoolVar(&f.attest, "attest", false, "answer TPM attestation challenges (needs --mqtt and a TPM)")
	fl.StringVar(&f.tpm, "tpm", "", "TPM for --attest: /dev/tpmrm0 or tcp://HOST:PORT (default: the keystore's TPM)")
	fl.StringVar(&f.eventLog, "event-log", "", "TCG event log quoted with the PCRs (default "+attest.KernelEventLogPath+")")
	fl.StringVar(&f.otaDir, "ota-dir", "", "directory of the update engine's state and default slots (enables updates; default: as saved by enroll)")
	fl.StringVar(&f.hw, "hw", "", "hardware model of this device, as releases are published for (ward release publish --hw)")
	fl.StringVar(&f.booted, "booted", "", "slot the bootloader booted, a or b (default: ward.slot= on the kernel command line)")
	fl.StringVar(&f.slotA, "slot-a", "", "block device or file of slot a (default OTA-DIR/slots/a.img)")
	fl.StringVar(&f.slotB, "slot-b", "", "block device or file of slot b (default OTA-DIR/slots/b.img)")
	fl.StringVar(&f.rebootCmd, "reboot-cmd", "", "command that reboots the device, e.g. 'systemctl reboot'")
	fl.StringVar(&f.healthCmd, "health-cmd", "", "health check of a trial boot: exit 0 = healthy (default: reaching the server is enough)")
	fl.DurationVar(&f.healthTimeout, "health-timeout", defaultHealthTimeout, "how long a trial boot waits for the MQTT session before rolling back")
	fl.StringVar(&f.imageRoot, "image-root", "", "factory-provisioned root.json of the Image repository (default: fetched once over mTLS and pinned)")
	fl.StringVar(&f.directorRoot, "director-root", "", "factory-provisioned root.json of the device's Director repository")
	return c
}

// validate checks the flags and the saved settings together and returns
// every problem found. s is nil when the settings could not be read.
func (f *runFlags) validate(c *cobra.Command, s *settings) []string {
	var p []string
	set := func(name string) bool { return c.Flags().Changed(name) }
	if f.state == "" {
		p = append(p, "missing --state")
	}
	var lvl slog.Level
	if lvl.UnmarshalText([]byte(f.level)) != nil {
		p = append(p, fmt.Sprintf("--log-level must be debug, info, warn or error, not %q", truncate(f.level, 16)))
	}
	if f.mqtt != "" {
		if err := checkHostPort(f.mqtt); err != nil {
			p = append(p, "--mqtt "+err.Error())
		}
	}
	if f.twinFile != "" && f.mqtt == "" {
		p = append(p, "--twin-file needs --mqtt (the twin arrives over the MQTT session)")
	}
	if f.twinHook != "" && f.twinFile == "" {
		p = append(p, "--twin-hook needs --twin-file")
	}
	ksSpec := keystore.Spec{}
	if s != nil {
		ksSpec, _ = keystore.ParseSpec(s.Keystore)
	}
	if f.tpm != "" {
		if !strings.HasPrefix(f.tpm, "tcp://") && !filepath.IsAbs(f.tpm) {
			p = append(p, "--tpm must be a device path such as /dev/tpmrm0 or tcp://HOST:PORT")
		}
		if !f.attest {
			p = append(p, "--tpm is only used with --attest")
		}
	}
	if set("event-log") && !f.attest {
		p = append(p, "--event-log is only used with --attest")
	}
	if f.attest {
		if f.mqtt == "" {
			p = append(p, "--attest needs --mqtt (challenges arrive over the MQTT session)")
		}
		path := f.attestTPM(ksSpec)
		switch {
		case path == "" && s != nil:
			p = append(p, "--attest needs a TPM: give --tpm /dev/tpmrm0 (or tcp://HOST:PORT), or enroll with a tpm: keystore")
		case strings.HasPrefix(path, "tcp://") && ksSpec.Kind == keystore.KindTPM && ksSpec.Path == path:
			p = append(p, "--attest would open a second connection to the TPM simulator at "+path+
				", which serves one connection at a time: keep the device key in a file or PKCS#11 keystore, or use a TPM device (/dev/tpmrm0)")
		}
	}
	otaOnly := []string{"hw", "booted", "slot-a", "slot-b", "reboot-cmd", "health-cmd", "health-timeout", "image-root", "director-root"}
	if f.otaDir == "" {
		for _, n := range otaOnly {
			if set(n) {
				p = append(p, "--"+n+" is only used with --ota-dir")
			}
		}
		return p
	}
	if f.mqtt == "" {
		p = append(p, "--ota-dir needs --mqtt (update jobs arrive over the MQTT session)")
	}
	switch {
	case f.hw == "":
		p = append(p, "--ota-dir needs --hw MODEL (the hardware model releases are published for)")
	case len(f.hw) > maxHWModelLen || strings.ContainsFunc(f.hw, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		p = append(p, fmt.Sprintf("--hw must be at most %d printable characters without spaces", maxHWModelLen))
	}
	if f.rebootCmd == "" {
		p = append(p, "--ota-dir needs --reboot-cmd (e.g. 'systemctl reboot')")
	}
	if f.booted != "" && f.booted != agentota.SlotA && f.booted != agentota.SlotB {
		p = append(p, fmt.Sprintf("--booted must be a or b, not %q", truncate(f.booted, 16)))
	}
	if (f.slotA == "") != (f.slotB == "") {
		p = append(p, "--slot-a and --slot-b go together")
	}
	if f.slotA != "" && f.slotA == f.slotB {
		p = append(p, "--slot-a and --slot-b must differ")
	}
	if (f.imageRoot == "") != (f.directorRoot == "") {
		p = append(p, "--image-root and --director-root go together")
	}
	if f.healthTimeout <= 0 {
		p = append(p, "--health-timeout must be positive")
	}
	return p
}

// attestTPM is the TPM attestation uses: --tpm, else the keystore's.
func (f *runFlags) attestTPM(ks keystore.Spec) string {
	if f.tpm != "" {
		return f.tpm
	}
	if ks.Kind == keystore.KindTPM {
		return ks.Path
	}
	return ""
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return errors.New("must be HOST:PORT")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return errors.New("port must be 1-65535")
	}
	return nil
}

func (a *app) runDaemon(c *cobra.Command, f *runFlags) error {
	var s *settings
	var settingsErr error
	if f.state != "" {
		st, err := readSettings(f.state)
		if err == nil {
			s = &st
			if f.mqtt == "" {
				f.mqtt = st.MQTT
			}
			if f.otaDir == "" {
				f.otaDir = st.OTADir
			}
		}
		settingsErr = err
	}
	problems := f.validate(c, s)
	if f.otaDir != "" && f.booted == "" && len(problems) == 0 {
		slot, err := readCmdlineSlot(a.cmdline)
		if err != nil {
			problems = append(problems, fmt.Sprintf("cannot tell which slot booted (%v): give --booted a|b, or have the bootloader add ward.slot=a|b to the kernel command line", err))
		}
		f.booted = slot
	}
	if len(problems) > 0 {
		return usageError{fmt.Errorf("run: %s", strings.Join(problems, "; "))}
	}
	if settingsErr != nil {
		return settingsErr
	}
	d, err := a.newDaemon(f, s)
	if err != nil {
		return err
	}
	defer d.close()
	return d.run(c.Context())
}

// daemon is a running `ward-agent run`.
type daemon struct {
	log     *slog.Logger
	ag      *agent.Agent
	store   keystore.Keystore
	closers []func()

	stateDir string
	mqtt     string
	twin     *twinFile
	tpm      *attest.TPM
	ota      *otaConfig

	loop    *sessionLoop
	box     *outbox
	jobs    chan wire.OTAJob
	started time.Time

	mu  sync.Mutex
	eng *agentota.Engine
}

func (a *app) newDaemon(f *runFlags, s *settings) (*daemon, error) {
	log := a.logger(f.level)
	store, err := openKeystore(s.Keystore, f.state)
	if err != nil {
		return nil, err
	}
	d := &daemon{log: log, store: store, stateDir: f.state, mqtt: f.mqtt, box: newOutbox(),
		jobs: make(chan wire.OTAJob, jobQueue), started: time.Now()}
	d.closers = append(d.closers, func() { store.Close() })
	ag, err := agent.New(agent.Config{StateDir: f.state, Keystore: store, Logger: log})
	if err != nil {
		d.close()
		return nil, err
	}
	d.ag = ag
	d.closers = append(d.closers, func() { ag.Close() })
	if f.twinFile != "" {
		d.twin = &twinFile{path: f.twinFile, log: log}
		if f.twinHook != "" {
			hook := shellCmd{line: f.twinHook, out: a.stderr}
			d.twin.hook = func(ctx context.Context, path string) error {
				return hook.run(ctx, hookTimeout, []string{"WARD_TWIN_FILE=" + path}, path)
			}
		}
	}
	if f.attest {
		ks, _ := keystore.ParseSpec(s.Keystore)
		t, err := attest.Open(attest.Config{Path: f.attestTPM(ks), StateDir: f.state, Boot: attest.KernelLog{Path: f.eventLog}})
		if err != nil {
			d.close()
			return nil, fmt.Errorf("opening the TPM for attestation: %w", err)
		}
		d.tpm = t
		d.closers = append(d.closers, func() { t.Close() })
	}
	if f.otaDir != "" {
		d.ota = &otaConfig{dir: f.otaDir, hw: f.hw, booted: f.booted, slotA: f.slotA, slotB: f.slotB,
			imageRoot: f.imageRoot, directorRoot: f.directorRoot, healthTimeout: f.healthTimeout,
			reboot: &shellCmd{line: f.rebootCmd, out: a.stderr}}
		if f.healthCmd != "" {
			d.ota.health = &shellCmd{line: f.healthCmd, out: a.stderr}
		}
	}
	if d.mqtt != "" {
		d.loop = newSessionLoop(log)
		d.loop.dial = func(ctx context.Context) (mqttSession, error) { return d.ag.ConnectMQTT(ctx, d.mqtt) }
		d.loop.setup = d.setup
		d.loop.flush = func(s mqttSession) { d.box.flush(s, d.log) }
		d.loop.credential = func() uint64 { return d.ag.Identity().Generation }
	}
	return d, nil
}

func (d *daemon) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}

// run runs every part until ctx ends or an update reboots the device.
func (d *daemon) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := d.ag.Status()
	args := []any{"tenant", st.Tenant, "device", st.Device, "not_after", st.NotAfter, "next_renewal", st.NextRenewal, "keystore", st.KeystoreKind}
	if d.mqtt != "" {
		args = append(args, "mqtt", d.mqtt)
	}
	if d.ota != nil {
		args = append(args, "ota_dir", d.ota.dir, "booted", d.ota.booted, "hw", d.ota.hw)
	}
	d.log.Info("agent started", args...)

	var wg sync.WaitGroup
	wg.Go(func() { d.ag.Run(ctx) })
	if d.loop != nil {
		wg.Go(func() { d.loop.run(ctx) })
	}
	var otaErr error
	if d.ota != nil {
		wg.Go(func() {
			otaErr = d.otaWorker(ctx)
			cancel()
		})
	}
	<-ctx.Done()
	wg.Wait()
	if errors.Is(otaErr, agentota.ErrRebooting) {
		d.log.Info("the device is rebooting; the agent exits and runs again after the boot")
		return nil
	}
	if otaErr != nil && !errors.Is(otaErr, context.Canceled) {
		return otaErr
	}
	d.log.Info("agent stopped")
	return nil
}

// setup prepares a new MQTT session: job subscription, attestation,
// twin, and the reports the server must have.
func (d *daemon) setup(ctx context.Context, s mqttSession) error {
	if d.ota != nil {
		if err := s.Subscribe(wire.TopicOTAJob, d.onJob); err != nil {
			return err
		}
	}
	if d.tpm != nil {
		conn, ok := s.(*agent.Conn)
		if !ok {
			return errors.New("attestation needs an agent session")
		}
		if err := conn.ServeAttestation(d.tpm); err != nil {
			return fmt.Errorf("attestation: %w", err)
		}
	}
	if d.twin != nil {
		if err := d.syncTwin(ctx, s); err != nil {
			return err
		}
	}
	if eng := d.engine(); eng != nil {
		// A status sent just before a reboot may have been lost with
		// the session: send the current one again (the server ignores
		// duplicates), and the firmware the device now runs.
		if st := eng.Status(); st.Rollout != "" && st.Phase != "" {
			d.box.addStatus(st)
		}
		d.box.setFirmware(firmwareReport(d.ota.hw, eng.Journal(), d.ota.booted))
	}
	if d.ota != nil {
		d.box.requestJob()
	}
	return nil
}

func (d *daemon) syncTwin(ctx context.Context, s mqttSession) error {
	handle := func(what string, apply func(context.Context, []byte) (json.RawMessage, error)) func(string, []byte) {
		return func(_ string, payload []byte) {
			rep, err := apply(ctx, payload)
			if err != nil {
				d.log.Warn("twin "+what+" not applied", "err", err)
				return
			}
			if rep == nil {
				return
			}
			b, err := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName, Patch: rep})
			if err != nil {
				return
			}
			if err := s.Publish(wire.TopicTwinReported, b, 1); err != nil {
				d.log.Warn("twin report not sent", "err", err)
				return
			}
			d.log.Info("twin "+what+" applied", "file", d.twin.path)
		}
	}
	if err := s.Subscribe(wire.TopicTwinDesired, handle("desired state", d.twin.onDesired)); err != nil {
		return err
	}
	if err := s.Subscribe(wire.TopicTwinDelta, handle("delta", d.twin.onDelta)); err != nil {
		return err
	}
	b, _ := json.Marshal(map[string]string{"twin": wire.DefaultTwinName})
	if err := s.Publish(wire.TopicTwinGet, b, 1); err != nil {
		return fmt.Errorf("asking for the twin: %w", err)
	}
	return nil
}

func (d *daemon) onJob(_ string, payload []byte) {
	j, err := parseOTAJob(payload)
	if err != nil {
		d.log.Warn("ignoring a malformed OTA job", "err", err)
		return
	}
	select {
	case d.jobs <- j:
	default:
		d.log.Warn("OTA job dropped: too many waiting", "release", j.Release, "rollout", j.Rollout)
	}
}

func (d *daemon) engine() *agentota.Engine {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eng
}

// openFloor returns the anti-rollback floor: the TPM's NV counter when
// the keystore is a TPM, else the MAC-chained log in the OTA directory.
func (d *daemon) openFloor(fsys agentota.FS) (agentota.Floor, string, error) {
	if d.store.Kind() == keystore.KindTPM {
		f, err := agentota.OpenTPMFloor(keystoreTPM{d.store}, 0)
		if err != nil {
			return nil, "", fmt.Errorf("anti-rollback floor in the TPM: %w", err)
		}
		return f, "tpm", nil
	}
	key, err := floorKey(d.stateDir)
	if err != nil {
		return nil, "", err
	}
	f, err := agentota.NewLogFloor(fsys, key)
	if err != nil {
		return nil, "", err
	}
	return f, "log", nil
}

// otaWorker sets the update engine up, finishes what the previous run
// left (a trial boot to judge, a download to resume) and then handles
// jobs one at a time. It returns ErrRebooting when the device reboots,
// and an error when the engine cannot be set up at all.
func (d *daemon) otaWorker(ctx context.Context) error {
	o := d.ota
	fsys := agentota.DirFS(o.dir)
	if err := fsys.MkdirAll("."); err != nil {
		return fmt.Errorf("OTA directory: %w", err)
	}
	floor, kind, err := d.openFloor(fsys)
	if err != nil {
		return err
	}
	st := d.ag.Status()
	httpc := d.ag.HTTPClient()
	var img, dir []byte
	for attempt := 1; ; attempt++ {
		img, dir, err = loadRoots(ctx, o, httpc, st.Server, st.Device)
		if err == nil {
			break
		}
		if o.imageRoot != "" {
			return err // factory files: retrying will not fix them
		}
		wait := retryWait(attempt)
		d.log.Warn("could not get the update repositories' roots; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	src, err := agentota.NewClient(agentota.ClientConfig{Server: st.Server, DeviceID: st.Device, HardwareID: o.hw,
		ImageRoot: img, DirectorRoot: dir, CacheDir: filepath.Join(o.dir, "tuf"), HTTPClient: httpc})
	if err != nil {
		return err
	}
	var slots agentota.Slots
	if o.slotA != "" {
		slots = pathSlots{a: o.slotA, b: o.slotB}
	}
	eng, err := agentota.New(agentota.Config{FS: fsys, Slots: slots, Source: src, Floor: floor, Booted: o.booted,
		Reboot: d.reboot, Health: d.health, Report: d.report})
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.eng = eng
	d.mu.Unlock()
	j := eng.Journal()
	d.log.Info("update engine ready", "booted", o.booted, "installed", j.Installed.Release, "installed_slot", j.Installed.Slot,
		"phase", j.Phase, "floor", kind)
	if j.Rollout != "" && j.Phase.Final() {
		d.box.addStatus(eng.Status())
	}
	d.box.setFirmware(firmwareReport(o.hw, j, o.booted))
	if d.loop != nil {
		d.loop.signal()
	}

	err = eng.Start(ctx)
	retries := 0
	for {
		if errors.Is(err, agentota.ErrRebooting) {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		d.box.setFirmware(firmwareReport(o.hw, eng.Journal(), o.booted))
		if d.loop != nil {
			d.loop.signal()
		}
		var retry <-chan time.Time
		if err != nil {
			retries++
			wait := retryWait(retries)
			d.log.Warn("update interrupted; it resumes later", "err", err, "retry_in", wait)
			retry = time.After(wait)
		} else {
			retries = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case job := <-d.jobs:
			if j := eng.Journal(); job.Rollout != "" && j.Rollout == job.Rollout && j.Attempt == job.Attempt && j.Release == job.Release && j.Phase.Final() {
				// The same attempt sent again (ota/get) before the server
				// had its outcome, which is queued for it: not a retry.
				d.log.Info("OTA job already handled", "rollout", job.Rollout, "release", job.Release, "phase", j.Phase)
				err = nil
				continue
			}
			d.log.Info("OTA job", "rollout", job.Rollout, "release", job.Release, "health_window", job.HealthWindow)
			err = eng.Handle(ctx, job)
		case <-retry:
			err = eng.Start(ctx)
		}
	}
}

// retryWait is the wait before OTA retry n: exponential from otaRetryMin
// to otaRetryMax, half of it random.
func retryWait(n int) time.Duration {
	d := otaRetryMax
	if n < 20 {
		d = min(otaRetryMin<<(n-1), otaRetryMax)
	}
	return d/2 + time.Duration(randUint64()%uint64(d/2+1))
}

// report queues a status for the server.
func (d *daemon) report(st wire.OTAStatus) {
	d.log.Info("update status", "rollout", st.Rollout, "release", st.Release, "phase", st.Phase, "floor", st.Floor, "error", st.Error)
	d.box.addStatus(st)
	if d.loop != nil {
		d.loop.signal()
	}
}

// flushReports waits, boundedly, until the queued reports have left.
func (d *daemon) flushReports(timeout time.Duration) {
	if d.loop == nil {
		return
	}
	deadline := time.After(timeout)
	for !d.box.empty() {
		d.loop.signal()
		select {
		case <-d.box.sent:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			d.log.Warn("rebooting with update statuses not yet sent; they are sent again after the boot")
			return
		}
	}
}

// reboot is the engine's Reboot: send what the server must know, run
// --reboot-cmd and stop the agent.
func (d *daemon) reboot() error {
	d.flushReports(flushTimeout)
	d.log.Info("rebooting", "booted", d.ota.booted)
	if err := d.ota.reboot.run(context.Background(), rebootCmdTimeout, nil); err != nil {
		return fmt.Errorf("--reboot-cmd %w", err)
	}
	return agentota.ErrRebooting
}

// health is the trial boot's health gate: the device must reach the
// server, pass --health-cmd, and keep passing it until the job's health
// window has passed since the agent started.
func (d *daemon) health(ctx context.Context) error {
	window := d.engine().Journal().HealthWindow
	if err := d.waitConnected(ctx); err != nil {
		return err
	}
	if err := d.healthCmd(ctx); err != nil {
		return err
	}
	end := d.started.Add(window)
	for {
		rem := time.Until(end)
		if rem <= 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(rem, healthRecheck)):
		}
		if err := d.healthCmd(ctx); err != nil {
			return err
		}
	}
	if err := d.waitConnected(ctx); err != nil {
		return err
	}
	d.log.Info("trial boot healthy", "health_window", window)
	return nil
}

func (d *daemon) healthCmd(ctx context.Context) error {
	if d.ota.health == nil {
		return nil
	}
	if err := d.ota.health.run(ctx, healthCmdTimeout, nil); err != nil {
		return fmt.Errorf("--health-cmd %w", err)
	}
	return nil
}

// waitConnected waits for the MQTT session, up to --health-timeout.
func (d *daemon) waitConnected(ctx context.Context) error {
	if d.loop == nil {
		return nil
	}
	deadline := time.After(d.ota.healthTimeout)
	for !d.loop.connected() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("no MQTT session with the server within %v", d.ota.healthTimeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

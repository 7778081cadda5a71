package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/internal/server"
	"github.com/wardiot/ward/wire"
)

const (
	// otaHW is the hardware model of the OTA step's fleet: a model of its
	// own, so the attestation step's devices (another model) are not
	// selected by its rollouts.
	otaHW = "wardgate-2"
	// otaImageSize is the size of the demo's firmware images: large
	// enough for a delta to pay off, small enough to publish instantly.
	otaImageSize = 64 << 10
	// otaWait bounds each wait of the OTA step. The rollouts use
	// one-second soaks and health windows, so every wait ends in a few
	// seconds when the system is healthy.
	otaWait = 20 * time.Second
	// brokenMarker is in the header of the deliberately failing release:
	// the simulated firmware's boot self-test fails on it.
	brokenMarker = "selftest=fail"
)

// otaImage is a firmware image: a header line the simulated firmware's
// self-test reads, then random bytes (base, when given, is kept except
// for its first 8 KiB, so a delta from it is small).
func otaImage(version string, broken bool, base []byte) ([]byte, error) {
	img := make([]byte, otaImageSize)
	if base != nil {
		copy(img, base)
		if _, err := rand.Read(img[:8<<10]); err != nil {
			return nil, err
		}
	} else if _, err := rand.Read(img); err != nil {
		return nil, err
	}
	hdr := "ward demo firmware " + otaHW + " " + version
	if broken {
		hdr += " " + brokenMarker
	}
	copy(img, hdr+"\n")
	return img, nil
}

// selfTest is the simulated firmware's boot self-test: the health gate
// of the trial boot.
func selfTest(img []byte) error {
	line, _, _ := bytes.Cut(img, []byte("\n"))
	if bytes.Contains(line, []byte(brokenMarker)) {
		return errors.New("firmware self-test failed: watchdog service did not start")
	}
	return nil
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// otaAgent is an enrolled device with an MQTT session subscribed to its
// OTA jobs.
type otaAgent struct {
	id   string
	ks   keystore.Keystore
	a    *agent.Agent
	conn *agent.Conn
	jobs chan wire.OTAJob
}

func (d *otaAgent) close() {
	if d.conn != nil {
		d.conn.Close()
	}
	if d.a != nil {
		d.a.Close()
	}
	if d.ks != nil {
		d.ks.Close()
	}
}

// enrollOTAAgent enrolls id with a one-time token, connects it, listens
// for jobs and reports its hardware model (and release, if known) in its
// twin.
func enrollOTAAgent(ctx context.Context, srv *server.Server, admin *client.Client, dir string, caPEM []byte, id, release string) (*otaAgent, error) {
	var tok api.CreatedToken
	if err := admin.Do(ctx, "POST", "/api/v1/tokens", api.CreateTokenRequest{Kind: "enroll", Tenant: "acme", Device: id, TTL: "1h"}, &tok); err != nil {
		return nil, err
	}
	base := filepath.Join(dir, id)
	d := &otaAgent{id: id, jobs: make(chan wire.OTAJob, 8)}
	ks, err := keystore.Open("file:" + filepath.Join(base, "keys"))
	if err != nil {
		return nil, err
	}
	d.ks = ks
	cfg := agent.Config{Server: "https://" + srv.APIAddr(), CABundle: caPEM, Tenant: "acme", Device: id, Keystore: ks, StateDir: filepath.Join(base, "state")}
	if _, err := agent.Enroll(ctx, cfg, agent.Token(tok.Secret)); err != nil {
		return d, fmt.Errorf("enroll %s: %w", id, err)
	}
	if d.a, err = agent.New(agent.Config{Keystore: ks, StateDir: cfg.StateDir}); err != nil {
		return d, err
	}
	if d.conn, err = d.a.ConnectMQTT(ctx, srv.MQTTAddr()); err != nil {
		return d, err
	}
	if err := d.conn.Subscribe(wire.TopicOTAJob, func(_ string, p []byte) {
		var j wire.OTAJob
		if json.Unmarshal(p, &j) == nil {
			select {
			case d.jobs <- j:
			default: // a device that does not keep up finds its assignment in the Director anyway
			}
		}
	}); err != nil {
		return d, err
	}
	fw := `"hw_model":"` + otaHW + `"`
	if release != "" {
		fw += `,"release":"` + release + `"`
	}
	rep, err := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName, Patch: json.RawMessage(`{"firmware":{` + fw + `}}`)})
	if err != nil {
		return d, err
	}
	if err := d.conn.Publish(wire.TopicTwinReported, rep, 1); err != nil {
		return d, err
	}
	return d, waitFor(ctx, id+"'s twin", func() (bool, error) {
		var tw api.Twin
		err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/devices/"+id+"/twin", nil, &tw)
		return strings.Contains(string(tw.Reported.Doc), otaHW), err
	})
}

// nextJob waits for the device's next job.
func (d *otaAgent) nextJob(ctx context.Context) (wire.OTAJob, error) {
	select {
	case j := <-d.jobs:
		return j, nil
	case <-ctx.Done():
		return wire.OTAJob{}, ctx.Err()
	case <-time.After(otaWait):
		return wire.OTAJob{}, fmt.Errorf("%s: no OTA job arrived within %v", d.id, otaWait)
	}
}

// realDevice runs the real update engine (agent/ota) on file slots in a
// directory, with the simulated bootloader ([agentota.Boot]) and a
// reboot that returns ErrRebooting: the demo then "powers the device on"
// again by asking the bootloader which slot to boot and starting a new
// engine on it, exactly as the agent does after a real reboot.
type realDevice struct {
	*otaAgent
	fs     agentota.DirFS
	src    *agentota.Client
	floor  *agentota.LogFloor
	booted string
	// health is the last self-test result, for the narrative.
	health error

	mu        sync.Mutex
	reportErr error // status reports that could not be published
}

func newRealDevice(ctx context.Context, d *otaAgent, dir string, caPEM []byte, srvAddr string) (*realDevice, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	httpc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, GetClientCertificate: d.a.GetClientCertificate}}}
	fs := agentota.DirFS(filepath.Join(dir, d.id, "ota"))
	if err := os.MkdirAll(string(fs), 0o700); err != nil {
		return nil, err
	}
	server := "https://" + srvAddr
	// Trust on first use over the mTLS channel verified with the CA
	// bundle from enrollment; a factory would bake the roots in.
	img, dirRoot, err := agentota.FetchRoots(ctx, httpc, server, d.id)
	if err != nil {
		return nil, err
	}
	src, err := agentota.NewClient(agentota.ClientConfig{Server: server, DeviceID: d.id, HardwareID: otaHW,
		ImageRoot: img, DirectorRoot: dirRoot, CacheDir: filepath.Join(string(fs), "tuf"), HTTPClient: httpc})
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	floor, err := agentota.NewLogFloor(fs, key)
	if err != nil {
		return nil, err
	}
	return &realDevice{otaAgent: d, fs: fs, src: src, floor: floor, booted: agentota.SlotA}, nil
}

func (d *realDevice) engine() (*agentota.Engine, error) {
	booted := d.booted
	return agentota.New(agentota.Config{FS: d.fs, Source: d.src, Floor: d.floor, Booted: booted,
		Reboot: func() error { return agentota.ErrRebooting },
		Health: func(context.Context) error {
			img, err := os.ReadFile(filepath.Join(string(d.fs), "slots", booted+".img"))
			if err == nil {
				err = selfTest(img)
			}
			d.health = err
			return err
		},
		Report: func(st wire.OTAStatus) {
			b, err := json.Marshal(st)
			if err == nil {
				err = d.conn.Publish(wire.TopicOTAStatus, b, 1)
			}
			if err != nil {
				d.mu.Lock()
				d.reportErr = errors.Join(d.reportErr, err)
				d.mu.Unlock()
			}
		}})
}

// update handles the device's next job and then reboots through the
// simulated bootloader until the engine settles (committed, rolled back
// or nothing to do). It returns the journal and the job.
func (d *realDevice) update(ctx context.Context) (agentota.Journal, wire.OTAJob, error) {
	job, err := d.nextJob(ctx)
	if err != nil {
		return agentota.Journal{}, job, err
	}
	e, err := d.engine()
	if err != nil {
		return agentota.Journal{}, job, err
	}
	err = e.Handle(ctx, job)
	for reboots := 0; errors.Is(err, agentota.ErrRebooting); reboots++ {
		if reboots > 3 {
			return e.Journal(), job, errors.New("the device kept rebooting")
		}
		if d.booted, err = agentota.Boot(d.fs); err != nil {
			return e.Journal(), job, err
		}
		if e, err = d.engine(); err != nil {
			return agentota.Journal{}, job, err
		}
		err = e.Start(ctx)
	}
	return e.Journal(), job, err
}

// slotSHA is the SHA-256 of the first n bytes of a slot.
func (d *realDevice) slotSHA(slot string, n int64) (string, error) {
	b, err := os.ReadFile(filepath.Join(string(d.fs), "slots", slot+".img"))
	if err != nil {
		return "", err
	}
	if int64(len(b)) < n {
		return "", fmt.Errorf("slot %s holds %d bytes, want %d", slot, len(b), n)
	}
	return sha(b[:n]), nil
}

// simDevice plays an update engine over a real MQTT session: for each
// job it reports downloading, trial, then committed, or rolled_back for
// a release it was told fails its self-test.
type simDevice struct {
	*otaAgent
	floor   uint64
	release string
	sv      map[string]uint64 // release -> security version
	fails   map[string]bool   // releases whose self-test fails here

	mu  sync.Mutex
	got []string // releases of the rollout jobs received
	err error
}

func (s *simDevice) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-s.jobs:
			s.mu.Lock()
			if j.Rollout != "" {
				s.got = append(s.got, j.Release)
			}
			s.mu.Unlock()
			if j.Release == s.release {
				continue // a rollback to what it runs: nothing to do
			}
			final, errText := wire.OTAPhaseCommitted, ""
			if s.fails[j.Release] {
				final, errText = wire.OTAPhaseRolledBack, "health gate: firmware self-test failed"
			}
			for _, ph := range []string{wire.OTAPhaseDownloading, wire.OTAPhaseTrial, final} {
				if ph == wire.OTAPhaseCommitted {
					s.floor, s.release = max(s.floor, s.sv[j.Release]), j.Release
				}
				st := wire.OTAStatus{Rollout: j.Rollout, Release: j.Release, Phase: ph, Floor: s.floor, Time: time.Now().UTC()}
				if ph == final {
					st.Error = errText
				}
				b, _ := json.Marshal(st)
				if err := s.conn.Publish(wire.TopicOTAStatus, b, 1); err != nil {
					s.mu.Lock()
					s.err = errors.Join(s.err, fmt.Errorf("%s: publish status: %w", s.id, err))
					s.mu.Unlock()
				}
			}
		}
	}
}

func (s *simDevice) jobsFor(release string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.got {
		if r == release {
			n++
		}
	}
	return n
}

// publishImage uploads a release the way `ward release publish` does.
func publishImage(ctx context.Context, c *client.Client, version string, sv uint64, img []byte) (*api.Release, error) {
	q := url.Values{"name": {"fw"}, "version": {version}, "hw": {otaHW}, "security_version": {fmt.Sprint(sv)}}
	req, err := http.NewRequestWithContext(ctx, "POST", c.Base+"/api/v1/tenants/acme/releases?"+q.Encode(), bytes.NewReader(img))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("publish fw@%s: HTTP %d: %s", version, resp.StatusCode, bytes.TrimSpace(body))
	}
	var r api.Release
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// rolloutUntil polls a rollout's status through the API until cond
// holds. The server's own loop ticks rollouts every few seconds; the
// demo ticks on every poll so its one-second windows are not waited for
// twice.
func rolloutUntil(ctx context.Context, srv *server.Server, admin *client.Client, id, what string, cond func(*api.RolloutStatus) bool) (*api.RolloutStatus, error) {
	var st api.RolloutStatus
	deadline := time.Now().Add(otaWait)
	for {
		if err := srv.TickRollouts(ctx); err != nil {
			return nil, err
		}
		st = api.RolloutStatus{}
		if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/rollouts/"+id, nil, &st); err != nil {
			return nil, err
		}
		if cond(&st) {
			return &st, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("rollout %s: %s did not happen within %v (state %s, phases %+v)", id, what, otaWait, st.State, st.Phases)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func otaState(ctx context.Context, admin *client.Client, device string) (*api.OTAState, error) {
	var d api.Device
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/devices/"+device, nil, &d); err != nil {
		return nil, err
	}
	if d.OTA == nil {
		return &api.OTAState{}, nil
	}
	return d.OTA, nil
}

func phaseCounts(p api.RolloutPhase) string {
	return fmt.Sprintf("%s: %d devices, %d succeeded, %d rolled back, %d in progress, %d pending",
		p.Name, p.Devices, p.Succeeded, p.RolledBack, p.InProgress, p.Pending)
}

// ota shows secure updates end to end: releases in the Image repository
// with a server-made delta, the real agent engine installing through it,
// a canary then a full stage approved by a second operator, and a
// deliberately failing release that a device rolls back from and that
// pauses its rollout by itself.
func (r *run) ota(ctx context.Context, srv *server.Server, admin, op *client.Client, dir string, caPEM []byte) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir = filepath.Join(dir, "ota")

	r.say("OTA: publishing fw 1.0 and 1.1 for %s into acme's Image repository (TUF, signed targets)", otaHW)
	v10, err := otaImage("1.0", false, nil)
	if err != nil {
		return err
	}
	v11, err := otaImage("1.1", false, v10)
	if err != nil {
		return err
	}
	r10, err := publishImage(ctx, admin, "1.0", 1, v10)
	if err != nil {
		return err
	}
	r11, err := publishImage(ctx, admin, "1.1", 2, v11)
	if err != nil {
		return err
	}
	if r10.SHA256 != sha(v10) || r11.SHA256 != sha(v11) || r11.Length != otaImageSize || r10.ReleaseCounter != 1 || r11.ReleaseCounter != 2 || len(r11.Deltas) != 1 {
		return fmt.Errorf("published %+v and %+v", r10, r11)
	}
	r.proved("fw@1.0 (counter %d, security version %d) and fw@1.1 (counter %d, security version %d), %d KiB each, hashes match what was uploaded",
		r10.ReleaseCounter, r10.SecurityVersion, r11.ReleaseCounter, r11.SecurityVersion, otaImageSize>>10)
	r.proved("the server made the delta %s (zstd patch from 1.0) as its own signed target", r11.Deltas[0])

	r.say("OTA: six %s devices enroll and connect; gw-ota runs the real update engine (A/B file slots, simulated bootloader)", otaHW)
	real0, err := enrollOTAAgent(ctx, srv, admin, dir, caPEM, "gw-ota", "")
	if real0 != nil {
		defer real0.close()
	}
	if err != nil {
		return err
	}
	dev, err := newRealDevice(ctx, real0, dir, caPEM, srv.APIAddr())
	if err != nil {
		return fmt.Errorf("gw-ota: %w", err)
	}
	var sims []*simDevice
	for i := 1; i <= 5; i++ {
		a, err := enrollOTAAgent(ctx, srv, admin, dir, caPEM, fmt.Sprintf("sim-%d", i), "fw@1.0")
		if a != nil {
			defer a.close()
		}
		if err != nil {
			return err
		}
		// sim-1 will fail fw@1.2's self-test like gw-ota.
		s := &simDevice{otaAgent: a, floor: 1, release: "fw@1.0", sv: map[string]uint64{"fw@1.0": 1, "fw@1.1": 2, "fw@1.2": 3},
			fails: map[string]bool{"fw@1.2": i == 1}}
		sims = append(sims, s)
		go s.run(ctx)
	}
	var as api.OTAAssignment
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/devices/gw-ota/ota/assign", api.AssignRequest{Release: "fw@1.0"}, &as); err != nil {
		return err
	}
	j, _, err := dev.update(ctx)
	if err != nil {
		return fmt.Errorf("gw-ota installing fw@1.0: %w", err)
	}
	if h, err := dev.slotSHA(dev.booted, otaImageSize); err != nil || j.Phase != agentota.PhaseCommitted || h != r10.SHA256 || j.Delta != "" {
		return fmt.Errorf("gw-ota after fw@1.0: booted %s, journal %+v (%v)", dev.booted, j, err)
	}
	r.proved("sim-1..sim-5 report fw@1.0 in their twins and answer OTA jobs over MQTT; gw-ota was flashed with fw@1.0 by a direct assignment")
	r.proved("gw-ota verified both TUF repositories over mTLS, wrote the full image to slot %s, booted it on trial, passed its self-test and committed", dev.booted)

	r.say("OTA: rollout of fw@1.1 — canary gw-ota + sim-1 (soak 1 s), then 100%%; health window 1 s; a second operator must approve")
	spec := `release: fw@1.1
selector:
  hardware: ` + otaHW + `
canary:
  devices: [gw-ota, sim-1]
  soak: 1s
stages:
  - percent: 100
success:
  minPercent: 100
abort:
  - on: [rolled_back, failed]
    thresholdPercent: 50
    minExecuted: 2
    action: pause
timeout: 1m
healthWindow: 1s
approval:
  required: true
`
	var st api.RolloutStatus
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts", api.RolloutRequest{Spec: spec}, &st); err != nil {
		return fmt.Errorf("create rollout: %w", err)
	}
	if st.State != "pending_approval" || st.Devices != 6 || len(st.Phases) != 2 || st.Phases[0].Devices != 2 || st.Phases[1].Devices != 4 {
		return fmt.Errorf("created %+v", st)
	}
	if err := expectStatus(admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts/"+st.ID+"/approve", nil, nil), 409); err != nil {
		return fmt.Errorf("self-approval: %w", err)
	}
	if err := op.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts/"+st.ID+"/approve", nil, &st); err != nil {
		return fmt.Errorf("approve: %w", err)
	}
	if st.State != "running" || st.Phases[0].InProgress != 2 || st.Approver == st.Creator {
		return fmt.Errorf("after approval: %+v", st)
	}
	r.proved("%s selected 6 devices (2 canary, 4 in the full stage); its creator approving it → 409; the acme operator approved → %s", st.ID, st.State)
	j, job, err := dev.update(ctx)
	if err != nil {
		return fmt.Errorf("gw-ota installing fw@1.1: %w", err)
	}
	h, err := dev.slotSHA(dev.booted, otaImageSize)
	if err != nil || job.Rollout != st.ID || j.Phase != agentota.PhaseCommitted || j.Installed.Release != "fw@1.1" || j.Delta == "" || h != r11.SHA256 {
		return fmt.Errorf("gw-ota after fw@1.1: booted %s, job %+v, journal %+v (%v)", dev.booted, job, j, err)
	}
	r.proved("gw-ota got the job over MQTT, downloaded the %d-byte delta instead of the %d-byte image, rebuilt 1.1 into slot %s: its SHA-256 %s… equals the release's",
		j.DeltaLength, j.Length, dev.booted, h[:16])
	s1, err := rolloutUntil(ctx, srv, admin, st.ID, "the canary to pass its health gates", func(s *api.RolloutStatus) bool {
		return s.Phases[0].Succeeded == 2
	})
	if err != nil {
		return err
	}
	if s1.Phases[1].Succeeded != 0 {
		return fmt.Errorf("the full stage finished before the canary soaked: %+v", s1)
	}
	r.proved("%s", phaseCounts(s1.Phases[0]))
	s2, err := rolloutUntil(ctx, srv, admin, st.ID, "the rollout to complete", func(s *api.RolloutStatus) bool { return s.State == "completed" })
	if err != nil {
		return err
	}
	if s2.Phases[1].Succeeded != 4 || len(s2.Failures) != 0 {
		return fmt.Errorf("completed with %+v", s2)
	}
	r.proved("after the 1 s soak the full stage ran: %s → rollout %s", phaseCounts(s2.Phases[1]), s2.State)
	os1, err := otaState(ctx, admin, "gw-ota")
	if err != nil {
		return err
	}
	if os1.Last == nil || os1.Last.Phase != wire.OTAPhaseCommitted || os1.Last.Release != "fw@1.1" || os1.Floor == nil || *os1.Floor != 2 {
		return fmt.Errorf("gw-ota's OTA state: %+v", os1)
	}
	r.proved("GET /devices/gw-ota → last status %s %s, anti-rollback floor %d", os1.Last.Release, os1.Last.Phase, *os1.Floor)

	r.say("OTA: fw@1.2 is deliberately broken (its self-test fails); rollout with canary gw-ota + sim-1, pause when 50%% roll back")
	v12, err := otaImage("1.2", true, v11)
	if err != nil {
		return err
	}
	r12, err := publishImage(ctx, admin, "1.2", 3, v12)
	if err != nil {
		return err
	}
	spec2 := strings.NewReplacer("fw@1.1", "fw@1.2", "approval:\n  required: true\n", "").Replace(spec)
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/rollouts", api.RolloutRequest{Spec: spec2}, &st); err != nil {
		return fmt.Errorf("create rollout: %w", err)
	}
	if st.State != "running" || st.Phases[0].InProgress != 2 {
		return fmt.Errorf("created %+v", st)
	}
	j, job, err = dev.update(ctx)
	if err != nil {
		return fmt.Errorf("gw-ota trying fw@1.2: %w", err)
	}
	h, err = dev.slotSHA(dev.booted, otaImageSize)
	floor, ferr := dev.floor.Floor()
	if err != nil || ferr != nil || job.Release != "fw@1.2" || j.Phase != agentota.PhaseRolledBack || j.Installed.Release != "fw@1.1" ||
		h != r11.SHA256 || floor != 2 || dev.health == nil {
		return fmt.Errorf("gw-ota after fw@1.2: booted %s, journal %+v, floor %d (%v %v)", dev.booted, j, floor, err, ferr)
	}
	r.proved("gw-ota installed 1.2 into the other slot and booted it on trial; %v", dev.health)
	r.proved("so it rolled back by itself: boot environment → slot %s, which still hashes to fw@1.1; floor stays %d (raised only on commit); reported rolled_back",
		dev.booted, floor)
	s3, err := rolloutUntil(ctx, srv, admin, st.ID, "the rollout to pause itself", func(s *api.RolloutStatus) bool { return s.State == "paused" })
	if err != nil {
		return err
	}
	if s3.Phases[0].RolledBack != 2 || s3.Phases[1].InProgress+s3.Phases[1].Succeeded+s3.Phases[1].RolledBack != 0 || !strings.Contains(s3.Reason, "rolled_back") {
		return fmt.Errorf("paused with %+v", s3)
	}
	var failed []string
	for _, f := range s3.Failures {
		failed = append(failed, f.Device+" "+f.State)
	}
	slices.Sort(failed)
	r.proved("rollout %s %s by itself: %s", s3.ID, s3.State, s3.Reason)
	r.proved("%s (%s); full stage: %d pending, none started", phaseCounts(s3.Phases[0]), strings.Join(failed, ", "), s3.Phases[1].Pending)
	// The server points the rolled-back devices' Directors at what they
	// ran, and tells them so; gw-ota's engine finds it already running.
	if err := waitFor(ctx, "gw-ota's Director to name fw@1.1 again", func() (bool, error) {
		s, err := otaState(ctx, admin, "gw-ota")
		return err == nil && slices.Equal(s.Assigned, []string{r11.Target}), err
	}); err != nil {
		return err
	}
	seq := j.Seq
	j, job, err = dev.update(ctx)
	if err != nil || job.Release != "fw@1.1" || job.Rollout != "" || j.Seq != seq || j.Installed.Release != "fw@1.1" {
		return fmt.Errorf("gw-ota's rollback job: %+v, journal %+v (%v)", job, j, err)
	}
	os2, err := otaState(ctx, admin, "gw-ota")
	if err != nil {
		return err
	}
	if os2.Last == nil || os2.Last.Phase != wire.OTAPhaseRolledBack || os2.Last.Release != "fw@1.2" || os2.Floor == nil || *os2.Floor != 2 {
		return fmt.Errorf("gw-ota's OTA state after 1.2: %+v", os2)
	}
	r.proved("GET /devices/gw-ota → last status %s %s (%s), floor %d, Director assigns %s again; the agent agrees it already runs it",
		os2.Last.Release, os2.Last.Phase, os2.Last.Error, *os2.Floor, r11.Release)
	// Paused means paused: another tick, and no other device got 1.2.
	s4, err := rolloutUntil(ctx, srv, admin, st.ID, "a tick", func(*api.RolloutStatus) bool { return true })
	if err != nil {
		return err
	}
	if s4.State != "paused" {
		return fmt.Errorf("the paused rollout moved on: %+v", s4)
	}
	for _, s := range sims[1:] {
		if n := s.jobsFor("fw@1.2"); n != 0 {
			return fmt.Errorf("%s got %d fw@1.2 jobs from a paused rollout", s.id, n)
		}
	}
	dev.mu.Lock()
	err = dev.reportErr
	dev.mu.Unlock()
	for _, s := range sims {
		s.mu.Lock()
		err = errors.Join(err, s.err)
		s.mu.Unlock()
	}
	if err != nil {
		return err
	}
	r.proved("ticked again, still paused: sim-2..sim-5 never received a job for %s (counter %d)", r12.Release, r12.ReleaseCounter)
	return nil
}

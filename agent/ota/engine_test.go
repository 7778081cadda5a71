package ota

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/wardiot/ward/wire"
)

const (
	testDevice = "dev-0001"
	testHW     = "board-rev2"
	testImage  = 96 << 10
)

var testNow = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// images returns v1 and v2 = v1 with a few regions changed, like a
// firmware build with a small change.
func images(seed uint64, size int) (v1, v2 []byte) {
	rng := rand.New(rand.NewPCG(seed, 7))
	v1 = make([]byte, size)
	for i := range v1 {
		// Compressible but not trivial, like code.
		v1[i] = byte(rng.IntN(32)) + 'A'
	}
	v2 = bytes.Clone(v1)
	for range 8 {
		off := rng.IntN(size - 512)
		for i := range 256 {
			v2[off+i] = byte(rng.IntN(256))
		}
	}
	return v1, v2
}

// makeDelta builds a zstd raw-dictionary patch, as the server does.
func makeDelta(t testing.TB, base, target []byte, dictID uint32) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(dictID, base), zstd.WithWindowSize(1<<20),
		zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(target, nil)
}

// fleet is a server with v1 and v2 of a firmware in the Image repository.
type fleet struct {
	srv    *otaServer
	v1, v2 []byte
	c1, c2 map[string]any
}

func newFleet(t testing.TB, withDelta bool) *fleet {
	t.Helper()
	f := &fleet{srv: newOTAServer(t, testNow, testDevice)}
	f.v1, f.v2 = images(1, testImage)
	f.c1 = f.srv.release("fw-1.img", f.v1, testHW, 1, 1)
	f.c2 = f.srv.release("fw-2.img", f.v2, testHW, 2, 2)
	if withDelta {
		d := makeDelta(t, f.v1, f.v2, 1)
		f.srv.image.addTarget("fw-1-to-2.delta", d, map[string]any{
			wire.OTACustomHardwareID: testHW, wire.OTACustomKind: "delta",
			wire.OTACustomDeltaFrom: "fw-1.img", wire.OTACustomDeltaTarget: "fw-2.img",
			wire.OTACustomRelease: "fw@fw-2.img", wire.OTACustomReleaseCounter: 2, wire.OTACustomSecurityVersion: 2,
		})
		f.srv.image.publish()
	}
	f.srv.assign("fw-2.img", f.v2, map[string]any{wire.OTACustomHardwareID: testHW, wire.OTACustomMinSecurityVersion: 1})
	return f
}

// device is a simulated device: its storage, bootloader and agent.
type device struct {
	t      testing.TB
	fs     *faultFS
	client *Client
	floor  Floor
	booted string
	health func(context.Context) error

	mu      sync.Mutex
	reports []wire.OTAStatus
}

// newDevice provisions a device running v1 in slot a, floor 1.
func newDevice(t testing.TB, f *fleet, seed uint64) *device {
	t.Helper()
	d := &device{t: t, fs: newFaultFS(seed), booted: SlotA, health: func(context.Context) error { return nil }}
	c, err := NewClient(ClientConfig{
		Server: f.srv.srv.URL, DeviceID: testDevice, HardwareID: testHW,
		ImageRoot: f.srv.image.rootJSON(), DirectorRoot: f.srv.director.rootJSON(),
		CacheDir: filepath.Join(t.TempDir(), "tuf"), HTTPClient: f.srv.httpClient(t),
		Now: func() time.Time { return testNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	d.client = c
	slot, err := FileSlots{d.fs}.OpenSlot(SlotA, true)
	if err != nil {
		t.Fatal(err)
	}
	slot.Write(f.v1)
	slot.Sync()
	if err := InitBootEnv(d.fs, SlotA); err != nil {
		t.Fatal(err)
	}
	j := &Journal{Phase: PhaseIdle, Installed: Installed{Slot: SlotA, Target: "fw-1.img", Release: "fw@fw-1.img",
		SHA256: sha(f.v1), Length: int64(len(f.v1)), ReleaseCounter: 1, SecurityVersion: 1}}
	if err := writeJournal(d.fs, nil, j); err != nil {
		t.Fatal(err)
	}
	fl, err := NewLogFloor(d.fs, bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if err := fl.Raise(1); err != nil {
		t.Fatal(err)
	}
	d.floor = fl
	d.fs.cleanReboot()
	return d
}

func (d *device) engine() (*Engine, error) {
	e, err := New(Config{
		FS: d.fs, Source: d.client, Floor: d.floor, Booted: d.booted,
		Reboot: func() error { return ErrRebooting },
		Health: func(ctx context.Context) error { return d.health(ctx) },
		Report: func(s wire.OTAStatus) {
			d.mu.Lock()
			d.reports = append(d.reports, s)
			d.mu.Unlock()
		},
		Now: func() time.Time { return testNow },
	})
	if e != nil {
		e.every = 16 << 10
	}
	return e, err
}

// boot runs the simulated bootloader after an orderly reboot.
func (d *device) boot() {
	d.t.Helper()
	d.fs.cleanReboot()
	s, err := Boot(d.fs)
	if err != nil {
		d.t.Fatal(err)
	}
	d.booted = s
}

func (d *device) mustEngine() *Engine {
	d.t.Helper()
	e, err := d.engine()
	if err != nil {
		d.t.Fatal(err)
	}
	return e
}

var job2 = wire.OTAJob{Rollout: "r1", Release: "fw@fw-2.img", HealthWindow: 5 * time.Minute}

// update runs a job to the end with orderly reboots.
func (d *device) update(job wire.OTAJob) *Engine {
	d.t.Helper()
	ctx := context.Background()
	if err := d.mustEngine().Handle(ctx, job); !errors.Is(err, ErrRebooting) {
		d.t.Fatalf("Handle = %v, want ErrRebooting", err)
	}
	d.boot()
	e := d.mustEngine()
	err := e.Start(ctx)
	for errors.Is(err, ErrRebooting) {
		d.boot()
		e = d.mustEngine()
		err = e.Start(ctx)
	}
	if err != nil {
		d.t.Fatalf("Start: %v", err)
	}
	return e
}

func (d *device) slot(s string, n int) []byte {
	b := d.fs.read("slots/" + s + ".img")
	if len(b) < n {
		return b
	}
	return b[:n]
}

func (d *device) phases() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var p []string
	for _, r := range d.reports {
		p = append(p, r.Phase)
	}
	return p
}

func TestEngineInstallsAndCommits(t *testing.T) {
	f := newFleet(t, false)
	d := newDevice(t, f, 1)
	e := d.update(job2)
	j := e.Journal()
	if j.Phase != PhaseCommitted || j.Installed.Slot != SlotB || j.Installed.SHA256 != sha(f.v2) || j.Delta != "" {
		t.Fatalf("journal = %+v", j)
	}
	if d.booted != SlotB || !bytes.Equal(d.slot(SlotB, testImage), f.v2) {
		t.Fatalf("booted %s, slot b holds v2: %v", d.booted, bytes.Equal(d.slot(SlotB, testImage), f.v2))
	}
	env, _, _ := ReadBootEnv(d.fs)
	if env.Active != SlotB || env.UpgradeAvailable {
		t.Fatalf("boot env = %+v", env)
	}
	if fl, _ := d.floor.Floor(); fl != 2 {
		t.Fatalf("floor = %d, want 2", fl)
	}
	st := e.Status()
	if st.Phase != wire.OTAPhaseCommitted || st.Floor != 2 || st.FloorHead == "" || st.Rollout != "r1" {
		t.Fatalf("status = %+v", st)
	}
	want := []string{wire.OTAPhaseDownloading, wire.OTAPhaseInstalling, wire.OTAPhaseRebooting, wire.OTAPhaseTrial, wire.OTAPhaseCommitted}
	if got := compact(d.phases()); !equalStrings(got, want) {
		t.Fatalf("reported phases %v, want %v", got, want)
	}
	// The same job again is a no-op: the device runs it.
	if err := d.mustEngine().Handle(context.Background(), job2); err != nil {
		t.Fatalf("Handle of the installed release = %v", err)
	}
}

func compact(s []string) []string {
	var out []string
	for _, x := range s {
		if len(out) == 0 || out[len(out)-1] != x {
			out = append(out, x)
		}
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestEngineAppliesDelta(t *testing.T) {
	f := newFleet(t, true)
	d := newDevice(t, f, 1)
	// Remember which job used the delta: the journal of the committed
	// job still names it.
	e := d.update(job2)
	j := e.Journal()
	if j.Phase != PhaseCommitted || j.Delta != "fw-1-to-2.delta" {
		t.Fatalf("journal = %+v, want committed via the delta", j)
	}
	if !bytes.Equal(d.slot(SlotB, testImage), f.v2) {
		t.Fatal("slot b does not hold the reconstructed v2")
	}
}

func TestEngineDeltaAgainstWrongBaseFallsBackToFullImage(t *testing.T) {
	f := newFleet(t, false)
	// A base close to v1 but not v1: the patch copies from it, so the
	// device reconstructs the wrong bytes.
	other := bytes.Clone(f.v2)
	for i := 0; i < len(other); i += 997 {
		other[i] ^= 0x55
	}
	f.srv.image.addTarget("fw-1-to-2.delta", makeDelta(t, other, f.v2, 0), map[string]any{
		wire.OTACustomHardwareID: testHW, wire.OTACustomKind: "delta",
		wire.OTACustomDeltaFrom: "fw-1.img", wire.OTACustomDeltaTarget: "fw-2.img",
	})
	f.srv.image.publish()
	d := newDevice(t, f, 1)
	e := d.update(job2)
	j := e.Journal()
	if j.Phase != PhaseCommitted || j.Delta != "" || j.Seq != 2 {
		t.Fatalf("journal = %+v, want the full image committed by a second job", j)
	}
	if !bytes.Equal(d.slot(SlotB, testImage), f.v2) {
		t.Fatal("slot b does not hold v2")
	}
}

func TestEngineHealthGateFailureRollsBack(t *testing.T) {
	f := newFleet(t, false)
	d := newDevice(t, f, 1)
	d.health = func(context.Context) error { return errors.New("no heartbeat") }
	e := d.update(job2)
	j := e.Journal()
	if j.Phase != PhaseRolledBack || j.Installed.Slot != SlotA || d.booted != SlotA {
		t.Fatalf("journal = %+v, booted %s", j, d.booted)
	}
	if fl, _ := d.floor.Floor(); fl != 1 {
		t.Fatalf("floor = %d after rollback, want 1", fl)
	}
	if st := e.Status(); st.Phase != wire.OTAPhaseRolledBack || st.Error == "" {
		t.Fatalf("status = %+v", st)
	}
}

func TestEngineFallsBackWhenTrialSlotNeverComesUp(t *testing.T) {
	f := newFleet(t, false)
	d := newDevice(t, f, 1)
	if err := d.mustEngine().Handle(context.Background(), job2); !errors.Is(err, ErrRebooting) {
		t.Fatal(err)
	}
	// The new slot hangs before the agent starts, BootLimit+1 times.
	for range DefaultBootLimit {
		d.boot()
		if d.booted != SlotB {
			t.Fatalf("booted %s, want the trial slot", d.booted)
		}
	}
	d.boot()
	if d.booted != SlotA {
		t.Fatalf("booted %s past the boot limit, want the committed slot", d.booted)
	}
	e := d.mustEngine()
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if j := e.Journal(); j.Phase != PhaseRolledBack || j.Installed.Slot != SlotA {
		t.Fatalf("journal = %+v", j)
	}
	env, _, _ := ReadBootEnv(d.fs)
	if env.UpgradeAvailable || env.Active != SlotA {
		t.Fatalf("boot env = %+v", env)
	}
}

func TestEngineResumesDownloadWithRange(t *testing.T) {
	f := newFleet(t, false)
	f.srv.cut = 40 << 10
	d := newDevice(t, f, 1)
	ctx := context.Background()
	var err error
	for i := 0; i < 5; i++ {
		err = d.mustEngine().Handle(ctx, job2)
		if errors.Is(err, ErrRebooting) {
			break
		}
		if err == nil {
			t.Fatal("Handle succeeded on a short download")
		}
	}
	if !errors.Is(err, ErrRebooting) {
		t.Fatalf("download never completed: %v", err)
	}
	if f.srv.ranged < 2 {
		t.Fatalf("%d ranged requests, want the download resumed", f.srv.ranged)
	}
}

func TestEngineRefusesEndlessData(t *testing.T) {
	f := newFleet(t, false)
	f.srv.extra = bytes.Repeat([]byte{0}, 1<<20)
	d := newDevice(t, f, 1)
	e := d.mustEngine()
	err := e.Handle(context.Background(), job2)
	if !errors.Is(err, ErrTooLong) {
		t.Fatalf("Handle = %v, want ErrTooLong", err)
	}
	if j := e.Journal(); j.Phase != PhaseFailed {
		t.Fatalf("journal = %+v", j)
	}
	if n := len(d.fs.read(stagingName)); n > 0 {
		t.Fatalf("staging file kept %d bytes", n)
	}
}

func TestEngineRefusesTamperedImage(t *testing.T) {
	f := newFleet(t, false)
	// The Image repository's file store is compromised: the bytes
	// served differ from the signed hash.
	bad := bytes.Clone(f.v2)
	bad[100] ^= 1
	f.srv.image.put("targets/"+sha(f.v2)+".fw-2.img", bad)
	d := newDevice(t, f, 1)
	e := d.mustEngine()
	if err := e.Handle(context.Background(), job2); !errors.Is(err, ErrHash) {
		t.Fatalf("Handle = %v, want ErrHash", err)
	}
	env, _, _ := ReadBootEnv(d.fs)
	if env.UpgradeAvailable {
		t.Fatal("a tampered image was set to boot")
	}
}

// The trial is reported before the health gate runs, so that the server's
// rollout health gate sees the device on trial, and Status answers while
// the gate waits.
func TestEngineReportsTrialBeforeHealthGate(t *testing.T) {
	f := newFleet(t, false)
	d := newDevice(t, f, 1)
	if err := d.mustEngine().Handle(context.Background(), job2); !errors.Is(err, ErrRebooting) {
		t.Fatal(err)
	}
	d.boot()
	e := d.mustEngine()
	var during wire.OTAStatus
	done := make(chan struct{})
	d.health = func(context.Context) error {
		go func() { during = e.Status(); close(done) }()
		<-done
		return nil
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.Journal().HealthWindow != 5*time.Minute {
		t.Fatalf("health window %v after the reboot", e.Journal().HealthWindow)
	}
	if during.Phase != wire.OTAPhaseTrial || during.Release != "fw@fw-2.img" || during.Floor != 1 {
		t.Fatalf("status during the health gate = %+v", during)
	}
	if got := e.Status(); got.Phase != wire.OTAPhaseCommitted || got.Floor != 2 {
		t.Fatalf("status after = %+v", got)
	}
}

// The same update on the operating system's file system: real renames,
// fsyncs and directory syncs.
func TestEngineOnDirFS(t *testing.T) {
	f := newFleet(t, true)
	fsys := DirFS(t.TempDir())
	slot, err := FileSlots{fsys}.OpenSlot(SlotA, true)
	if err != nil {
		t.Fatal(err)
	}
	slot.Write(f.v1)
	slot.Close()
	if err := writeJournal(fsys, nil, &Journal{Phase: PhaseIdle, Installed: Installed{Slot: SlotA, Target: "fw-1.img",
		SHA256: sha(f.v1), Length: int64(len(f.v1)), ReleaseCounter: 1, SecurityVersion: 1}}); err != nil {
		t.Fatal(err)
	}
	floor, _ := NewLogFloor(fsys, bytes.Repeat([]byte{9}, 32))
	client := newTestClient(t, f.srv, filepath.Join(t.TempDir(), "tuf"), fixedNow)
	engine := func(booted string) *Engine {
		e, err := New(Config{FS: fsys, Source: client, Floor: floor, Booted: booted,
			Reboot: func() error { return ErrRebooting },
			Health: func(context.Context) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	if err := engine(SlotA).Handle(context.Background(), job2); !errors.Is(err, ErrRebooting) {
		t.Fatalf("Handle = %v", err)
	}
	booted, err := Boot(fsys)
	if err != nil || booted != SlotB {
		t.Fatalf("Boot = %s, %v", booted, err)
	}
	e := engine(booted)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if j := e.Journal(); j.Phase != PhaseCommitted || j.Delta == "" {
		t.Fatalf("journal = %+v", j)
	}
	b, err := os.ReadFile(filepath.Join(string(fsys), "slots", "b.img"))
	if err != nil || !bytes.Equal(b, f.v2) {
		t.Fatalf("slot b: %v", err)
	}
	if _, err := os.Stat(filepath.Join(string(fsys), stagingName)); !os.IsNotExist(err) {
		t.Fatalf("staging file left behind: %v", err)
	}
}

package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/wardiot/ward/wire"
)

const (
	// stagingName is where downloads are staged before verification.
	stagingName = "staging.bin"
	// checkpointBytes is how often a download is synced and its offset
	// journaled: a power cut loses at most this much, and each
	// checkpoint costs an fsync and a journal rename.
	checkpointBytes = 1 << 20
	// copyBuffer is the I/O chunk size.
	copyBuffer = 64 << 10
)

// Errors the engine returns.
var (
	// ErrBusy means a job is booting or on trial; a new job waits for it.
	ErrBusy = errors.New("ota: an update is on trial; try again after it commits or rolls back")
	// ErrHash means a download or a written slot does not match the
	// target's SHA-256.
	ErrHash = errors.New("ota: content does not match the target's hash")
	// ErrRebooting is what a Reboot function returns when the reboot is
	// simulated (tests, ward-agent simulate): the engine stops as if the
	// process had died.
	ErrRebooting = errors.New("ota: rebooting")
	// errDelta means a delta did not reconstruct the image; the engine
	// falls back to the full image.
	errDelta = errors.New("ota: delta did not reconstruct the image")
)

// Config configures an [Engine].
type Config struct {
	// FS holds the engine's state: state.json, bootenv.0/1, staging.bin
	// (and floor.log for a [LogFloor]).
	FS FS
	// Slots are the A/B slots; FileSlots{FS} if nil.
	Slots Slots
	// Source finds and fetches updates: a [Client].
	Source Source
	// Floor is the anti-rollback floor: a [TPMFloor] when the device has
	// a TPM, otherwise a [LogFloor].
	Floor Floor
	// Booted is the slot the bootloader booted (from the kernel command
	// line on a device, from [Boot] in a simulation).
	Booted string
	// Reboot reboots the device. It does not return on a device; a
	// simulation returns ErrRebooting.
	Reboot func() error
	// Health is the health gate run on the trial boot: nil commits, an
	// error rolls back. It should wait for whatever the device needs
	// (the job's HealthWindow, in [Engine.Journal], connectivity, the
	// server's verdict). The trial status is reported before it runs.
	Health func(ctx context.Context) error
	// Report receives every status change, to publish on
	// ward/v1/<device>/ota/status. It must not block for long.
	Report func(wire.OTAStatus)
	// Now is the clock for status times; time.Now if nil.
	Now func() time.Time
}

// Engine installs updates into the inactive slot and commits them after a
// trial boot. It is safe for concurrent use; jobs run one at a time.
type Engine struct {
	cfg Config

	// every is checkpointBytes; tests lower it to checkpoint small
	// downloads.
	every int64

	// mu serialises jobs: Start and Handle hold it for a whole job.
	mu sync.Mutex
	// smu guards j and status, so that Status and Journal answer while
	// a job runs. j is written only by the job holding mu.
	smu    sync.Mutex
	j      *Journal
	status wire.OTAStatus
}

// New reads the journal and the boot environment, provisioning the boot
// environment with the booted slot as committed on first start.
func New(cfg Config) (*Engine, error) {
	if cfg.FS == nil || cfg.Source == nil || cfg.Floor == nil || cfg.Reboot == nil || cfg.Health == nil {
		return nil, errors.New("ota: engine config needs FS, Source, Floor, Reboot and Health")
	}
	if err := checkSlot(cfg.Booted); err != nil {
		return nil, fmt.Errorf("ota: booted slot: %w", err)
	}
	if cfg.Slots == nil {
		cfg.Slots = FileSlots{cfg.FS}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Report == nil {
		cfg.Report = func(wire.OTAStatus) {}
	}
	if _, _, err := ReadBootEnv(cfg.FS); err != nil {
		if err := InitBootEnv(cfg.FS, cfg.Booted); err != nil {
			return nil, err
		}
	}
	j, err := readJournal(cfg.FS)
	if err != nil {
		return nil, err
	}
	if j.Seq == 0 && j.Phase == PhaseIdle {
		j.Installed.Slot = cfg.Booted
	}
	e := &Engine{cfg: cfg, j: j, every: checkpointBytes}
	e.status = e.statusOf(j)
	return e, nil
}

// Journal returns a copy of the current journal.
func (e *Engine) Journal() Journal {
	e.smu.Lock()
	defer e.smu.Unlock()
	return *e.j
}

// Status returns the last status reported.
func (e *Engine) Status() wire.OTAStatus {
	e.smu.Lock()
	defer e.smu.Unlock()
	return e.status
}

func wirePhase(p Phase) string {
	switch p {
	case PhaseDownloading, PhaseDownloaded:
		return wire.OTAPhaseDownloading
	case PhaseInstalling, PhaseInstalled:
		return wire.OTAPhaseInstalling
	case PhaseRebooting:
		return wire.OTAPhaseRebooting
	case PhaseTrial:
		return wire.OTAPhaseTrial
	case PhaseCommitted:
		return wire.OTAPhaseCommitted
	case PhaseRolledBack:
		return wire.OTAPhaseRolledBack
	case PhaseFailed:
		return wire.OTAPhaseFailed
	}
	return ""
}

func (e *Engine) statusOf(j *Journal) wire.OTAStatus {
	st := wire.OTAStatus{Rollout: j.Rollout, Release: j.Release, Phase: wirePhase(j.Phase), Error: j.Error, Time: e.cfg.Now().UTC()}
	if j.Phase == PhaseIdle {
		st.Release = j.Installed.Release
	}
	if f, err := e.cfg.Floor.Floor(); err == nil {
		st.Floor = f
	}
	if h, ok := e.cfg.Floor.(FloorHeader); ok {
		st.FloorHead = h.Head()
	}
	return st
}

// advance journals j and reports it. Callers hold e.mu.
func (e *Engine) advance(j *Journal) error {
	if err := writeJournal(e.cfg.FS, e.j, j); err != nil {
		return err
	}
	reported := e.j.Phase != j.Phase || e.j.Seq != j.Seq
	var st wire.OTAStatus
	if reported {
		st = e.statusOf(j)
	}
	e.smu.Lock()
	e.j = j
	if reported {
		e.status = st
	}
	e.smu.Unlock()
	if reported {
		e.cfg.Report(st)
	}
	return nil
}

// fail ends the current job as failed.
func (e *Engine) fail(cause error) error {
	if errors.Is(cause, ErrRebooting) || errors.Is(cause, context.Canceled) {
		return cause
	}
	j := *e.j
	j.Phase, j.Error, j.Offset = PhaseFailed, cause.Error(), 0
	if err := e.advance(&j); err != nil {
		return errors.Join(cause, err)
	}
	e.cfg.FS.Remove(stagingName)
	return cause
}

// Start is called once at agent start-up, after the boot: it finishes
// whatever the previous run left (a trial boot to judge, a commit or a
// rollback half done, a download to resume). A trial boot runs the health
// gate and then commits or rolls back (rebooting).
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	j := e.j
	if j.Phase == PhaseIdle || j.Phase.Final() {
		return nil
	}
	if j.Phase.rank() >= PhaseInstalled.rank() {
		env, _, err := ReadBootEnv(e.cfg.FS)
		if err != nil {
			return err
		}
		switch {
		case env.UpgradeAvailable && env.Try == j.Slot && e.cfg.Booted == j.Slot:
			return e.trial(ctx)
		case !env.UpgradeAvailable && env.Active == j.Slot && e.cfg.Booted == j.Slot:
			// The commit reached the boot environment; finish it.
			return e.commit()
		case j.Phase == PhaseInstalled && !env.UpgradeAvailable && env.Active == j.Installed.Slot:
			// The boot environment was never switched: do it now.
			return e.run(ctx)
		case env.UpgradeAvailable && env.Try == j.Slot && env.BootCount == 0:
			// The agent restarted before the device rebooted: the
			// bootloader has not tried the slot yet.
			if j.Phase == PhaseInstalled {
				next := *j
				next.Phase = PhaseRebooting
				if err := e.advance(&next); err != nil {
					return err
				}
			}
			return e.cfg.Reboot()
		default:
			// The bootloader fell back, or a rollback was under way.
			return e.rollback(fmt.Sprintf("slot %s did not boot (booted %s)", j.Slot, e.cfg.Booted), false)
		}
	}
	return e.run(ctx)
}

// Handle runs a job to the reboot into the trial slot (on a simulated
// reboot it returns ErrRebooting). A job for the release already being
// installed resumes it.
func (e *Engine) Handle(ctx context.Context, job wire.OTAJob) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	j := e.j
	if j.Phase != PhaseIdle && !j.Phase.Final() {
		if j.Phase.rank() >= PhaseRebooting.rank() {
			return ErrBusy
		}
		if j.Release == job.Release {
			return e.run(ctx)
		}
		old := *j
		old.Phase, old.Error, old.Offset = PhaseFailed, "superseded by "+job.Release, 0
		if err := e.advance(&old); err != nil {
			return err
		}
	}
	return e.newJob(ctx, job, true)
}

// newJob resolves the job with the repositories and runs it.
func (e *Engine) newJob(ctx context.Context, job wire.OTAJob, delta bool) error {
	floor, err := e.cfg.Floor.Floor()
	if err != nil {
		return fmt.Errorf("ota: floor unreadable, refusing to update: %w", err)
	}
	plan, err := e.cfg.Source.Resolve(ctx, e.j.Installed, floor)
	start := Journal{Seq: e.j.Seq + 1, Phase: PhaseDownloading, Rollout: job.Rollout, Attempt: job.Attempt, Release: job.Release,
		Installed: e.j.Installed, Slot: otherSlot(e.j.Installed.Slot), HealthWindow: max(job.HealthWindow, 0)}
	if err == nil && job.Release != "" && plan.Image.Release != job.Release {
		err = fmt.Errorf("%w: the director names %q, the job %q", ErrDisagree, plan.Image.Release, job.Release)
	}
	if err != nil {
		start.Phase, start.Error, start.Slot = PhaseFailed, err.Error(), ""
		if werr := e.advance(&start); werr != nil {
			return errors.Join(err, werr)
		}
		return err
	}
	img := plan.Image
	if img.SHA256 == e.j.Installed.SHA256 {
		return nil // already running it
	}
	if img.Length > maxImageSize && plan.Delta != nil {
		plan.Delta = nil
	}
	start.Release, start.Target, start.SHA256, start.Length = img.Release, img.Name, img.SHA256, img.Length
	start.ReleaseCounter, start.SecurityVersion = img.ReleaseCounter, img.SecurityVersion
	if d := plan.Delta; d != nil && delta {
		start.Delta, start.DeltaSHA256, start.DeltaLength = d.Name, d.SHA256, d.Length
	}
	e.cfg.FS.Remove(stagingName)
	if err := e.advance(&start); err != nil {
		return err
	}
	err = e.run(ctx)
	if errors.Is(err, errDelta) && delta {
		return e.newJob(ctx, job, false)
	}
	return err
}

// run drives the current job from its phase to the reboot.
func (e *Engine) run(ctx context.Context) error {
	for {
		j := *e.j
		var err error
		switch j.Phase {
		case PhaseDownloading:
			err = e.download(ctx)
			if err == nil {
				j = *e.j
				j.Phase = PhaseDownloaded
				err = e.advance(&j)
			}
		case PhaseDownloaded:
			j.Phase = PhaseInstalling
			err = e.advance(&j)
		case PhaseInstalling:
			err = e.install()
			if err == nil {
				j.Phase = PhaseInstalled
				err = e.advance(&j)
				e.cfg.FS.Remove(stagingName)
			}
		case PhaseInstalled:
			err = WriteBootEnv(e.cfg.FS, BootEnv{Active: j.Installed.Slot, Try: j.Slot, UpgradeAvailable: true, BootLimit: DefaultBootLimit})
			if err == nil {
				j.Phase = PhaseRebooting
				err = e.advance(&j)
			}
		case PhaseRebooting:
			return e.cfg.Reboot()
		default:
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrHash) || errors.Is(err, ErrTooLong) || errors.Is(err, errDelta) {
				return e.fail(err)
			}
			// I/O and network errors leave the job where it is, to be
			// resumed by the next Start or Handle.
			return err
		}
	}
}

// download fetches the full image or the delta into the staging file,
// resuming at the journaled offset.
func (e *Engine) download(ctx context.Context) error {
	j := *e.j
	t := Target{Name: j.Target, SHA256: j.SHA256, Length: j.Length}
	if j.Delta != "" {
		t = Target{Name: j.Delta, SHA256: j.DeltaSHA256, Length: j.DeltaLength}
	}
	fsys := e.cfg.FS
	size, statErr := fsys.Stat(stagingName)
	f, err := fsys.OpenFile(stagingName, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if errors.Is(statErr, fs.ErrNotExist) {
		if err := fsys.SyncDir("."); err != nil {
			return err
		}
		size = 0
	}
	// Only the journaled prefix is known durable; anything after it may
	// be torn.
	off := min(j.Offset, size)
	if err := f.Truncate(off); err != nil {
		return err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	if off < t.Length {
		body, err := e.cfg.Source.Open(ctx, t, off)
		if err != nil {
			return err
		}
		defer body.Close()
		buf := make([]byte, copyBuffer)
		synced := off
		for off < t.Length {
			n, rerr := body.Read(buf[:min(int64(len(buf)), t.Length-off)])
			if n > 0 {
				if _, err := f.Write(buf[:n]); err != nil {
					return err
				}
				off += int64(n)
				if off-synced >= e.every {
					if err := e.checkpoint(f, off); err != nil {
						return err
					}
					synced = off
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				e.checkpoint(f, off)
				return fmt.Errorf("ota: download %s: %w", t.Name, rerr)
			}
		}
		if off < t.Length {
			e.checkpoint(f, off)
			return fmt.Errorf("ota: download %s: server sent %d of %d bytes", t.Name, off, t.Length)
		}
		// Endless data: a server that keeps sending past the length
		// signed for the target is lying.
		var one [1]byte
		if n, _ := io.ReadFull(body, one[:]); n > 0 {
			return fmt.Errorf("%w: %s", ErrTooLong, t.Name)
		}
	}
	if err := e.checkpoint(f, off); err != nil {
		return err
	}
	if err := hashEqual(io.NewSectionReader(f, 0, t.Length), t.SHA256); err != nil {
		return fmt.Errorf("%w: downloaded %s", err, t.Name)
	}
	return nil
}

// checkpoint syncs the staging file and journals how much of it is
// durable.
func (e *Engine) checkpoint(f File, off int64) error {
	if err := f.Sync(); err != nil {
		return err
	}
	if off == e.j.Offset {
		return nil
	}
	j := *e.j
	j.Offset = off
	return e.advance(&j)
}

func hashEqual(r io.Reader, want string) error {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return err
	}
	if hex.EncodeToString(h.Sum(nil)) != want {
		return ErrHash
	}
	return nil
}

// install writes the inactive slot from the staged file (through the
// delta if there is one), syncs it, reads it back and checks its hash.
func (e *Engine) install() error {
	j := e.j
	staged, err := e.cfg.FS.OpenFile(stagingName, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer staged.Close()
	out, err := e.cfg.Slots.OpenSlot(j.Slot, true)
	if err != nil {
		return err
	}
	defer out.Close()
	h := sha256.New()
	w := io.MultiWriter(out, h)
	if j.Delta != "" {
		if err := e.applyDelta(w, staged, h); err != nil {
			return err
		}
	} else if _, err := io.CopyBuffer(w, io.NewSectionReader(staged, 0, j.Length), make([]byte, copyBuffer)); err != nil {
		return err
	}
	if hex.EncodeToString(h.Sum(nil)) != j.SHA256 {
		return fmt.Errorf("%w: written image", ErrHash)
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	// Read back what the medium holds, not what we meant to write.
	back, err := e.cfg.Slots.OpenSlot(j.Slot, false)
	if err != nil {
		return err
	}
	defer back.Close()
	if err := hashEqual(slotReader(back, j.Length), j.SHA256); err != nil {
		return fmt.Errorf("%w: slot %s read back", err, j.Slot)
	}
	return nil
}

func (e *Engine) applyDelta(w io.Writer, patch File, h hash.Hash) error {
	j := e.j
	if j.Installed.Length <= 0 || j.Installed.Length > maxImageSize {
		return errDelta
	}
	active, err := e.cfg.Slots.OpenSlot(j.Installed.Slot, false)
	if err != nil {
		return err
	}
	base := make([]byte, j.Installed.Length)
	_, err = io.ReadFull(slotReader(active, j.Installed.Length), base)
	active.Close()
	if err != nil {
		return err
	}
	n, err := ApplyDelta(w, io.NewSectionReader(patch, 0, j.DeltaLength), base, j.Length)
	if err != nil || n != j.Length || hex.EncodeToString(h.Sum(nil)) != j.SHA256 {
		return fmt.Errorf("%w (%v)", errDelta, err)
	}
	return nil
}

// trial runs the health gate on the trial boot.
func (e *Engine) trial(ctx context.Context) error {
	if e.j.Phase != PhaseTrial {
		j := *e.j
		j.Phase = PhaseTrial
		if err := e.advance(&j); err != nil {
			return err
		}
	}
	if err := e.cfg.Health(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return e.rollback("health gate: "+err.Error(), true)
	}
	env, _, err := ReadBootEnv(e.cfg.FS)
	if err != nil {
		return err
	}
	env.Active, env.Try, env.UpgradeAvailable, env.BootCount = e.j.Slot, e.j.Slot, false, 0
	// The boot environment first: once it names the new slot, raising
	// the floor cannot strand the device on a slot below it.
	if err := WriteBootEnv(e.cfg.FS, *env); err != nil {
		return err
	}
	return e.commit()
}

// commit raises the floor and journals the new slot as installed.
func (e *Engine) commit() error {
	j := *e.j
	if err := e.cfg.Floor.Raise(j.SecurityVersion); err != nil {
		return err
	}
	j.Phase, j.Offset, j.Error = PhaseCommitted, 0, ""
	j.Installed = Installed{Slot: j.Slot, Target: j.Target, Release: j.Release, SHA256: j.SHA256, Length: j.Length,
		ReleaseCounter: j.ReleaseCounter, SecurityVersion: j.SecurityVersion}
	return e.advance(&j)
}

// rollback points the boot environment back at the committed slot and
// ends the job; reboot if the trial slot is running.
func (e *Engine) rollback(reason string, reboot bool) error {
	env, _, err := ReadBootEnv(e.cfg.FS)
	if err != nil {
		return err
	}
	if env.UpgradeAvailable || env.Active != e.j.Installed.Slot {
		env.Active, env.Try, env.UpgradeAvailable, env.BootCount = e.j.Installed.Slot, e.j.Installed.Slot, false, 0
		if err := WriteBootEnv(e.cfg.FS, *env); err != nil {
			return err
		}
	}
	j := *e.j
	j.Phase, j.Error, j.Offset = PhaseRolledBack, reason, 0
	if err := e.advance(&j); err != nil {
		return err
	}
	if reboot {
		return e.cfg.Reboot()
	}
	return nil
}

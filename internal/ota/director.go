package ota

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/internal/ota/tufrepo"
	"github.com/wardiot/ward/wire"
)

var (
	// ErrBelowFloor is returned when an assignment would install a
	// security version below the device's reported floor.
	ErrBelowFloor = errors.New("ota: release security version is below the device's anti-rollback floor")
	// ErrWrongHardware is returned when a target is for another model.
	ErrWrongHardware = errors.New("ota: release is for another hardware model")
)

// Floors keeps each device's anti-rollback floor (highest committed
// security version) as last reported.
type Floors interface {
	// LastFloor returns the last reported floor; ok is false if the
	// device never reported one.
	LastFloor(ctx context.Context, device string) (floor uint64, ok bool, err error)
	// SetFloor raises the device's floor to floor; a floor never goes
	// down, so a lower value than the stored one is ignored. The
	// comparison and the write are one atomic step, so that concurrent
	// reports (on several server nodes) keep the highest.
	SetFloor(ctx context.Context, device string, floor uint64) error
}

// Devices tells the Director what it needs about a device.
type Devices interface {
	HardwareID(ctx context.Context, device string) (string, error)
	// MinSecurityVersion is the tenant's current minimum security version
	// (raised after a vulnerable release is withdrawn).
	MinSecurityVersion(ctx context.Context, device string) (uint64, error)
}

// Event is a security-relevant OTA event for the monitor.
type Event struct {
	Type     string // EventFloorDecreased
	Device   string
	Previous uint64
	Reported uint64
	Time     time.Time
}

// EventFloorDecreased: a device reported a lower anti-rollback floor than
// before: its storage was rolled back or replaced, or it is an impostor.
const EventFloorDecreased = "ota.floor_decreased"

// Events receives OTA security events (the monitor implements it).
type Events interface {
	Emit(ctx context.Context, e Event)
}

// DirectorConfig configures a [Director].
type DirectorConfig struct {
	Store   tufrepo.Store
	Sealer  tufrepo.Sealer
	Image   *Image
	Floors  Floors
	Devices Devices
	Events  Events
	Now     func() time.Time
	Expiry  tufrepo.Expiry
}

// DirectorExpiry is short because every Director key is online: a
// stolen snapshot of a device's metadata is useless within a day.
var DirectorExpiry = tufrepo.Expiry{
	Root:      365 * 24 * time.Hour,
	Targets:   7 * 24 * time.Hour,
	Snapshot:  24 * time.Hour,
	Timestamp: 24 * time.Hour,
}

// Director is the per-device Director repository: its targets name
// exactly what one device must install. All four roles use online keys
// held sealed by the server, shared by every device's repository.
type Director struct {
	cfg                                DirectorConfig
	root, targets, snapshot, timestamp tufrepo.Signer
	mu                                 sync.Mutex // serialises root creation
	// assignMu serialises assignments, so Restage's read-then-write
	// cannot put back targets another assignment just replaced.
	assignMu sync.Mutex
}

// NewDirector loads (or creates and seals) the Director's online keys.
func NewDirector(ctx context.Context, cfg DirectorConfig) (*Director, error) {
	if cfg.Store == nil || cfg.Sealer == nil || cfg.Image == nil || cfg.Floors == nil || cfg.Devices == nil || cfg.Events == nil {
		return nil, errors.New("ota: director needs store, sealer, image, floors, devices and events")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Expiry == (tufrepo.Expiry{}) {
		cfg.Expiry = DirectorExpiry
	}
	d := &Director{cfg: cfg}
	for name, dst := range map[string]*tufrepo.Signer{
		"director-root": &d.root, "director-targets": &d.targets,
		"director-snapshot": &d.snapshot, "director-timestamp": &d.timestamp,
	} {
		s, err := tufrepo.OnlineKey(ctx, cfg.Store, cfg.Sealer, name)
		if err != nil {
			return nil, err
		}
		*dst = s
	}
	return d, nil
}

func (d *Director) repo(ctx context.Context, device string) (*tufrepo.Repo, error) {
	if err := wire.ValidateDeviceID(device); err != nil {
		return nil, err
	}
	r := d.newRepo(device)
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := r.Root(ctx); err == nil {
		return r, nil
	} else if !errors.Is(err, tufrepo.ErrNotFound) {
		return nil, err
	}
	keys := make([]*metadata.Key, 4)
	for i, s := range []tufrepo.Signer{d.root, d.targets, d.snapshot, d.timestamp} {
		k, err := tufrepo.PublicKey(s)
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	raw, err := tufrepo.NewRoot(tufrepo.RootSpec{
		Expires: d.cfg.Now().Add(d.cfg.Expiry.Root),
		Root:    keys[:1], Targets: keys[1:2], Snapshot: keys[2:3], Timestamp: keys[3:4],
		RootThreshold: 1, TargetsThreshold: 1,
	})
	if err != nil {
		return nil, err
	}
	if raw, err = tufrepo.Sign(raw, d.root); err != nil {
		return nil, err
	}
	return r, r.ImportRoot(ctx, raw)
}

// Root returns a device's Director 1.root.json, to provision the agent's
// trust anchor (the device fetches later roots itself).
func (d *Director) Root(ctx context.Context, device string) ([]byte, error) {
	r, err := d.repo(ctx, device)
	if err != nil {
		return nil, err
	}
	return r.File(ctx, "1.root.json")
}

// File returns a device's metadata file for the HTTP handler. Fetching
// timestamp.json first re-signs what is past half life, so a fleet of
// millions needs no sweep over every device's repository to stay fresh.
func (d *Director) File(ctx context.Context, device, file string) ([]byte, error) {
	r, err := d.repo(ctx, device)
	if err != nil {
		return nil, err
	}
	if file == "timestamp.json" {
		if err := d.Refresh(ctx, device); err != nil {
			return nil, err
		}
	}
	return r.File(ctx, file)
}

// Assign replaces the device's Director targets with exactly the given
// image targets (served by the image repository). Each must be for the
// device's hardware model and at or above both its last reported floor
// and the tenant's minimum security version; the targets carry
// minSecurityVersion = max(tenant minimum, floor). Assign with no targets
// clears the assignment.
func (d *Director) Assign(ctx context.Context, device string, targets ...string) error {
	d.assignMu.Lock()
	defer d.assignMu.Unlock()
	return d.assign(ctx, device, targets)
}

func (d *Director) assign(ctx context.Context, device string, targets []string) error {
	r, err := d.repo(ctx, device)
	if err != nil {
		return err
	}
	hw, err := d.cfg.Devices.HardwareID(ctx, device)
	if err != nil {
		return err
	}
	minSV, err := d.cfg.Devices.MinSecurityVersion(ctx, device)
	if err != nil {
		return err
	}
	floor, _, err := d.cfg.Floors.LastFloor(ctx, device)
	if err != nil {
		return err
	}
	minSV = max(minSV, floor)
	next := map[string]*metadata.TargetFiles{}
	for _, p := range targets {
		tf, c, err := d.cfg.Image.Target(ctx, p)
		if err != nil {
			return err
		}
		if c.Kind != KindImage {
			return fmt.Errorf("ota: %s is a %s, not an image", p, c.Kind)
		}
		if c.HardwareID != hw {
			return fmt.Errorf("%w: %s is for %q, device %s is %q", ErrWrongHardware, p, c.HardwareID, device, hw)
		}
		if c.SecurityVersion < minSV {
			return fmt.Errorf("%w: %s has %d, device must stay at or above %d", ErrBelowFloor, p, c.SecurityVersion, minSV)
		}
		c.MinSecurityVersion = &minSV
		next[p] = &metadata.TargetFiles{Length: tf.Length, Hashes: tf.Hashes, Custom: c.raw(), Path: p}
	}
	_, err = r.StageTargets(ctx, func(t *metadata.TargetsType) error {
		t.Targets = next
		return nil
	})
	return err
}

// newRepo is the device's repository handle; unlike repo it creates
// nothing.
func (d *Director) newRepo(device string) *tufrepo.Repo {
	return tufrepo.New(tufrepo.Config{
		Store: d.cfg.Store, Prefix: "director/" + device, Now: d.cfg.Now, Expiry: d.cfg.Expiry,
		Snapshot: d.snapshot, Timestamp: d.timestamp, Targets: []tufrepo.Signer{d.targets},
	})
}

// Restage signs the device's current assignment again, so that it carries
// the minimum security version in force now (after the tenant raised
// it). A device without a Director repository is left alone (false). An
// assigned image below the new minimum is not re-signed: the error wraps
// [ErrBelowFloor] and the device keeps its metadata until it is assigned
// a release at or above the minimum.
func (d *Director) Restage(ctx context.Context, device string) (bool, error) {
	if err := wire.ValidateDeviceID(device); err != nil {
		return false, err
	}
	d.assignMu.Lock()
	defer d.assignMu.Unlock()
	t, err := d.newRepo(device).Targets(ctx)
	if errors.Is(err, tufrepo.ErrNotFound) {
		return false, nil // never assigned anything
	} else if err != nil {
		return false, err
	}
	var targets []string
	for p := range t.Signed.Targets {
		targets = append(targets, p)
	}
	if len(targets) == 0 {
		return false, nil
	}
	sort.Strings(targets)
	return true, d.assign(ctx, device, targets)
}

// Assigned returns the target paths the device's Director names now.
func (d *Director) Assigned(ctx context.Context, device string) ([]string, error) {
	r, err := d.repo(ctx, device)
	if err != nil {
		return nil, err
	}
	t, err := r.Targets(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for p := range t.Signed.Targets {
		out = append(out, p)
	}
	return out, nil
}

// ReportFloor records the floor a device reported (wire.OTAStatus.Floor).
// A floor never goes down: a lower report is kept out of the store and
// emitted as [EventFloorDecreased], and later assignments keep using the
// highest floor seen.
func (d *Director) ReportFloor(ctx context.Context, device string, floor uint64) error {
	last, ok, err := d.cfg.Floors.LastFloor(ctx, device)
	if err != nil {
		return err
	}
	if ok && floor < last {
		d.cfg.Events.Emit(ctx, Event{Type: EventFloorDecreased, Device: device, Previous: last, Reported: floor, Time: d.cfg.Now()})
		return nil
	}
	if ok && floor == last {
		return nil
	}
	return d.cfg.Floors.SetFloor(ctx, device, floor)
}

// Refresh keeps a device's Director metadata valid: re-signs targets at
// half life (Director targets are online) and snapshot/timestamp.
func (d *Director) Refresh(ctx context.Context, device string) error {
	r, err := d.repo(ctx, device)
	if err != nil {
		return err
	}
	t, err := r.Targets(ctx)
	if err != nil {
		return err
	}
	if t.Signed.Expires.Sub(d.cfg.Now()) < d.cfg.Expiry.Targets/2 {
		_, err := r.StageTargets(ctx, func(*metadata.TargetsType) error { return nil })
		return err
	}
	return r.Refresh(ctx)
}

// MemFloors is an in-memory [Floors] for tests and the demo.
type MemFloors struct {
	mu sync.Mutex
	m  map[string]uint64
}

// LastFloor implements [Floors].
func (f *MemFloors) LastFloor(_ context.Context, device string) (uint64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.m[device]
	return v, ok, nil
}

// SetFloor implements [Floors].
func (f *MemFloors) SetFloor(_ context.Context, device string, floor uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]uint64{}
	}
	if old, ok := f.m[device]; !ok || floor > old {
		f.m[device] = floor
	}
	return nil
}

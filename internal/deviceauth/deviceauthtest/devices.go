package deviceauthtest

import (
	"context"
	"crypto"
	"fmt"
	"sync"

	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/wire"
)

// Devices is an in-memory [deviceauth.DeviceKeys] and
// [deviceauth.DeviceStatus]: each device has one current key and
// certificate serial; serials and devices can be revoked and disabled.
type Devices struct {
	mu       sync.Mutex
	current  map[string]device
	revoked  map[string]bool // serial
	disabled map[string]bool // client ID
}

type device struct {
	key    crypto.PublicKey
	serial string
}

var (
	_ deviceauth.DeviceKeys   = (*Devices)(nil)
	_ deviceauth.DeviceStatus = (*Devices)(nil)
)

// NewDevices returns an empty registry.
func NewDevices() *Devices {
	return &Devices{current: map[string]device{}, revoked: map[string]bool{}, disabled: map[string]bool{}}
}

// Set makes key, under certificate serial, the device's current key.
func (d *Devices) Set(tenant, dev string, key crypto.PublicKey, serial string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.current[wire.DeviceClientID(tenant, dev)] = device{key, serial}
}

// Revoke marks the certificate serial revoked.
func (d *Devices) Revoke(serial string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.revoked[serial] = true
}

// Disable marks the device disabled.
func (d *Devices) Disable(tenant, dev string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.disabled[wire.DeviceClientID(tenant, dev)] = true
}

// CurrentKey implements [deviceauth.DeviceKeys].
func (d *Devices) CurrentKey(ctx context.Context, tenant, dev string) (crypto.PublicKey, string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.current[wire.DeviceClientID(tenant, dev)]
	if !ok || d.revoked[c.serial] {
		return nil, "", deviceauth.ErrUnknownDevice
	}
	return c.key, c.serial, nil
}

// Usable implements [deviceauth.DeviceStatus].
func (d *Devices) Usable(ctx context.Context, tenant, dev, serial string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.revoked[serial] {
		return fmt.Errorf("%w: certificate %s is revoked", deviceauth.ErrRefused, serial)
	}
	if d.disabled[wire.DeviceClientID(tenant, dev)] {
		return fmt.Errorf("%w: device is disabled", deviceauth.ErrRefused)
	}
	return nil
}

// Recorder is a [deviceauth.Events] and [deviceauth.Auditor] that keeps
// what it receives.
type Recorder struct {
	mu     sync.Mutex
	events []deviceauth.Event
	audits []deviceauth.AuditEntry
}

var (
	_ deviceauth.Events  = (*Recorder)(nil)
	_ deviceauth.Auditor = (*Recorder)(nil)
)

// SecurityEvent implements [deviceauth.Events].
func (r *Recorder) SecurityEvent(ctx context.Context, ev deviceauth.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

// Audit implements [deviceauth.Auditor].
func (r *Recorder) Audit(ctx context.Context, e deviceauth.AuditEntry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.audits = append(r.audits, e)
	return nil
}

// Events returns a copy of the events received so far.
func (r *Recorder) Events() []deviceauth.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]deviceauth.Event(nil), r.events...)
}

// Audits returns a copy of the audit entries received so far.
func (r *Recorder) Audits() []deviceauth.AuditEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]deviceauth.AuditEntry(nil), r.audits...)
}

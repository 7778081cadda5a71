// Package fleet is the device registry: which devices exist and in what
// state. The store holds the truth; the Registry keeps every device's
// state in memory too, because the gateway checks it on every connect and
// must not pay a database round trip for it. State changes notify
// subscribers, so that disabling a device cuts its live sessions at once.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// ErrNoDevice means the device is not registered.
var ErrNoDevice = errors.New("no such device")

// Registry caches device states and changes them.
type Registry struct {
	store store.Store
	now   func() time.Time

	mu     sync.RWMutex
	states map[string]entry // tenant + "/" + device

	subMu sync.RWMutex
	subs  []func(tenant, device, state string)
}

type entry struct{ state, group string }

// New returns an empty registry; call Load before use.
func New(s store.Store, now func() time.Time) *Registry {
	return &Registry{store: s, now: now, states: map[string]entry{}}
}

func key(tenant, device string) string { return tenant + "/" + device }

// Load reads every device's state from the store.
func (r *Registry) Load(ctx context.Context) error {
	states := map[string]entry{}
	err := r.store.ForEachDevice(ctx, func(d *store.Device) error {
		states[key(d.Tenant, d.ID)] = entry{d.State, d.Group}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load devices: %w", err)
	}
	r.mu.Lock()
	r.states = states
	r.mu.Unlock()
	return nil
}

// State returns a device's state from memory.
func (r *Registry) State(tenant, device string) (string, bool) {
	r.mu.RLock()
	e, ok := r.states[key(tenant, device)]
	r.mu.RUnlock()
	return e.state, ok
}

// Group returns a device's enrollment group ("" if none or unknown).
func (r *Registry) Group(tenant, device string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.states[key(tenant, device)].group
}

// Len is the number of registered devices.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.states)
}

// Subscribe calls fn after every state change (including registration).
func (r *Registry) Subscribe(fn func(tenant, device, state string)) {
	r.subMu.Lock()
	r.subs = append(r.subs, fn)
	r.subMu.Unlock()
}

func (r *Registry) note(tenant, device, state string) {
	r.mu.Lock()
	if state == "" {
		delete(r.states, key(tenant, device))
	} else {
		e := r.states[key(tenant, device)]
		e.state = state
		r.states[key(tenant, device)] = e
	}
	r.mu.Unlock()
	r.subMu.RLock()
	defer r.subMu.RUnlock()
	for _, fn := range r.subs {
		fn(tenant, device, state)
	}
}

// Registration is the record made when a device first enrolls.
type Registration struct {
	Tenant, Device, Group string
	Tags                  map[string]string
}

// RegisterTx creates the device inside tx if it does not exist yet
// (just-in-time registration) and returns a function the caller runs after
// the transaction commits to update the cache. An existing device is left
// as it is.
func (r *Registry) RegisterTx(ctx context.Context, tx store.Tx, reg Registration) (commit func(), err error) {
	if err := wire.ValidateDeviceID(reg.Device); err != nil {
		return nil, err
	}
	_, err = tx.GetDevice(ctx, reg.Tenant, reg.Device)
	if err == nil {
		return func() {}, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	d := &store.Device{Tenant: reg.Tenant, ID: reg.Device, State: store.DeviceActive, Group: reg.Group, Tags: reg.Tags, CreatedAt: r.now().UTC()}
	if err := tx.CreateDevice(ctx, d); err != nil {
		return nil, err
	}
	if _, err := audit.Append(ctx, tx, r.now(), audit.Entry{Actor: audit.ActorFrom(ctx), Action: "device.register",
		Target: "device:" + reg.Device, Tenant: reg.Tenant, Detail: "just-in-time registration"}); err != nil {
		return nil, err
	}
	return func() {
		r.mu.Lock()
		r.states[key(reg.Tenant, reg.Device)] = entry{group: reg.Group}
		r.mu.Unlock()
		r.note(reg.Tenant, reg.Device, store.DeviceActive)
	}, nil
}

// transitions lists the allowed state changes. Decommissioned is final.
var transitions = map[string][]string{
	store.DeviceActive:      {store.DeviceDisabled, store.DeviceQuarantined, store.DeviceDecommissioned},
	store.DeviceDisabled:    {store.DeviceActive, store.DeviceDecommissioned},
	store.DeviceQuarantined: {store.DeviceActive, store.DeviceDisabled, store.DeviceDecommissioned},
}

// ErrTransition means the state change is not allowed.
var ErrTransition = errors.New("state change not allowed")

// SetState changes a device's state on behalf of actor, audited, and
// notifies subscribers.
func (r *Registry) SetState(ctx context.Context, actor, tenant, device, state, why string) error {
	err := r.store.InTx(ctx, func(tx store.Tx) error {
		d, err := tx.GetDevice(ctx, tenant, device)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("device %s: %w", device, ErrNoDevice)
		}
		if err != nil {
			return err
		}
		if d.State == state {
			return nil
		}
		ok := false
		for _, s := range transitions[d.State] {
			ok = ok || s == state
		}
		if !ok {
			return fmt.Errorf("%w: %s -> %s", ErrTransition, d.State, state)
		}
		if err := tx.SetDeviceState(ctx, tenant, device, state, r.now().UTC()); err != nil {
			return err
		}
		_, err = audit.Append(ctx, tx, r.now(), audit.Entry{Actor: actor, Action: "device." + state, Target: "device:" + device,
			Tenant: tenant, Detail: why})
		return err
	})
	if err != nil {
		return err
	}
	r.note(tenant, device, state)
	return nil
}

// DropTenant forgets a deleted tenant's devices.
func (r *Registry) DropTenant(tenant string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.states {
		if len(k) > len(tenant) && k[:len(tenant)+1] == tenant+"/" {
			delete(r.states, k)
		}
	}
}

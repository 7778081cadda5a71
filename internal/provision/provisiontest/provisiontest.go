// Package provisiontest holds fakes for testing code that uses package
// provision: an in-memory Store that keeps the Store contract, a Sealer,
// recorders for events and audit entries, and a settable clock.
package provisiontest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/provision"
)

// Store is an in-memory provision.Store. Records are deep-copied in and
// out, so callers cannot change stored state by aliasing.
type Store struct {
	mu      sync.Mutex
	groups  map[string]*provision.Group // tenant "\x00" name
	devices map[string]*provision.Device
	tokens  map[string]*provision.GroupToken
	nonces  map[string]time.Time
}

var _ provision.Store = (*Store)(nil)

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{groups: map[string]*provision.Group{}, devices: map[string]*provision.Device{},
		tokens: map[string]*provision.GroupToken{}, nonces: map[string]time.Time{}}
}

func key(a, b string) string { return a + "\x00" + b }

// clone deep-copies through JSON, which every record type round-trips.
func clone[T any](v *T) *T {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return &out
}

// PutGroup implements provision.Store.
func (s *Store) PutGroup(_ context.Context, g *provision.Group) error {
	if g.ID == "" {
		return errors.New("group has no ID")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.groups[key(g.Tenant, g.Name)]; old != nil && old.ID != g.ID {
		return fmt.Errorf("group %q exists with another ID: %w", g.Name, provision.ErrConflict)
	}
	s.groups[key(g.Tenant, g.Name)] = clone(g)
	return nil
}

// GetGroup implements provision.Store.
func (s *Store) GetGroup(_ context.Context, tenant, name string) (*provision.Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[key(tenant, name)]
	if g == nil {
		return nil, provision.ErrNotFound
	}
	return clone(g), nil
}

// ListGroups implements provision.Store.
func (s *Store) ListGroups(_ context.Context, tenant string) ([]*provision.Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*provision.Group
	for _, g := range s.groups {
		if tenant == "" || g.Tenant == tenant {
			out = append(out, clone(g))
		}
	}
	sort.Slice(out, func(i, j int) bool { return key(out[i].Tenant, out[i].Name) < key(out[j].Tenant, out[j].Name) })
	return out, nil
}

// DeleteGroup implements provision.Store.
func (s *Store) DeleteGroup(_ context.Context, tenant, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups[key(tenant, name)] == nil {
		return provision.ErrNotFound
	}
	delete(s.groups, key(tenant, name))
	for id, t := range s.tokens {
		if t.Tenant == tenant && t.Group == name {
			delete(s.tokens, id)
		}
	}
	return nil
}

// GetDevice implements provision.Store.
func (s *Store) GetDevice(_ context.Context, tenant, id string) (*provision.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[key(tenant, id)]
	if d == nil {
		return nil, provision.ErrNotFound
	}
	return clone(d), nil
}

// CreateDevice implements provision.Store.
func (s *Store) CreateDevice(_ context.Context, d *provision.Device) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.devices[key(d.Tenant, d.ID)] != nil {
		return provision.ErrConflict
	}
	if d.ClaimID != "" {
		for _, o := range s.devices {
			if o.ClaimID == d.ClaimID {
				return provision.ErrConflict
			}
		}
	}
	s.devices[key(d.Tenant, d.ID)] = clone(d)
	return nil
}

// ReplaceDevice implements provision.Store.
func (s *Store) ReplaceDevice(_ context.Context, d *provision.Device, prevState string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.devices[key(d.Tenant, d.ID)]
	if old == nil {
		return provision.ErrNotFound
	}
	if old.State != prevState {
		return provision.ErrConflict
	}
	s.devices[key(d.Tenant, d.ID)] = clone(d)
	return nil
}

// DeviceByClaimID implements provision.Store.
func (s *Store) DeviceByClaimID(_ context.Context, claimID string) (*provision.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.devices {
		if claimID != "" && d.ClaimID == claimID {
			return clone(d), nil
		}
	}
	return nil, provision.ErrNotFound
}

// PutGroupToken implements provision.Store.
func (s *Store) PutGroupToken(_ context.Context, t *provision.GroupToken) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokens[t.ID] != nil {
		return provision.ErrConflict
	}
	s.tokens[t.ID] = clone(t)
	return nil
}

// GetGroupToken implements provision.Store.
func (s *Store) GetGroupToken(_ context.Context, id string) (*provision.GroupToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[id]
	if t == nil {
		return nil, provision.ErrNotFound
	}
	return clone(t), nil
}

// UseGroupToken implements provision.Store.
func (s *Store) UseGroupToken(_ context.Context, id string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[id]
	if t == nil {
		return provision.ErrNotFound
	}
	if !t.UsedAt.IsZero() {
		return provision.ErrConflict
	}
	t.UsedAt = at
	return nil
}

// ConsumeNonce implements provision.Store.
func (s *Store) ConsumeNonce(_ context.Context, k string, expires, now time.Time) error {
	if len(k) > 200 {
		return errors.New("nonce key too long")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if exp, ok := s.nonces[k]; ok && exp.After(now) {
		return provision.ErrConflict
	}
	if len(s.nonces)%1024 == 1023 { // sweep now and then, not on every call
		for n, exp := range s.nonces {
			if !exp.After(now) {
				delete(s.nonces, n)
			}
		}
	}
	s.nonces[k] = expires
	return nil
}

// Nonces returns how many nonce records are kept (for bound tests).
func (s *Store) Nonces() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.nonces)
}

// Sealer is an AES-256-GCM provision.Sealer with a random key, standing in
// for a tenant's data-key sealer.
type Sealer struct{ aead cipher.AEAD }

// NewSealer returns a Sealer with a fresh key.
func NewSealer() *Sealer {
	k := make([]byte, 32)
	rand.Read(k)
	b, _ := aes.NewCipher(k)
	a, _ := cipher.NewGCM(b)
	return &Sealer{aead: a}
}

// Seal implements provision.Sealer.
func (s *Sealer) Seal(pt, aad []byte) ([]byte, error) {
	n := make([]byte, s.aead.NonceSize())
	rand.Read(n)
	return s.aead.Seal(n, n, pt, aad), nil
}

// Open implements provision.Sealer.
func (s *Sealer) Open(ct, aad []byte) ([]byte, error) {
	if len(ct) < s.aead.NonceSize() {
		return nil, errors.New("sealed data too short")
	}
	return s.aead.Open(nil, ct[:s.aead.NonceSize()], ct[s.aead.NonceSize():], aad)
}

// Sealers returns one Sealer per tenant, made on first use.
func Sealers() provision.Sealers {
	var mu sync.Mutex
	m := map[string]*Sealer{}
	return func(_ context.Context, tenant string) (provision.Sealer, error) {
		mu.Lock()
		defer mu.Unlock()
		if m[tenant] == nil {
			m[tenant] = NewSealer()
		}
		return m[tenant], nil
	}
}

// Events records security events.
type Events struct {
	mu     sync.Mutex
	Events []provision.SecurityEvent
}

// SecurityEvent implements provision.Events.
func (e *Events) SecurityEvent(_ context.Context, ev provision.SecurityEvent) {
	e.mu.Lock()
	e.Events = append(e.Events, ev)
	e.mu.Unlock()
}

// All returns a copy of the recorded events.
func (e *Events) All() []provision.SecurityEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]provision.SecurityEvent(nil), e.Events...)
}

// Auditor records audit entries.
type Auditor struct {
	mu      sync.Mutex
	Entries []audit.Entry
}

// Audit implements provision.Auditor.
func (a *Auditor) Audit(_ context.Context, e audit.Entry) error {
	a.mu.Lock()
	a.Entries = append(a.Entries, e)
	a.mu.Unlock()
	return nil
}

// All returns a copy of the recorded entries.
func (a *Auditor) All() []audit.Entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]audit.Entry(nil), a.Entries...)
}

// Clock is a settable clock.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Package tenant manages tenants, their data keys, and the operator and
// enrollment tokens that authenticate API callers.
//
// Each tenant has a random AES-256 data key, stored only wrapped by the
// server's key-encryption key. Other parts seal secrets at rest with
// [Service.Sealer]. Deleting a tenant deletes its wrapped key in the same
// transaction that deletes the tenant, and drops it from memory: whatever
// ciphertext of that tenant is left on disk or in a backup made after the
// deletion can no longer be opened by any path.
package tenant

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// ErrNoTenant means the tenant does not exist (or was deleted).
var ErrNoTenant = errors.New("no such tenant")

// Hook runs inside the transaction that creates or deletes a tenant, so
// that other parts (its certificate authorities, say) are created with it
// atomically. A hook error aborts the whole operation.
type Hook func(ctx context.Context, tx store.Tx, t *store.Tenant, s *Sealer) error

// Service creates and deletes tenants and hands out their sealers.
type Service struct {
	store store.Store
	kek   KEK
	now   func() time.Time

	mu    sync.Mutex
	cache map[string]*Sealer

	onCreate    []Hook
	afterCreate []AfterHook
	afterDelete []func(ctx context.Context, id string)
}

// AfterHook runs after the transaction that created a tenant committed,
// for work that cannot share that transaction (generating CA keys in an
// HSM, say). If it fails, the tenant is deleted again and Create fails.
type AfterHook func(ctx context.Context, t *store.Tenant, s *Sealer) error

// AfterCreate registers a hook run after a tenant is created.
func (s *Service) AfterCreate(h AfterHook) { s.afterCreate = append(s.afterCreate, h) }

// AfterDelete registers a hook run after a tenant is deleted.
func (s *Service) AfterDelete(h func(ctx context.Context, id string)) {
	s.afterDelete = append(s.afterDelete, h)
}

// NewService returns a Service. now is the clock (time.Now in production).
func NewService(s store.Store, kek KEK, now func() time.Time) *Service {
	return &Service{store: s, kek: kek, now: now, cache: map[string]*Sealer{}}
}

// OnCreate registers a hook run when a tenant is created.
func (s *Service) OnCreate(h Hook) { s.onCreate = append(s.onCreate, h) }

func keyAAD(id string) []byte { return []byte("ward tenant data key\x00" + id) }

// Create makes a tenant with a fresh data key, audited as actor.
func (s *Service) Create(ctx context.Context, actor, id, name string) (*store.Tenant, error) {
	if err := wire.ValidateTenantID(id); err != nil {
		return nil, err
	}
	if name == "" {
		name = id
	}
	if len(name) > 200 {
		return nil, errors.New("tenant name must be at most 200 characters")
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	wrapped, err := s.kek.Wrap(key, keyAAD(id))
	if err != nil {
		return nil, fmt.Errorf("wrap data key: %w", err)
	}
	sealer, err := newSealer(id, key)
	if err != nil {
		return nil, err
	}
	t := &store.Tenant{ID: id, Name: name, CreatedAt: s.now().UTC(), WrappedKey: wrapped}
	err = s.store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.CreateTenant(ctx, t); err != nil {
			return err
		}
		for _, h := range s.onCreate {
			if err := h(ctx, tx, t, sealer); err != nil {
				return err
			}
		}
		_, err := audit.Append(ctx, tx, s.now(), audit.Entry{Actor: actor, Action: "tenant.create", Target: id, Tenant: id})
		return err
	})
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("tenant %q already exists: %w", id, store.ErrConflict)
		}
		return nil, err
	}
	for _, h := range s.afterCreate {
		if err := h(ctx, t, sealer); err != nil {
			if derr := s.Delete(ctx, "system", id); derr != nil {
				return nil, fmt.Errorf("set up tenant %q: %w (and removing it again failed: %v)", id, err, derr)
			}
			return nil, fmt.Errorf("set up tenant %q: %w", id, err)
		}
	}
	return t, nil
}

// Delete removes a tenant and destroys its data key.
func (s *Service) Delete(ctx context.Context, actor, id string) error {
	err := s.store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.DeleteTenant(ctx, id); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, s.now(), audit.Entry{Actor: actor, Action: "tenant.delete", Target: id, Tenant: id,
			Detail: "data key destroyed"})
		return err
	})
	s.mu.Lock()
	if c := s.cache[id]; c != nil {
		c.destroy()
	}
	delete(s.cache, id)
	s.mu.Unlock()
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("tenant %q: %w", id, ErrNoTenant)
	}
	if err == nil {
		for _, h := range s.afterDelete {
			h(ctx, id)
		}
		if sc, ok := s.store.(store.Scrubber); ok {
			if serr := sc.ScrubDeleted(ctx); serr != nil {
				return fmt.Errorf("tenant %q deleted, but scrubbing the database files failed: %w", id, serr)
			}
		}
	}
	return err
}

// Sealer returns the sealer of a tenant's data key.
func (s *Service) Sealer(ctx context.Context, id string) (*Sealer, error) {
	s.mu.Lock()
	c := s.cache[id]
	s.mu.Unlock()
	if c != nil {
		return c, nil
	}
	t, err := s.store.GetTenant(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("tenant %q: %w", id, ErrNoTenant)
	}
	if err != nil {
		return nil, err
	}
	key, err := s.kek.Unwrap(t.WrappedKey, keyAAD(id))
	if err != nil {
		return nil, fmt.Errorf("tenant %q data key: %w", id, err)
	}
	c, err = newSealer(id, key)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.cache[id] = c
	s.mu.Unlock()
	return c, nil
}

// Sealer encrypts and decrypts a tenant's secrets at rest with its data key
// (AES-256-GCM). Ciphertext is bound to the tenant and to the caller's aad,
// so it cannot be moved between tenants or records.
type Sealer struct {
	tenant string
	mu     sync.RWMutex
	a      *aead
}

func newSealer(tenant string, key []byte) (*Sealer, error) {
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Sealer{tenant: tenant, a: a}, nil
}

func (s *Sealer) aad(aad []byte) []byte {
	return append([]byte("ward tenant seal\x00"+s.tenant+"\x00"), aad...)
}

// Seal encrypts plaintext, binding it to aad.
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.a == nil {
		return nil, ErrNoTenant
	}
	return s.a.seal(plaintext, s.aad(aad))
}

// Open decrypts what Seal produced with the same aad; errors wrap ErrUnwrap
// or ErrNoTenant (the tenant was deleted).
func (s *Sealer) Open(ciphertext, aad []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.a == nil {
		return nil, ErrNoTenant
	}
	return s.a.open(ciphertext, s.aad(aad))
}

func (s *Sealer) destroy() {
	s.mu.Lock()
	s.a = nil
	s.mu.Unlock()
}

// Package attesttest holds an in-memory attest.Store for tests and for a
// single-node server before the SQL store exists.
package attesttest

import (
	"context"
	"crypto"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/attest"
)

type devKey struct{ tenant, device string }
type idKey struct{ tenant, device, id string }
type refKey struct{ tenant, hw, release string }
type polKey struct{ tenant, group string }

// Store is an in-memory attest.Store. It also implements attest.RefKeys.
type Store struct {
	mu          sync.Mutex
	challenges  map[idKey]attest.Challenge
	activations map[idKey]attest.Activation
	aks         map[devKey]attest.AKRecord
	refs        map[refKey]attest.RefValues
	results     map[devKey]attest.Result
	counters    map[devKey]attest.Counters
	policies    map[polKey]attest.Policy
	refKeys     map[string]crypto.PublicKey
}

var (
	_ attest.Store   = (*Store)(nil)
	_ attest.RefKeys = (*Store)(nil)
)

// New returns an empty Store.
func New() *Store {
	return &Store{
		challenges: map[idKey]attest.Challenge{}, activations: map[idKey]attest.Activation{},
		aks: map[devKey]attest.AKRecord{}, refs: map[refKey]attest.RefValues{},
		results: map[devKey]attest.Result{}, counters: map[devKey]attest.Counters{},
		policies: map[polKey]attest.Policy{}, refKeys: map[string]crypto.PublicKey{},
	}
}

// SetPolicy sets a group's policy (group "" for the tenant default).
func (s *Store) SetPolicy(tenant, group string, p attest.Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.policies[polKey{tenant, group}] = p
}

// SetRefValueKey sets a tenant's reference-value signing key.
func (s *Store) SetRefValueKey(tenant string, k crypto.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refKeys[tenant] = k
}

// RefValueKey implements attest.RefKeys.
func (s *Store) RefValueKey(_ context.Context, tenant string) (crypto.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.refKeys[tenant]
	if !ok {
		return nil, attest.ErrNotFound
	}
	return k, nil
}

// PutChallenge implements attest.Store.
func (s *Store) PutChallenge(_ context.Context, c attest.Challenge, now time.Time, maxPending int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, old := range s.challenges {
		if k.tenant != c.Tenant || k.device != c.Device {
			continue
		}
		if now.After(old.Expires) {
			delete(s.challenges, k)
			continue
		}
		n++
	}
	if n >= maxPending {
		return attest.ErrTooManyChallenges
	}
	s.challenges[idKey{c.Tenant, c.Device, c.ID}] = c
	return nil
}

// TakeChallenge implements attest.Store.
func (s *Store) TakeChallenge(_ context.Context, tenant, device, id string) (attest.Challenge, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := idKey{tenant, device, id}
	c, ok := s.challenges[k]
	if !ok {
		return attest.Challenge{}, attest.ErrNotFound
	}
	delete(s.challenges, k)
	return c, nil
}

// PutActivation implements attest.Store.
func (s *Store) PutActivation(_ context.Context, a attest.Activation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.activations[idKey{a.Tenant, a.Device, a.ID}] = a
	return nil
}

// TakeActivation implements attest.Store.
func (s *Store) TakeActivation(_ context.Context, tenant, device, id string) (attest.Activation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := idKey{tenant, device, id}
	a, ok := s.activations[k]
	if !ok {
		return attest.Activation{}, attest.ErrNotFound
	}
	delete(s.activations, k)
	return a, nil
}

// PutAK implements attest.Store.
func (s *Store) PutAK(_ context.Context, ak attest.AKRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.aks[devKey{ak.Tenant, ak.Device}] = ak
	return nil
}

// AK implements attest.Store.
func (s *Store) AK(_ context.Context, tenant, device string) (attest.AKRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ak, ok := s.aks[devKey{tenant, device}]
	if !ok {
		return attest.AKRecord{}, attest.ErrNotFound
	}
	return ak, nil
}

// PutRefValues implements attest.Store.
func (s *Store) PutRefValues(_ context.Context, r attest.RefValues) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs[refKey{r.Tenant, r.HWModel, r.Release}] = r
	return nil
}

// RefValues implements attest.Store.
func (s *Store) RefValues(_ context.Context, tenant, hw, release string) (attest.RefValues, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.refs[refKey{tenant, hw, release}]
	if !ok {
		return attest.RefValues{}, attest.ErrNotFound
	}
	return r, nil
}

// PutResult implements attest.Store.
func (s *Store) PutResult(_ context.Context, r attest.Result) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results[devKey{r.Tenant, r.Device}] = r
	return nil
}

// LastResult implements attest.Store.
func (s *Store) LastResult(_ context.Context, tenant, device string) (attest.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.results[devKey{tenant, device}]
	if !ok {
		return attest.Result{}, attest.ErrNotFound
	}
	return r, nil
}

// AdvanceCounters implements attest.Store.
func (s *Store) AdvanceCounters(_ context.Context, tenant, device string, c attest.Counters) (attest.Counters, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := devKey{tenant, device}
	prev, found := s.counters[k]
	if !found || attest.CountersAfter(c, prev) {
		s.counters[k] = c
	}
	return prev, found, nil
}

// Policy implements attest.Store.
func (s *Store) Policy(_ context.Context, tenant, group string) (attest.Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.policies[polKey{tenant, group}]; ok {
		return p, nil
	}
	if p, ok := s.policies[polKey{tenant, ""}]; ok {
		return p, nil
	}
	return attest.Policy{}, attest.ErrNotFound
}

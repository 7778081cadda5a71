// Package deviceauthtest holds the in-memory reference implementations of
// deviceauth's interfaces and the conformance suite for [deviceauth.Store]
// implementations.
package deviceauthtest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/deviceauth"
)

// Store is an in-memory [deviceauth.Store]. It is the reference for the
// contract, not for production: it forgets everything on restart and is
// not shared between nodes.
type Store struct {
	mu       sync.Mutex
	tokens   map[deviceauth.Hash]*entry
	revoked  map[string]bool
	asserted map[deviceauth.Hash]time.Time
}

type entry struct {
	tok  deviceauth.Token
	used bool
}

var _ deviceauth.Store = (*Store)(nil)

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{
		tokens:   map[deviceauth.Hash]*entry{},
		revoked:  map[string]bool{},
		asserted: map[deviceauth.Hash]time.Time{},
	}
}

// PutTokens implements [deviceauth.Store].
func (s *Store) PutTokens(ctx context.Context, toks []deviceauth.Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[deviceauth.Hash]bool{}
	for _, t := range toks {
		if _, dup := s.tokens[t.Hash]; dup || seen[t.Hash] {
			return fmt.Errorf("deviceauthtest: duplicate token hash")
		}
		if s.revoked[t.Family] {
			return fmt.Errorf("deviceauthtest: token family %s is revoked", t.Family)
		}
		seen[t.Hash] = true
	}
	for _, t := range toks {
		s.tokens[t.Hash] = &entry{tok: t}
	}
	return nil
}

// AccessToken implements [deviceauth.Store].
func (s *Store) AccessToken(ctx context.Context, h deviceauth.Hash) (*deviceauth.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.tokens[h]
	if !ok || e.tok.Kind != deviceauth.KindAccess || s.revoked[e.tok.Family] {
		return nil, deviceauth.ErrNotFound
	}
	t := e.tok
	return &t, nil
}

// UseRefreshToken implements [deviceauth.Store].
func (s *Store) UseRefreshToken(ctx context.Context, h deviceauth.Hash, now time.Time) (*deviceauth.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.tokens[h]
	if !ok || e.tok.Kind != deviceauth.KindRefresh {
		return nil, deviceauth.ErrNotFound
	}
	t := e.tok
	if e.used {
		return &t, deviceauth.ErrReused
	}
	if s.revoked[t.Family] {
		return nil, deviceauth.ErrNotFound
	}
	e.used = true
	return &t, nil
}

// RevokeFamily implements [deviceauth.Store].
func (s *Store) RevokeFamily(ctx context.Context, family string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked[family] = true
	return nil
}

// UseAssertionID implements [deviceauth.Store].
func (s *Store) UseAssertionID(ctx context.Context, k deviceauth.Hash, expiresAt, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.asserted[k]; ok && now.Before(e) {
		return deviceauth.ErrReused
	}
	s.asserted[k] = expiresAt
	return nil
}

// DeleteExpired forgets tokens and assertion IDs whose expiry is before
// now, as a SQL store's garbage collection would. It returns how many
// records went.
func (s *Store) DeleteExpired(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for h, e := range s.tokens {
		if !now.Before(e.tok.ExpiresAt) {
			delete(s.tokens, h)
			n++
		}
	}
	for k, exp := range s.asserted {
		if !now.Before(exp) {
			delete(s.asserted, k)
			n++
		}
	}
	return n
}

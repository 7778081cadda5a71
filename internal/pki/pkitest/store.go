// Package pkitest provides in-memory fakes for testing code that uses
// package pki: a [Store] and a [Sealer].
package pkitest

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/wardiot/ward/internal/pki"
)

// MemStore is an in-memory [pki.Store]. It follows the documented
// contract, so it doubles as a reference for the SQL implementations.
type MemStore struct {
	mu     sync.RWMutex
	cas    map[string]pki.CA
	certs  map[string]pki.CertRecord
	crlNum map[string]int64
	// revoked is an append-only index of revocations per CA, so that
	// ForEachRevoked can stream millions of entries without copying them.
	revoked map[string][]pki.Revoked
}

var _ pki.Store = (*MemStore)(nil)

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{cas: map[string]pki.CA{}, certs: map[string]pki.CertRecord{}, crlNum: map[string]int64{}, revoked: map[string][]pki.Revoked{}}
}

func cloneCA(c pki.CA) pki.CA {
	c.CertDER = bytes.Clone(c.CertDER)
	c.KeyRef = bytes.Clone(c.KeyRef)
	return c
}

func cloneCert(r pki.CertRecord) pki.CertRecord {
	r.CertDER = bytes.Clone(r.CertDER)
	r.SPKISHA256 = bytes.Clone(r.SPKISHA256)
	return r
}

// PutCA implements [pki.Store].
func (s *MemStore) PutCA(ctx context.Context, ca pki.CA) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.cas[ca.ID]; ok {
		return pki.ErrConflict
	}
	s.cas[ca.ID] = cloneCA(ca)
	return nil
}

// UpdateCA implements [pki.Store].
func (s *MemStore) UpdateCA(ctx context.Context, ca pki.CA) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.cas[ca.ID]
	if !ok {
		return pki.ErrNotFound
	}
	old.KeyRef = bytes.Clone(ca.KeyRef)
	old.Status = ca.Status
	s.cas[ca.ID] = old
	return nil
}

// ListCAs implements [pki.Store].
func (s *MemStore) ListCAs(ctx context.Context, tenant string) ([]pki.CA, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []pki.CA
	for _, c := range s.cas {
		if tenant == "" || c.Tenant == tenant {
			out = append(out, cloneCA(c))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// RecordCert implements [pki.Store].
func (s *MemStore) RecordCert(ctx context.Context, rec pki.CertRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.certs[rec.Serial]; ok {
		return fmt.Errorf("serial %s: %w", rec.Serial, pki.ErrConflict)
	}
	s.certs[rec.Serial] = cloneCert(rec)
	return nil
}

// GetCert implements [pki.Store].
func (s *MemStore) GetCert(ctx context.Context, serial string) (pki.CertRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.certs[serial]
	if !ok {
		return pki.CertRecord{}, pki.ErrNotFound
	}
	return cloneCert(r), nil
}

// ListCerts implements [pki.Store].
func (s *MemStore) ListCerts(ctx context.Context, f pki.CertFilter) ([]pki.CertRecord, error) {
	s.mu.RLock()
	var out []pki.CertRecord
	for _, r := range s.certs {
		if (f.Tenant == "" || r.Tenant == f.Tenant) && (f.Device == "" || r.Device == f.Device) &&
			(f.CAID == "" || r.CAID == f.CAID) && (f.Status == "" || r.Status == f.Status) {
			out = append(out, cloneCert(r))
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].NotBefore.Equal(out[j].NotBefore) {
			return out[i].NotBefore.Before(out[j].NotBefore)
		}
		return out[i].Serial < out[j].Serial
	})
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out, nil
}

// RevokeCert implements [pki.Store].
func (s *MemStore) RevokeCert(ctx context.Context, serial string, reason pki.Reason, at time.Time) (pki.CertRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.certs[serial]
	if !ok {
		return pki.CertRecord{}, pki.ErrNotFound
	}
	if r.Status == pki.CertRevoked {
		return cloneCert(r), pki.ErrAlreadyRevoked
	}
	r.Status = pki.CertRevoked
	r.RevokedAt = at.UTC()
	r.Reason = reason
	s.certs[serial] = r
	s.revoked[r.CAID] = append(s.revoked[r.CAID], revokedOf(r))
	return cloneCert(r), nil
}

// ForEachRevoked implements [pki.Store]. It iterates over a snapshot of
// the append-only index taken under the lock, so fn may call back into the
// store.
func (s *MemStore) ForEachRevoked(ctx context.Context, caID string, fn func(pki.Revoked) error) error {
	s.mu.RLock()
	var lists [][]pki.Revoked
	for id, l := range s.revoked {
		if caID == "" || id == caID {
			lists = append(lists, l)
		}
	}
	s.mu.RUnlock()
	for _, l := range lists {
		for _, r := range l {
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}

func revokedOf(r pki.CertRecord) pki.Revoked {
	return pki.Revoked{Serial: r.Serial, CAID: r.CAID, Tenant: r.Tenant, Device: r.Device, NotAfter: r.NotAfter, RevokedAt: r.RevokedAt, Reason: r.Reason}
}

// NextCRLNumber implements [pki.Store].
func (s *MemStore) NextCRLNumber(ctx context.Context, caID string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crlNum[caID]++
	return s.crlNum[caID], nil
}

// Blobs returns every byte string the store holds (certificates, key
// references, serials, names), so tests can scan them for key material.
func (s *MemStore) Blobs() [][]byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out [][]byte
	for _, c := range s.cas {
		out = append(out, bytes.Clone(c.CertDER), bytes.Clone(c.KeyRef), []byte(c.ID), []byte(c.Tenant))
	}
	for _, r := range s.certs {
		out = append(out, bytes.Clone(r.CertDER), bytes.Clone(r.SPKISHA256), []byte(r.Serial), []byte(r.Device))
	}
	return out
}

// PutRevokedBulk inserts n revoked certificates of caID with sequential
// serials starting at first, for benchmarks of million-entry CRLs.
func (s *MemStore) PutRevokedBulk(caID, tenant string, first uint64, n int, at, notAfter time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < n; i++ {
		serial := fmt.Sprintf("%x", first+uint64(i))
		r := pki.CertRecord{Serial: serial, Tenant: tenant, CAID: caID, Status: pki.CertRevoked,
			RevokedAt: at, Reason: pki.Reason([]int{0, 1, 4, 5}[i%4]), NotAfter: notAfter}
		s.certs[serial] = r
		s.revoked[caID] = append(s.revoked[caID], revokedOf(r))
	}
}

// Sealer is an AES-256-GCM [pki.Sealer] with a random key, standing in
// for a tenant data key.
type Sealer struct{ aead cipher.AEAD }

// NewSealer returns a sealer with a fresh random key.
func NewSealer() *Sealer {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err)
	}
	b, _ := aes.NewCipher(k)
	g, _ := cipher.NewGCM(b)
	return &Sealer{aead: g}
}

// Seal implements [pki.Sealer]: nonce || ciphertext.
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	n := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(n); err != nil {
		return nil, err
	}
	return s.aead.Seal(n, n, plaintext, aad), nil
}

// Open implements [pki.Sealer].
func (s *Sealer) Open(ct, aad []byte) ([]byte, error) {
	if len(ct) < s.aead.NonceSize() {
		return nil, errors.New("sealed blob too short")
	}
	return s.aead.Open(nil, ct[:s.aead.NonceSize()], ct[s.aead.NonceSize():], aad)
}

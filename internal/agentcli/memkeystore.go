package agentcli

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"sync"

	"github.com/wardiot/ward/agent/keystore"
)

// memKeystore keeps software keys in memory. Only simulate uses it: a
// thousand virtual devices do not need a thousand key directories, and
// their keys must not outlive the run.
type memKeystore struct {
	mu   sync.Mutex
	keys map[string]crypto.Signer
}

var _ keystore.Keystore = (*memKeystore)(nil)

func newMemKeystore() *memKeystore { return &memKeystore{keys: map[string]crypto.Signer{}} }

func (m *memKeystore) Generate(_ context.Context, name string, alg keystore.Algorithm) (keystore.Key, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	var s crypto.Signer
	var err error
	switch alg {
	case keystore.ECDSAP256:
		s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case keystore.ECDSAP384:
		s, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case keystore.Ed25519:
		_, s, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("%w: %v", keystore.ErrUnsupportedAlgorithm, alg)
	}
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[name]; ok {
		return nil, fmt.Errorf("%w: %q", keystore.ErrExists, name)
	}
	m.keys[name] = s
	return memKey{name, s}, nil
}

func (m *memKeystore) Load(_ context.Context, name string) (keystore.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.keys[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", keystore.ErrNotFound, name)
	}
	return memKey{name, s}, nil
}

func (m *memKeystore) Delete(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[name]; !ok {
		return fmt.Errorf("%w: %q", keystore.ErrNotFound, name)
	}
	delete(m.keys, name)
	return nil
}

func (m *memKeystore) Kind() string { return "memory" }
func (m *memKeystore) Close() error { return nil }

type memKey struct {
	name string
	s    crypto.Signer
}

func (k memKey) Name() string             { return k.name }
func (k memKey) Public() crypto.PublicKey { return k.s.Public() }
func (k memKey) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return k.s.Sign(r, d, o)
}

//go:build !cgo

package pkcs11

import (
	"context"
	"crypto"

	"github.com/wardiot/ward/internal/pki"
)

// Manager is a [pki.KeyManager] backed by a PKCS#11 token. In this build
// (without cgo) it cannot be opened.
type Manager struct{}

var _ pki.KeyManager = (*Manager)(nil)

// Open returns ErrNoCgo: PKCS#11 modules are C libraries.
func Open(cfg Config) (*Manager, error) { return nil, ErrNoCgo }

// Close does nothing.
func (m *Manager) Close() error { return nil }

// Generate returns ErrNoCgo.
func (m *Manager) Generate(ctx context.Context, alg pki.Algorithm, label string) ([]byte, crypto.Signer, error) {
	return nil, nil, ErrNoCgo
}

// Load returns ErrNoCgo.
func (m *Manager) Load(ctx context.Context, ref []byte) (crypto.Signer, error) { return nil, ErrNoCgo }

// Destroy returns ErrNoCgo.
func (m *Manager) Destroy(ctx context.Context, ref []byte) error { return ErrNoCgo }

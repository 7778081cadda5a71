//go:build cgo

package pkcs11

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/ThalesGroup/crypto11"

	"github.com/wardiot/ward/internal/pki"
)

// Manager is a [pki.KeyManager] backed by a PKCS#11 token.
type Manager struct {
	ctx *crypto11.Context
}

var _ pki.KeyManager = (*Manager)(nil)

// Open logs in to the token described by cfg. Close the manager when done.
func Open(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c, err := crypto11.Configure(&crypto11.Config{Path: cfg.Module, TokenLabel: cfg.TokenLabel, Pin: cfg.PIN})
	if err != nil {
		// crypto11's errors name the module and PKCS#11 return codes,
		// never the PIN.
		return nil, fmt.Errorf("pkcs11: open token %q with module %s: %w", cfg.TokenLabel, cfg.Module, err)
	}
	return &Manager{ctx: c}, nil
}

// Close logs out and releases the module.
func (m *Manager) Close() error { return m.ctx.Close() }

// Context exposes the crypto11 context (tests use it to inspect key
// attributes).
func (m *Manager) Context() *crypto11.Context { return m.ctx }

// Generate implements [pki.KeyManager]. The key is generated inside the
// token with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false (crypto11's
// defaults, which this package relies on and its tests check). Ed25519 is
// not offered by crypto11 and yields pki.ErrUnsupportedAlgorithm.
func (m *Manager) Generate(ctx context.Context, alg pki.Algorithm, label string) ([]byte, crypto.Signer, error) {
	if err := alg.Validate(); err != nil {
		return nil, nil, err
	}
	if len(label) > maxRef-1-idLen {
		return nil, nil, fmt.Errorf("pkcs11: label longer than %d bytes", maxRef-1-idLen)
	}
	id := make([]byte, idLen)
	if _, err := rand.Read(id); err != nil {
		return nil, nil, err
	}
	var (
		s   crypto11.Signer
		err error
	)
	switch alg {
	case pki.ECDSAP256:
		s, err = m.ctx.GenerateECDSAKeyPairWithLabel(id, []byte(label), elliptic.P256())
	case pki.ECDSAP384:
		s, err = m.ctx.GenerateECDSAKeyPairWithLabel(id, []byte(label), elliptic.P384())
	case pki.RSA3072:
		s, err = m.ctx.GenerateRSAKeyPairWithLabel(id, []byte(label), 3072)
	default:
		return nil, nil, fmt.Errorf("%w: %s keys in PKCS#11 tokens (use ecdsa-p256, ecdsa-p384 or rsa-3072)", pki.ErrUnsupportedAlgorithm, alg)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("pkcs11: generate %s key %q: %w", alg, label, err)
	}
	return encodeRef(id, label), s, nil
}

// Load implements [pki.KeyManager].
func (m *Manager) Load(ctx context.Context, ref []byte) (crypto.Signer, error) {
	id, label, err := decodeRef(ref)
	if err != nil {
		return nil, err
	}
	s, err := m.ctx.FindKeyPair(id, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("pkcs11: find key %q: %w", label, err)
	}
	if s == nil {
		return nil, fmt.Errorf("%w: no key pair %q in the token", pki.ErrKeyNotFound, label)
	}
	return s, nil
}

// Destroy implements [pki.KeyManager]: it deletes both halves of the key
// pair from the token.
func (m *Manager) Destroy(ctx context.Context, ref []byte) error {
	s, err := m.Load(ctx, ref)
	if errors.Is(err, pki.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	d, ok := s.(interface{ Delete() error })
	if !ok {
		return errors.New("pkcs11: key cannot be deleted")
	}
	if err := d.Delete(); err != nil {
		return fmt.Errorf("pkcs11: delete key: %w", err)
	}
	return nil
}

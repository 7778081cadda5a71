package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// KeyManager creates and holds CA private keys. Implementations must be safe
// for concurrent use, and the signers they return too.
type KeyManager interface {
	// Generate creates a new key; ref is opaque bytes the caller stores to
	// Load it later. label is a human-readable name (it may be shown in an
	// HSM's object list); it is not secret.
	Generate(ctx context.Context, alg Algorithm, label string) (ref []byte, s crypto.Signer, err error)
	// Load returns the signer for a ref returned by Generate. It returns an
	// error wrapping ErrKeyNotFound if the key no longer exists.
	Load(ctx context.Context, ref []byte) (crypto.Signer, error)
	// Destroy deletes the key behind ref where the manager holds state
	// (an HSM object). Destroying a missing key is not an error.
	Destroy(ctx context.Context, ref []byte) error
}

// Sealer encrypts small secrets with authenticated encryption. It is
// provided by the tenant data key (AES-256-GCM) elsewhere.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(ciphertext, aad []byte) ([]byte, error)
}

// ErrKeyNotFound reports that a key reference does not resolve to a key.
var ErrKeyNotFound = errors.New("pki: key not found")

// ErrNotExportable reports that a key cannot leave its key manager (an HSM
// key), so it cannot be exported for an offline root.
var ErrNotExportable = errors.New("pki: key is not exportable")

// fileKeyAAD binds sealed CA keys to their purpose, so a sealed blob of
// another kind (a group key, a webhook secret) cannot be passed off as one.
var fileKeyAAD = []byte("ward/pki/file-key/v1")

// FileKeyManager keeps keys as PKCS#8 sealed by a [Sealer]. The ref is the
// sealed blob itself, so the private key exists at rest only sealed and
// Destroy has nothing to do beyond the caller dropping the ref.
type FileKeyManager struct {
	sealer Sealer
}

var _ KeyManager = (*FileKeyManager)(nil)

// NewFileKeyManager returns a key manager sealing keys with s.
func NewFileKeyManager(s Sealer) *FileKeyManager {
	return &FileKeyManager{sealer: s}
}

// Generate implements [KeyManager].
func (m *FileKeyManager) Generate(ctx context.Context, alg Algorithm, label string) ([]byte, crypto.Signer, error) {
	if err := alg.Validate(); err != nil {
		return nil, nil, err
	}
	k, err := generateSoftwareKey(alg)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: encode key: %w", err)
	}
	defer clear(der)
	ref, err := m.sealer.Seal(der, fileKeyAAD)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: seal key: %w", err)
	}
	return ref, k, nil
}

// Load implements [KeyManager].
func (m *FileKeyManager) Load(ctx context.Context, ref []byte) (crypto.Signer, error) {
	der, err := m.sealer.Open(ref, fileKeyAAD)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot unseal key (wrong tenant key or corrupted record): %v", ErrKeyNotFound, err)
	}
	defer clear(der)
	return parsePKCS8Signer(der)
}

// Destroy implements [KeyManager]. The sealed blob is the key; forgetting
// the ref destroys it.
func (m *FileKeyManager) Destroy(ctx context.Context, ref []byte) error { return nil }

func parsePKCS8Signer(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: key type %T", ErrUnsupportedAlgorithm, k)
	}
	if _, err := AlgorithmOf(s.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// maxKeyPEM bounds a pasted root key: a PKCS#8 RSA-3072 key is under 2.5
// KiB; anything much larger is not a key we made.
const maxKeyPEM = 16 << 10

// ParseKeyPEM parses a PKCS#8 "PRIVATE KEY" PEM block as exported by
// [Authority.ExportRootKey].
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	if len(b) > maxKeyPEM {
		return nil, fmt.Errorf("pki: key PEM larger than %d bytes", maxKeyPEM)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("pki: expected a PEM block of type PRIVATE KEY")
	}
	defer clear(blk.Bytes)
	return parsePKCS8Signer(blk.Bytes)
}

// exportKeyPEM encodes a software key as PKCS#8 PEM, or returns
// ErrNotExportable for keys held elsewhere (HSM handles).
func exportKeyPEM(s crypto.Signer) ([]byte, error) {
	switch s.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
	default:
		return nil, ErrNotExportable
	}
	der, err := x509.MarshalPKCS8PrivateKey(s)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	defer clear(der)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

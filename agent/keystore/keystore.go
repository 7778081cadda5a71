package keystore

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"regexp"
)

// Keystore holds device keys under names. Implementations: file, pkcs11, tpm.
//
// A Keystore is safe for concurrent use by several goroutines. Keys it
// returned must not be used after Close.
type Keystore interface {
	// Generate creates a new key called name inside the keystore. It never
	// replaces a key: if name is already taken it returns an error wrapping
	// [ErrExists]. An algorithm the backend cannot hold wraps
	// [ErrUnsupportedAlgorithm].
	Generate(ctx context.Context, name string, alg Algorithm) (Key, error)
	// Load returns the key called name, or an error wrapping [ErrNotFound].
	Load(ctx context.Context, name string) (Key, error)
	// Delete destroys the key called name, or returns an error wrapping
	// [ErrNotFound]. Keys previously returned for that name must not be
	// used again: the pkcs11 and tpm backends make them fail, the file
	// backend cannot recall key material already in memory.
	Delete(ctx context.Context, name string) error
	// Kind reports the backend: "file", "pkcs11" or "tpm".
	Kind() string
	// Close releases the backend (token session, TPM connection, loaded
	// TPM objects). Afterwards every method, and Sign on its keys, fails
	// with [ErrClosed].
	Close() error
}

// Key is a private key held by a [Keystore]. Sign follows the
// [crypto.Signer] contract: ECDSA keys take a digest and return an ASN.1
// DER signature, Ed25519 keys take the whole message with crypto.Hash(0).
type Key interface {
	crypto.Signer
	// Name is the name the key was generated under.
	Name() string
}

// Algorithm is a signing key algorithm. The zero value is [ECDSAP256], the
// default on every backend.
type Algorithm int

const (
	// ECDSAP256 is ECDSA on NIST P-256, supported by every backend.
	ECDSAP256 Algorithm = iota
	// ECDSAP384 is ECDSA on NIST P-384 (file, pkcs11, and TPMs that
	// implement the curve).
	ECDSAP384
	// Ed25519 is supported by the file backend only: TPM 2.0 and most
	// PKCS#11 tokens in the field do not implement it.
	Ed25519
)

// String returns the algorithm's conventional name.
func (a Algorithm) String() string {
	switch a {
	case ECDSAP256:
		return "ecdsa-p256"
	case ECDSAP384:
		return "ecdsa-p384"
	case Ed25519:
		return "ed25519"
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// Errors that callers test with [errors.Is].
var (
	// ErrNotFound means no key has the requested name.
	ErrNotFound = errors.New("keystore: key not found")
	// ErrExists means Generate was asked for a name that is already taken.
	ErrExists = errors.New("keystore: key already exists")
	// ErrUnsupportedAlgorithm means the backend cannot hold keys of that
	// algorithm.
	ErrUnsupportedAlgorithm = errors.New("keystore: algorithm not supported by this backend")
	// ErrInvalidName means a key name does not match the allowed pattern.
	ErrInvalidName = errors.New("keystore: invalid key name")
	// ErrClosed means the keystore (or the keystore of a key) was closed.
	ErrClosed = errors.New("keystore: closed")
	// ErrInsecurePermissions means a key file, PIN file or key directory
	// is accessible by group or others and was refused.
	ErrInsecurePermissions = errors.New("keystore: insecure file permissions")
)

// maxNameLen bounds key names: they become file names and token labels,
// and some tokens cap CKA_LABEL at 32 bytes in their UI, so keep them short.
const maxNameLen = 64

// namePattern keeps names safe as file names on every file system (no path
// separators, no leading dot) and as PKCS#11 labels.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidateName reports whether name can name a key: 1 to 64 characters
// from [A-Za-z0-9._-], starting with a letter or digit.
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > maxNameLen || !namePattern.MatchString(name) {
		return fmt.Errorf("%w %q: use 1 to %d characters from A-Z a-z 0-9 . _ -, starting with a letter or digit", ErrInvalidName, truncate(name, maxNameLen), maxNameLen)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// Option configures [Open].
type Option func(*options)

type options struct {
	sealKey  []byte
	stateDir string
}

// SealKeySize is the length of the key given to [WithSealKey] (AES-256).
const SealKeySize = 32

// WithSealKey makes the file backend encrypt every key file with
// AES-256-GCM under key, which must be [SealKeySize] bytes. Use a key that
// is unique to the device and not stored next to the key files (derived
// from a hardware unique key, an eFuse, a secure element). Once set, the
// keystore refuses to load unsealed key files. Other backends ignore it.
func WithSealKey(key []byte) Option {
	return func(o *options) { o.sealKey = append([]byte(nil), key...) }
}

// WithStateDir tells the tpm backend where to keep the TPM-wrapped key blobs
// (created 0700 if missing). It is required for tpm specs; other backends
// ignore it.
func WithStateDir(dir string) Option {
	return func(o *options) { o.stateDir = dir }
}

// Open parses spec (see [ParseSpec]) and opens that keystore.
func Open(spec string, opts ...Option) (Keystore, error) {
	s, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	switch s.Kind {
	case KindFile:
		return openFile(s.Path, o)
	case KindPKCS11:
		return openPKCS11(s, o)
	case KindTPM:
		return openTPM(s.Path, o)
	}
	// ParseSpec only returns known kinds.
	return nil, fmt.Errorf("keystore: unknown kind %q", s.Kind)
}

package tenant

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/wardiot/ward/internal/atomicfile"
)

// KEK wraps and unwraps tenant data keys. The file implementation keeps a
// 256-bit key in the data directory; a PKCS#11 implementation can keep it
// in a token without changing callers.
type KEK interface {
	// Wrap encrypts a data key, binding it to aad.
	Wrap(key, aad []byte) ([]byte, error)
	// Unwrap must return an error wrapping ErrUnwrap if the ciphertext was
	// not produced by this KEK for this aad.
	Unwrap(wrapped, aad []byte) ([]byte, error)
}

// ErrUnwrap means ciphertext could not be authenticated and decrypted.
var ErrUnwrap = errors.New("cannot decrypt: wrong key, wrong context or tampered ciphertext")

// aead is AES-256-GCM with a random 96-bit nonce prefixed to the output and
// a version byte in front so the format can change. At most 2^32 messages
// per key keep random nonces safe; data keys are wrapped rarely and per-tenant
// data volumes are far below that.
type aead struct{ c cipher.AEAD }

const sealVersion = 1

func newAEAD(key []byte) (*aead, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("key must be 32 bytes, got %d", len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &aead{c: g}, nil
}

func (a *aead) seal(plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, 1+a.c.NonceSize(), 1+a.c.NonceSize()+len(plaintext)+a.c.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return a.c.Seal(out, out[1:], plaintext, aad), nil
}

func (a *aead) open(ct, aad []byte) ([]byte, error) {
	ns := a.c.NonceSize()
	if len(ct) < 1+ns+a.c.Overhead() || ct[0] != sealVersion {
		return nil, ErrUnwrap
	}
	pt, err := a.c.Open(nil, ct[1:1+ns], ct[1+ns:], aad)
	if err != nil {
		return nil, ErrUnwrap
	}
	return pt, nil
}

// FileKEK is a KEK held in a 0600 file.
type FileKEK struct{ a *aead }

var _ KEK = (*FileKEK)(nil)

// LoadOrCreateFileKEK reads the key at path, creating it (mode 0600,
// exclusively) on first start. It refuses a key file readable by others.
func LoadOrCreateFileKEK(path string) (*FileKEK, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if err := atomicfile.CreateNew(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("create key-encryption key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read key-encryption key: %w", err)
	} else {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("key-encryption key %s is accessible by group or others (mode %v); run chmod 600 on it", path, fi.Mode().Perm())
		}
	}
	a, err := newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key %s: %w", path, err)
	}
	return &FileKEK{a: a}, nil
}

// Wrap implements KEK.
func (k *FileKEK) Wrap(key, aad []byte) ([]byte, error) { return k.a.seal(key, aad) }

// Unwrap implements KEK.
func (k *FileKEK) Unwrap(wrapped, aad []byte) ([]byte, error) { return k.a.open(wrapped, aad) }

// NewMemoryKEK returns a KEK with a random key that lives only in memory,
// for tests and the demo.
func NewMemoryKEK() KEK {
	key := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	a, _ := newAEAD(key)
	return &FileKEK{a: a}
}

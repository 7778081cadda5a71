package tufrepo

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/internal/atomicfile"
)

// Signer signs TUF metadata. It is go-tuf's signer interface; [NewSigner]
// adapts any crypto.Signer (a key file, a PKCS#11 token via crypto11, a
// TPM) so offline keys never have to be exported.
type Signer = signature.Signer

// maxKeyFileSize bounds a key file read from disk: a PEM private key is a
// few hundred bytes, anything larger is not a key.
const maxKeyFileSize = 64 << 10

// NewSigner adapts a crypto.Signer holding an Ed25519 or ECDSA key. ECDSA
// signatures are ASN.1 over SHA-256 because go-tuf labels every ECDSA key
// "ecdsa-sha2-nistp256" and verifies with SHA-256.
func NewSigner(s crypto.Signer) (Signer, error) {
	switch s.Public().(type) {
	case ed25519.PublicKey, *ecdsa.PublicKey:
		return cryptoSigner{s}, nil
	}
	return nil, errors.New("tufrepo: unsupported key type (want Ed25519 or ECDSA)")
}

type cryptoSigner struct{ s crypto.Signer }

func (c cryptoSigner) SignMessage(r io.Reader, _ ...signature.SignOption) ([]byte, error) {
	msg, err := io.ReadAll(io.LimitReader(r, MaxMetadataSize+1))
	if err != nil {
		return nil, err
	}
	if len(msg) > MaxMetadataSize {
		return nil, ErrTooLarge
	}
	if _, ok := c.s.Public().(ed25519.PublicKey); ok {
		return c.s.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	d := sha256.Sum256(msg)
	return c.s.Sign(rand.Reader, d[:], crypto.SHA256)
}

func (c cryptoSigner) PublicKey(...signature.PublicKeyOption) (crypto.PublicKey, error) {
	return c.s.Public(), nil
}

// GenerateKey returns a fresh Ed25519 signer.
func GenerateKey() (Signer, ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	s, err := NewSigner(priv)
	return s, priv, err
}

// PublicKey returns the TUF key record of a signer.
func PublicKey(s Signer) (*metadata.Key, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	return metadata.KeyFromPublicKey(pub)
}

// KeyID returns the TUF key ID of a signer.
func KeyID(s Signer) (string, error) {
	k, err := PublicKey(s)
	if err != nil {
		return "", err
	}
	return k.ID()
}

// WriteKeyFile writes a PKCS#8 PEM private key readable only by its owner,
// refusing to overwrite an existing file (an offline key is never
// silently replaced).
func WriteKeyFile(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("tufrepo: marshal key: %w", err)
	}
	return atomicfile.CreateNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// LoadKeyFile reads a PKCS#8 PEM private key written by [WriteKeyFile] (or
// openssl genpkey) and returns its signer.
func LoadKeyFile(path string) (Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize))
	if err != nil {
		return nil, err
	}
	return parseKey(data)
}

func parseKey(data []byte) (Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("tufrepo: key file is not a PEM \"PRIVATE KEY\"")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, errors.New("tufrepo: key file does not hold a PKCS#8 private key")
	}
	cs, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("tufrepo: unsupported key type")
	}
	return NewSigner(cs)
}

// Sealer encrypts secrets at rest; *tenant.Sealer implements it.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(ciphertext, aad []byte) ([]byte, error)
}

// OnlineKey returns the online signing key stored under name, creating,
// sealing and storing a fresh Ed25519 key the first time. The key is only
// ever stored sealed; the AAD binds the ciphertext to its name so a
// snapshot key cannot be swapped in for a timestamp key.
func OnlineKey(ctx context.Context, st Store, s Sealer, name string) (Signer, error) {
	k, err := LoadOnlineKey(ctx, st, s, name)
	if !errors.Is(err, ErrNotFound) {
		return k, err
	}
	signer, priv, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	sealed, err := s.Seal(der, onlineKeyAAD(name))
	if err != nil {
		return nil, fmt.Errorf("tufrepo: seal online key %q: %w", name, err)
	}
	if err := st.Put(ctx, onlineKeyPath(name), sealed); err != nil {
		return nil, err
	}
	return signer, nil
}

func onlineKeyAAD(name string) []byte  { return []byte("ward ota online key\x00" + name) }
func onlineKeyPath(name string) string { return "keys/" + name + ".sealed" }

// LoadOnlineKey returns the online signing key stored under name, or
// [ErrNotFound] if there is none (never made, or destroyed).
func LoadOnlineKey(ctx context.Context, st Store, s Sealer, name string) (Signer, error) {
	sealed, err := st.Get(ctx, onlineKeyPath(name))
	if err != nil {
		return nil, err
	}
	der, err := s.Open(sealed, onlineKeyAAD(name))
	if err != nil {
		return nil, fmt.Errorf("tufrepo: unseal online key %q: %w", name, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("tufrepo: online key %q is corrupt", name)
	}
	cs, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("tufrepo: online key %q is corrupt", name)
	}
	return NewSigner(cs)
}

// Deleter is a [Store] that can delete a name.
type Deleter interface {
	Delete(ctx context.Context, name string) error
}

// DestroyOnlineKey deletes the sealed online key stored under name (a
// key its role no longer lists). Deleting a name that is not there is
// not an error.
func DestroyOnlineKey(ctx context.Context, st Store, name string) error {
	d, ok := st.(Deleter)
	if !ok {
		return fmt.Errorf("tufrepo: the store cannot delete key %q", name)
	}
	return d.Delete(ctx, onlineKeyPath(name))
}

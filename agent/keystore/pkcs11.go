//go:build cgo

package keystore

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ThalesGroup/crypto11"
)

// pkcs11IDSize is the length of the random CKA_ID given to each key pair.
// Keys are found by label; the ID only has to be unique so tools that pair
// objects by ID (pkcs11-tool, p11-kit) keep the private and public halves
// together.
const pkcs11IDSize = 16

type pkcs11Store struct {
	ctx *crypto11.Context

	mu     sync.Mutex // makes find-then-generate atomic within this process
	closed atomic.Bool
}

var _ Keystore = (*pkcs11Store)(nil)

func openPKCS11(s Spec, _ options) (Keystore, error) {
	pin := s.PIN
	if s.PINSource != "" {
		var err error
		if pin, err = readPINFile(s.PINSource); err != nil {
			return nil, err
		}
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: s.Module, TokenLabel: s.Token, Pin: pin})
	if err != nil {
		// Errors come from the module; make sure none can carry the PIN.
		return nil, fmt.Errorf("keystore: open PKCS#11 token %q with module %s: %s", s.Token, s.Module, redact(err.Error(), pin))
	}
	return &pkcs11Store{ctx: ctx}, nil
}

func redact(msg, secret string) string {
	if secret == "" {
		return msg
	}
	return strings.ReplaceAll(msg, secret, "REDACTED")
}

func (s *pkcs11Store) Kind() string { return KindPKCS11 }

func (s *pkcs11Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.ctx.Close(); err != nil {
		return fmt.Errorf("keystore: close PKCS#11 token: %w", err)
	}
	return nil
}

func (s *pkcs11Store) check(ctx context.Context, name string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return ValidateName(name)
}

// find returns the key pair labelled name, nil if there is none.
func (s *pkcs11Store) find(name string) (crypto11.Signer, error) {
	keys, err := s.ctx.FindKeyPairs(nil, []byte(name))
	if err != nil {
		return nil, fmt.Errorf("keystore: find %q in token: %w", name, err)
	}
	switch len(keys) {
	case 0:
		return nil, nil
	case 1:
		return keys[0], nil
	}
	return nil, fmt.Errorf("keystore: %d key pairs in the token are labelled %q; remove the extras with pkcs11-tool", len(keys), name)
}

func (s *pkcs11Store) Generate(ctx context.Context, name string, alg Algorithm) (Key, error) {
	if err := s.check(ctx, name); err != nil {
		return nil, err
	}
	var curve elliptic.Curve
	switch alg {
	case ECDSAP256:
		curve = elliptic.P256()
	case ECDSAP384:
		curve = elliptic.P384()
	default:
		return nil, fmt.Errorf("%w: %v (pkcs11 supports ecdsa-p256 and ecdsa-p384)", ErrUnsupportedAlgorithm, alg)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	existing, err := s.find(name)
	if err != nil {
		return nil, err
	}
	if existing != nil {
		return nil, fmt.Errorf("%w: %q", ErrExists, name)
	}
	id := make([]byte, pkcs11IDSize)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("keystore: key id: %w", err)
	}
	// crypto11 marks the private key CKA_TOKEN, CKA_SENSITIVE and not
	// CKA_EXTRACTABLE: it is generated in the token and never leaves it.
	k, err := s.ctx.GenerateECDSAKeyPairWithLabel(id, []byte(name), curve)
	if err != nil {
		return nil, fmt.Errorf("keystore: generate %v key in token: %w", alg, err)
	}
	return &pkcs11Key{name: name, signer: k, store: s}, nil
}

func (s *pkcs11Store) Load(ctx context.Context, name string) (Key, error) {
	if err := s.check(ctx, name); err != nil {
		return nil, err
	}
	k, err := s.find(name)
	if err != nil {
		return nil, err
	}
	if k == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return &pkcs11Key{name: name, signer: k, store: s}, nil
}

func (s *pkcs11Store) Delete(ctx context.Context, name string) error {
	if err := s.check(ctx, name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.find(name)
	if err != nil {
		return err
	}
	if k == nil {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err := k.Delete(); err != nil {
		return fmt.Errorf("keystore: delete %q from token: %w", name, err)
	}
	return nil
}

type pkcs11Key struct {
	name   string
	signer crypto11.Signer
	store  *pkcs11Store
}

func (k *pkcs11Key) Name() string             { return k.name }
func (k *pkcs11Key) Public() crypto.PublicKey { return k.signer.Public() }

// Sign signs digest inside the token (CKM_ECDSA) and returns an ASN.1 DER
// signature.
func (k *pkcs11Key) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if k.store.closed.Load() {
		return nil, ErrClosed
	}
	sig, err := k.signer.Sign(r, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("keystore: token sign with %q: %w", k.name, err)
	}
	return sig, nil
}

package keystore

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/wardiot/ward/internal/atomicfile"
)

// maxKeyFileSize bounds what Load reads from a key file: a P-384 PKCS#8 PEM
// is under 400 bytes, so anything near this size is not ours and must not
// make the agent allocate without limit.
const maxKeyFileSize = 16 << 10

const (
	pemPrivateKey       = "PRIVATE KEY"
	pemSealedPrivateKey = "WARD SEALED PRIVATE KEY"
	keyFileSuffix       = ".pem"
	// sealAADPrefix binds a sealed key file to the format and to its key
	// name, so renaming device-1.pem to device-2.pem is detected.
	sealAADPrefix = "ward-keystore-sealed-v1\x00"
)

type fileStore struct {
	dir  string
	seal cipher.AEAD // nil when key files are plain PKCS#8

	mu     sync.Mutex // serialises Generate and Delete within this process
	closed atomic.Bool
}

var _ Keystore = (*fileStore)(nil)

func openFile(dir string, o options) (*fileStore, error) {
	st := &fileStore{dir: filepath.Clean(dir)}
	if o.sealKey != nil {
		if len(o.sealKey) != SealKeySize {
			return nil, fmt.Errorf("keystore: seal key must be %d bytes, got %d", SealKeySize, len(o.sealKey))
		}
		block, err := aes.NewCipher(o.sealKey)
		if err != nil {
			return nil, fmt.Errorf("keystore: seal key: %w", err)
		}
		if st.seal, err = cipher.NewGCM(block); err != nil {
			return nil, fmt.Errorf("keystore: seal key: %w", err)
		}
	}
	if err := os.MkdirAll(st.dir, 0o700); err != nil {
		return nil, fmt.Errorf("keystore: create key directory: %w", err)
	}
	fi, err := os.Stat(st.dir)
	if err != nil {
		return nil, fmt.Errorf("keystore: key directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("keystore: %s is not a directory", st.dir)
	}
	// Group or other access to the directory lets someone else replace or
	// list keys; refuse rather than silently fix, the operator should know.
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: key directory %s has mode %04o; run chmod 700 on it", ErrInsecurePermissions, st.dir, fi.Mode().Perm())
	}
	st.removeStaging()
	return st, nil
}

// removeStaging deletes staging files a crash left behind in the middle of
// Generate. They may hold complete private keys that no name refers to;
// nothing would ever load them, so they are only a liability. (One process
// owns a key directory; a second one generating keys in it at the same time
// could lose a staging file here.)
func (st *fileStore) removeStaging() {
	matches, _ := filepath.Glob(filepath.Join(st.dir, ".tmp-*"))
	for _, m := range matches {
		if fi, err := os.Lstat(m); err == nil && fi.Mode().IsRegular() {
			_ = overwrite(m, fi.Size())
			_ = os.Remove(m)
		}
	}
}

func (s *fileStore) Kind() string { return KindFile }

func (s *fileStore) Close() error {
	s.closed.Store(true)
	return nil
}

func (s *fileStore) path(name string) string {
	return filepath.Join(s.dir, name+keyFileSuffix)
}

func (s *fileStore) check(ctx context.Context, name string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return ValidateName(name)
}

func (s *fileStore) Generate(ctx context.Context, name string, alg Algorithm) (Key, error) {
	if err := s.check(ctx, name); err != nil {
		return nil, err
	}
	var priv crypto.Signer
	var err error
	switch alg {
	case ECDSAP256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case Ed25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedAlgorithm, alg)
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: generate %v key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("keystore: encode key: %w", err)
	}
	block := &pem.Block{Type: pemPrivateKey, Bytes: der}
	if s.seal != nil {
		nonce := make([]byte, s.seal.NonceSize())
		if _, err := rand.Read(nonce); err != nil {
			return nil, fmt.Errorf("keystore: seal nonce: %w", err)
		}
		block = &pem.Block{Type: pemSealedPrivateKey, Bytes: s.seal.Seal(nonce, nonce, der, sealAAD(name))}
	}
	data := pem.EncodeToMemory(block)
	clear(der)
	defer clear(data)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := writeNew(s.path(name), data); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: %q", ErrExists, name)
		}
		return nil, fmt.Errorf("keystore: write key %q: %w", name, err)
	}
	return &fileKey{name: name, signer: priv, store: s}, nil
}

func sealAAD(name string) []byte { return []byte(sealAADPrefix + name) }

// writeNew writes data to path atomically and without replacing an existing
// file: temp file, fsync, hard link to the final name (which fails if it
// exists, unlike rename), fsync of the directory. A crash leaves either no
// key or the whole key, never a torn one.
func writeNew(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if _, err := os.Lstat(path); err == nil {
		return fs.ErrExist
	}
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer func() {
		// The temp name is only a staging link; the key lives on under
		// path if linking succeeded.
		os.Remove(tmpName)
	}()
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fs.ErrExist
		}
		// File systems without hard links (FAT on some devices): fall
		// back to rename. The Lstat above keeps this from replacing a key
		// except in a race with another process, which s.mu cannot stop.
		var le *os.LinkError
		if errors.As(err, &le) && (errors.Is(le.Err, syscall.EPERM) || errors.Is(le.Err, syscall.ENOTSUP) || errors.Is(le.Err, syscall.EOPNOTSUPP)) {
			if err := os.Rename(tmpName, path); err != nil {
				return err
			}
		} else {
			return err
		}
	}
	return atomicfile.SyncDir(dir)
}

func (s *fileStore) Load(ctx context.Context, name string) (Key, error) {
	if err := s.check(ctx, name); err != nil {
		return nil, err
	}
	data, err := readKeyFile(s.path(name))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return nil, fmt.Errorf("keystore: key %q: %w", name, err)
	}
	signer, err := s.decode(name, data)
	if err != nil {
		return nil, fmt.Errorf("keystore: key %q: %w", name, err)
	}
	return &fileKey{name: name, signer: signer, store: s}, nil
}

// readKeyFile reads a key, state or PIN file, refusing symlinks, non-regular files,
// files readable or writable by group or others, and oversized files.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link; refusing to follow it", filepath.Base(path))
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", filepath.Base(path))
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run chmod 600 on it (and consider its secret compromised if others could read it)", ErrInsecurePermissions, filepath.Base(path), perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", filepath.Base(path), maxKeyFileSize)
	}
	return data, nil
}

// decode parses a key file's bytes into a signer. It is the parser of the
// (possibly tampered) file contents and is fuzzed.
func (s *fileStore) decode(name string, data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("key file holds no PEM block")
	}
	der := block.Bytes
	switch {
	case s.seal != nil && block.Type == pemSealedPrivateKey:
		ns := s.seal.NonceSize()
		if len(der) < ns+s.seal.Overhead() {
			return nil, errors.New("sealed key file is truncated")
		}
		plain, err := s.seal.Open(nil, der[:ns], der[ns:], sealAAD(name))
		if err != nil {
			return nil, errors.New("sealed key file does not open with this device's seal key (wrong device, wrong name, or tampered)")
		}
		defer clear(plain)
		der = plain
	case s.seal != nil:
		return nil, fmt.Errorf("key file is %q, not sealed, but this keystore requires sealed keys", block.Type)
	case block.Type == pemSealedPrivateKey:
		return nil, errors.New("key file is sealed; open the keystore with WithSealKey")
	case block.Type != pemPrivateKey:
		return nil, fmt.Errorf("key file holds %q, want %q", truncate(block.Type, 32), pemPrivateKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errors.New("key file is not a PKCS#8 private key")
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errors.New("key file holds an ECDSA key on an unsupported curve")
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("key file holds an unsupported key type %T", k)
}

func (s *fileStore) Delete(ctx context.Context, name string) error {
	if err := s.check(ctx, name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	path := s.path(name)
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return fmt.Errorf("keystore: delete %q: %w", name, err)
	}
	if fi.Mode().IsRegular() {
		// Best effort: overwrite before unlinking. Flash translation
		// layers and journaling may keep old blocks, which is why
		// WithSealKey exists: destroying the seal key is the real shred.
		if err := overwrite(path, fi.Size()); err != nil {
			return fmt.Errorf("keystore: delete %q: %w", name, err)
		}
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("keystore: delete %q: %w", name, err)
	}
	return atomicfile.SyncDir(s.dir)
}

func overwrite(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, min(size, maxKeyFileSize))); err != nil {
		return err
	}
	return f.Sync()
}

type fileKey struct {
	name   string
	signer crypto.Signer
	store  *fileStore
}

func (k *fileKey) Name() string             { return k.name }
func (k *fileKey) Public() crypto.PublicKey { return k.signer.Public() }

func (k *fileKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if k.store.closed.Load() {
		return nil, ErrClosed
	}
	return k.signer.Sign(r, digest, opts)
}

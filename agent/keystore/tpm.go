package keystore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/wardiot/ward/agent/internal/tpmconn"
	"github.com/wardiot/ward/internal/atomicfile"
)

// maxLoadedKeys bounds the keys this keystore keeps loaded in the TPM at
// once. The TPM reference implementation (and swtpm, and many discrete
// TPMs) holds only 3 transient objects; the storage primary takes one.
// Without a resource manager (swtpm over TCP, /dev/tpm0) going over the
// limit fails with TPM_RC_OBJECT_MEMORY, so we evict the least recently
// used key instead and reload it from its blob when next needed.
const maxLoadedKeys = 2

// tpmKeySuffix names the state file holding a key's TPM-wrapped blobs.
const tpmKeySuffix = ".tpm.pem"

type tpmStore struct {
	dir string

	mu      sync.Mutex // guards every field below and serialises TPM commands
	tpm     transport.TPMCloser
	primary tpm2.NamedHandle
	loaded  map[string]*loadedKey
	tick    uint64 // LRU clock for loaded
	closed  bool
}

type loadedKey struct {
	handle  tpm2.NamedHandle
	pubBlob []byte // identifies which generation of the name is loaded
	used    uint64
}

var _ Keystore = (*tpmStore)(nil)

func openTPM(path string, o options) (*tpmStore, error) {
	if o.stateDir == "" {
		return nil, errors.New("keystore: tpm keystore needs WithStateDir(DIR) to keep its TPM-wrapped key blobs")
	}
	st, err := openFile(o.stateDir, options{})
	if err != nil {
		return nil, err
	}
	t, err := tpmconn.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	s := &tpmStore{dir: st.dir, tpm: t, loaded: map[string]*loadedKey{}}
	// The storage primary is derived from the owner seed and the TCG
	// template, so recreating it after every start gives the same key
	// without taking a persistent handle the platform may use for itself.
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("keystore: create TPM storage primary key (ECC P-256 SRK template, owner hierarchy with empty auth): %w", err)
	}
	s.primary = tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	return s, nil
}

func (s *tpmStore) Kind() string { return KindTPM }

// Close flushes every object this keystore loaded and closes the channel.
func (s *tpmStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for name, lk := range s.loaded {
		errs = append(errs, s.flush(lk.handle.Handle))
		delete(s.loaded, name)
	}
	errs = append(errs, s.flush(s.primary.Handle))
	errs = append(errs, s.tpm.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("keystore: close TPM: %w", err)
	}
	return nil
}

func (s *tpmStore) flush(h tpm2.TPMHandle) error {
	_, err := tpm2.FlushContext{FlushHandle: h}.Execute(s.tpm)
	return err
}

func (s *tpmStore) path(name string) string { return filepath.Join(s.dir, name+tpmKeySuffix) }

// lockCheck takes s.mu; the caller must unlock it if err is nil.
func (s *tpmStore) lockCheck(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	return nil
}

func signingTemplate(alg Algorithm) (tpm2.TPMTPublic, error) {
	var curve tpm2.TPMECCCurve
	switch alg {
	case ECDSAP256:
		curve = tpm2.TPMECCNistP256
	case ECDSAP384:
		curve = tpm2.TPMECCNistP384
	default:
		return tpm2.TPMTPublic{}, fmt.Errorf("%w: %v (tpm supports ecdsa-p256 and ecdsa-p384)", ErrUnsupportedAlgorithm, alg)
	}
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			// A null scheme lets each Sign pick the hash the caller
			// used (SHA-256 for CSRs, SHA-384 in some TLS 1.2 suites).
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID: curve,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}, nil
}

func (s *tpmStore) Generate(ctx context.Context, name string, alg Algorithm) (Key, error) {
	tmpl, err := signingTemplate(alg)
	if err != nil {
		return nil, err
	}
	if err := s.lockCheck(ctx, name); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if _, err := os.Lstat(s.path(name)); err == nil {
		return nil, fmt.Errorf("%w: %q", ErrExists, name)
	}
	rsp, err := tpm2.Create{
		ParentHandle: s.primary,
		InPublic:     tpm2.New2B(tmpl),
	}.Execute(s.tpm)
	if errors.Is(err, tpm2.TPMRCCurve) {
		return nil, fmt.Errorf("%w: this TPM does not implement %v: %w", ErrUnsupportedAlgorithm, alg, err)
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: TPM2_Create %v key: %w", alg, err)
	}
	blob := tss2Key{
		Type:      oidLoadableKey,
		EmptyAuth: true,
		Parent:    int64(tpm2.TPMRHOwner),
		PubKey:    tpm2.Marshal(rsp.OutPublic),
		PrivKey:   tpm2.Marshal(rsp.OutPrivate),
	}
	pub, err := checkTPMPublic(rsp.OutPublic)
	if err != nil {
		return nil, fmt.Errorf("keystore: TPM returned %w", err)
	}
	data, err := blob.encode()
	if err != nil {
		return nil, err
	}
	if err := writeNew(s.path(name), data); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: %q", ErrExists, name)
		}
		return nil, fmt.Errorf("keystore: write key %q: %w", name, err)
	}
	return &tpmKey{store: s, name: name, pub: pub, blob: blob}, nil
}

func (s *tpmStore) Load(ctx context.Context, name string) (Key, error) {
	if err := s.lockCheck(ctx, name); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	blob, err := s.readBlob(name)
	if err != nil {
		return nil, err
	}
	pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](blob.PubKey)
	if err != nil {
		return nil, fmt.Errorf("keystore: key %q: public blob: %w", name, err)
	}
	pub, err := checkTPMPublic(*pub2b)
	if err != nil {
		return nil, fmt.Errorf("keystore: key %q: %w", name, err)
	}
	// Load now, not at first Sign: a blob from another TPM, or from before
	// the TPM was cleared, should fail here with a clear message.
	if _, err := s.handleLocked(name, blob); err != nil {
		return nil, err
	}
	return &tpmKey{store: s, name: name, pub: pub, blob: blob}, nil
}

func (s *tpmStore) readBlob(name string) (tss2Key, error) {
	data, err := readKeyFile(s.path(name))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return tss2Key{}, fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return tss2Key{}, fmt.Errorf("keystore: key %q: %w", name, err)
	}
	blob, err := parseTSS2Key(data)
	if err != nil {
		return tss2Key{}, fmt.Errorf("keystore: key %q: %w", name, err)
	}
	return blob, nil
}

// handleLocked returns a TPM handle for blob, loading it if needed. s.mu
// must be held.
func (s *tpmStore) handleLocked(name string, blob tss2Key) (tpm2.NamedHandle, error) {
	s.tick++
	if lk, ok := s.loaded[name]; ok && bytes.Equal(lk.pubBlob, blob.PubKey) {
		lk.used = s.tick
		return lk.handle, nil
	}
	if lk, ok := s.loaded[name]; ok {
		// Another generation of this name is loaded.
		s.flush(lk.handle.Handle)
		delete(s.loaded, name)
	}
	for len(s.loaded) >= maxLoadedKeys {
		var oldest string
		for n, lk := range s.loaded {
			if oldest == "" || lk.used < s.loaded[oldest].used {
				oldest = n
			}
		}
		s.flush(s.loaded[oldest].handle.Handle)
		delete(s.loaded, oldest)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](blob.PrivKey)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("keystore: key %q: private blob: %w", name, err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](blob.PubKey)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("keystore: key %q: public blob: %w", name, err)
	}
	rsp, err := tpm2.Load{ParentHandle: s.primary, InPrivate: *priv, InPublic: *pub}.Execute(s.tpm)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("keystore: key %q: TPM2_Load failed (the blob belongs to another TPM, the TPM was cleared, or the file was altered): %w", name, err)
	}
	h := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	s.loaded[name] = &loadedKey{handle: h, pubBlob: blob.PubKey, used: s.tick}
	return h, nil
}

func (s *tpmStore) Delete(ctx context.Context, name string) error {
	if err := s.lockCheck(ctx, name); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if lk, ok := s.loaded[name]; ok {
		s.flush(lk.handle.Handle)
		delete(s.loaded, name)
	}
	if err := os.Remove(s.path(name)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return fmt.Errorf("keystore: delete %q: %w", name, err)
	}
	return atomicfile.SyncDir(s.dir)
}

// checkTPMPublic accepts only the kind of key this keystore creates: an
// unrestricted ECDSA signing key that never left the TPM. TPM2_Load proves
// the public area belongs with the private blob, so these attributes, once
// loaded, are the TPM's word.
func checkTPMPublic(p2b tpm2.TPM2BPublic) (*ecdsa.PublicKey, error) {
	p, err := p2b.Contents()
	if err != nil {
		return nil, fmt.Errorf("malformed TPM public area: %w", err)
	}
	a := p.ObjectAttributes
	if p.Type != tpm2.TPMAlgECC || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt || a.Decrypt || a.Restricted {
		return nil, errors.New("TPM key is not a non-duplicable ECC signing key made by the TPM")
	}
	parms, err := p.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("TPM key parameters: %w", err)
	}
	point, err := p.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("TPM key point: %w", err)
	}
	var size int
	switch parms.CurveID {
	case tpm2.TPMECCNistP256:
		size = 32
	case tpm2.TPMECCNistP384:
		size = 48
	default:
		return nil, fmt.Errorf("TPM key on unsupported curve %v", parms.CurveID)
	}
	if len(point.X.Buffer) > size || len(point.Y.Buffer) > size {
		return nil, errors.New("TPM key point has oversized coordinates")
	}
	// Uncompressed SEC 1 encoding, then the standard library's parser,
	// which rejects points not on the curve.
	raw := make([]byte, 1+2*size)
	raw[0] = 4
	copy(raw[1+size-len(point.X.Buffer):1+size], point.X.Buffer)
	copy(raw[1+2*size-len(point.Y.Buffer):], point.Y.Buffer)
	var pub *ecdsa.PublicKey
	if size == 32 {
		pub, err = ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	} else {
		pub, err = ecdsa.ParseUncompressedPublicKey(elliptic.P384(), raw)
	}
	if err != nil {
		return nil, fmt.Errorf("TPM key point: %w", err)
	}
	return pub, nil
}

type tpmKey struct {
	store *tpmStore
	name  string
	pub   *ecdsa.PublicKey
	blob  tss2Key
}

func (k *tpmKey) Name() string             { return k.name }
func (k *tpmKey) Public() crypto.PublicKey { return k.pub }

// Sign signs digest inside the TPM with TPM2_Sign and returns an ASN.1 DER
// ECDSA signature. opts.HashFunc() must be SHA-256, SHA-384 or SHA-512 and
// match len(digest).
func (k *tpmKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var alg tpm2.TPMAlgID
	h := opts.HashFunc()
	switch h {
	case crypto.SHA256:
		alg = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		alg = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		alg = tpm2.TPMAlgSHA512
	default:
		return nil, fmt.Errorf("keystore: tpm key signs SHA-256, SHA-384 or SHA-512 digests, not %v", h)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("keystore: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	s := k.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	// A deleted key must stop working even though this value still holds
	// its blob, and a later key of the same name must not sign for it.
	cur, err := s.readBlob(k.name)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(cur.PubKey, k.blob.PubKey) {
		return nil, fmt.Errorf("%w: %q was deleted and replaced by another key", ErrNotFound, k.name)
	}
	handle, err := s.handleLocked(k.name, k.blob)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: handle.Handle, Name: handle.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("keystore: TPM2_Sign with %q: %w", k.name, err)
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("keystore: TPM2_Sign returned a non-ECDSA signature: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer),
		new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
}

// TPMAccess is the TPM behind a tpm keystore, lent for operations beyond
// signing (the agent's TPM endorsement-key provisioning: credential
// activation and key certification). See [WithTPM].
type TPMAccess struct {
	// TPM is the command channel. Use it only inside the WithTPM call.
	TPM transport.TPM
	// SRK is the keystore's storage primary key, the parent under which
	// the caller may create objects.
	SRK tpm2.NamedHandle

	store *tpmStore
}

// LoadKey loads k, a key of this keystore, and returns its handle and
// public area. The caller flushes the handle.
func (a *TPMAccess) LoadKey(k Key) (tpm2.NamedHandle, tpm2.TPMTPublic, error) {
	tk, ok := k.(*tpmKey)
	if !ok || tk.store != a.store {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, errors.New("keystore: the key is not in this TPM keystore")
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](tk.blob.PrivKey)
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, fmt.Errorf("keystore: key %q: private blob: %w", tk.name, err)
	}
	pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](tk.blob.PubKey)
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, fmt.Errorf("keystore: key %q: public blob: %w", tk.name, err)
	}
	pub, err := pub2b.Contents()
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, fmt.Errorf("keystore: key %q: public blob: %w", tk.name, err)
	}
	rsp, err := tpm2.Load{ParentHandle: a.SRK, InPrivate: *priv, InPublic: *pub2b}.Execute(a.TPM)
	if err != nil {
		return tpm2.NamedHandle{}, tpm2.TPMTPublic{}, fmt.Errorf("keystore: key %q: TPM2_Load: %w", tk.name, err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, *pub, nil
}

// WithTPM runs fn with exclusive use of the TPM of ks, which must be a tpm
// keystore. The keys the keystore had loaded are flushed first, so fn has
// every transient object slot but the storage primary's (swtpm and many
// TPMs have three); fn must flush every object it loads or creates.
func WithTPM(ctx context.Context, ks Keystore, fn func(*TPMAccess) error) error {
	s, ok := ks.(*tpmStore)
	if !ok {
		return fmt.Errorf("keystore: the %s keystore has no TPM", ks.Kind())
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for name, lk := range s.loaded {
		s.flush(lk.handle.Handle)
		delete(s.loaded, name)
	}
	return fn(&TPMAccess{TPM: s.tpm, SRK: s.primary, store: s})
}

package pki

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardiot/ward/wire"
)

// Default lifetimes. Each can be overridden in [Config].
const (
	DefaultRootValidity       = 10 * 365 * 24 * time.Hour
	DefaultIssuingValidity    = 5 * 365 * 24 * time.Hour
	DefaultDeviceValidity     = 90 * 24 * time.Hour
	DefaultServerValidity     = 90 * 24 * time.Hour
	DefaultShortLivedValidity = 8 * time.Hour
	DefaultCRLValidity        = 24 * time.Hour
	DefaultOCSPValidity       = 4 * time.Hour
	// DefaultOCSPSignerValidity keeps the delegated responder certificate
	// short-lived: it carries id-pkix-ocsp-nocheck, so it cannot itself be
	// revoked, and its expiry is the only bound on a stolen responder key.
	DefaultOCSPSignerValidity = 7 * 24 * time.Hour
	// DefaultMaintainInterval is how often Run checks for CRLs, responder
	// certificates and cached responses that need renewing.
	DefaultMaintainInterval = time.Minute
)

// backdate is subtracted from notBefore/thisUpdate so that relying parties
// whose clocks run slightly behind still accept fresh objects.
const backdate = time.Minute

// Auditor is told about every issuance and revocation before the result
// is returned to the caller. An error fails the operation (the certificate
// stays recorded but is not handed out), so nothing happens that the audit
// log does not know about.
type Auditor interface {
	Audit(ctx context.Context, e Event) error
}

// Event describes an issuance or revocation for the [Auditor].
type Event struct {
	Action  string // "cert.issue", "cert.revoke", "ca.create", "ca.offline"
	Tenant  string
	CAID    string
	Serial  string // empty for CA events
	Device  string
	Profile string
	Reason  Reason // for cert.revoke
}

// Config configures an [Authority].
type Config struct {
	// Store persists CAs, certificates and CRL numbers. Required.
	Store Store
	// Keys returns the key manager holding tenant's CA keys (file mode
	// needs the tenant's data key). Required.
	Keys func(ctx context.Context, tenant string) (KeyManager, error)
	// BaseURL is the plain-HTTP listener as relying parties reach it,
	// e.g. "http://ward.example:8080". CRL and OCSP URLs in every
	// certificate are built from it. Required.
	BaseURL string
	// IssuerURLs adds an AIA caIssuers URL (BaseURL/ca/<id>.crt) to
	// issued certificates.
	IssuerURLs bool

	RootValidity, IssuingValidity                      time.Duration
	DeviceValidity, ServerValidity, ShortLivedValidity time.Duration
	// CRLValidity is nextUpdate - thisUpdate. CRLs are regenerated when a
	// third of it is left, and after every revocation.
	CRLValidity time.Duration
	// OCSPValidity is nextUpdate - thisUpdate of OCSP responses.
	OCSPValidity       time.Duration
	OCSPSignerValidity time.Duration
	MaintainInterval   time.Duration

	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Auditor, if set, sees every issuance and revocation.
	Auditor Auditor
	// Logger; nil discards.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.RootValidity, DefaultRootValidity)
	def(&c.IssuingValidity, DefaultIssuingValidity)
	def(&c.DeviceValidity, DefaultDeviceValidity)
	def(&c.ServerValidity, DefaultServerValidity)
	def(&c.ShortLivedValidity, DefaultShortLivedValidity)
	def(&c.CRLValidity, DefaultCRLValidity)
	def(&c.OCSPValidity, DefaultOCSPValidity)
	def(&c.OCSPSignerValidity, DefaultOCSPSignerValidity)
	def(&c.MaintainInterval, DefaultMaintainInterval)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.BaseURL = strings.TrimRight(c.BaseURL, "/")
}

// Validate reports every problem with c (after defaults are applied).
func (c *Config) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("pki: config: Store is required"))
	}
	if c.Keys == nil {
		errs = append(errs, errors.New("pki: config: Keys is required"))
	}
	if u, err := url.Parse(c.BaseURL); c.BaseURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		errs = append(errs, fmt.Errorf("pki: config: BaseURL %q must be an absolute http URL of the CRL/OCSP listener, like http://ward.example:8080", c.BaseURL))
	}
	pos := map[string]time.Duration{
		"RootValidity": c.RootValidity, "IssuingValidity": c.IssuingValidity,
		"DeviceValidity": c.DeviceValidity, "ServerValidity": c.ServerValidity,
		"ShortLivedValidity": c.ShortLivedValidity, "CRLValidity": c.CRLValidity,
		"OCSPValidity": c.OCSPValidity, "OCSPSignerValidity": c.OCSPSignerValidity,
		"MaintainInterval": c.MaintainInterval,
	}
	for _, n := range []string{"RootValidity", "IssuingValidity", "DeviceValidity", "ServerValidity", "ShortLivedValidity", "CRLValidity", "OCSPValidity", "OCSPSignerValidity", "MaintainInterval"} {
		if pos[n] < 0 {
			errs = append(errs, fmt.Errorf("pki: config: %s must be positive", n))
		}
	}
	if c.IssuingValidity > c.RootValidity {
		errs = append(errs, errors.New("pki: config: IssuingValidity must not exceed RootValidity"))
	}
	if c.OCSPValidity > c.OCSPSignerValidity {
		errs = append(errs, errors.New("pki: config: OCSPValidity must not exceed OCSPSignerValidity"))
	}
	return errors.Join(errs...)
}

// Authority runs the CAs of all tenants. Create it with [New]; it is safe
// for concurrent use.
type Authority struct {
	cfg     Config
	store   Store
	revoked *RevocationSet
	log     *slog.Logger

	mu  sync.RWMutex
	cas map[string]*caState // by CA ID

	crlKick chan struct{} // buffered(1): some CRL is dirty
	gen     atomic.Uint64 // bumped whenever the set of CAs changes
}

// Generation changes whenever a CA is added, retired or dropped, so that
// callers caching trust pools (the gateway) know when to rebuild them.
func (a *Authority) Generation() uint64 { return a.gen.Load() }

// caState is a CA loaded in memory.
type caState struct {
	rec    CA
	cert   *x509.Certificate
	signer crypto.Signer // nil while the key is offline
	// Issuer hashes as OCSP requests name the CA (SHA-1 and SHA-256).
	nameHash1, keyHash1, nameHash256, keyHash256 []byte

	// Issuing CAs only.
	crlMu    sync.Mutex // serialises CRL generation
	crl      atomic.Pointer[crlSnapshot]
	crlDirty atomic.Bool
	ocsp     *responder
}

// New loads every CA from the store, rebuilds the revocation set and
// prepares CRLs and OCSP responders. Call [Authority.Run] to keep them
// fresh.
func New(ctx context.Context, cfg Config) (*Authority, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Authority{
		cfg:     cfg,
		store:   cfg.Store,
		revoked: NewRevocationSet(),
		log:     cfg.Logger,
		cas:     make(map[string]*caState),
		crlKick: make(chan struct{}, 1),
	}
	recs, err := a.store.ListCAs(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("pki: list CAs: %w", err)
	}
	for _, rec := range recs {
		var s crypto.Signer
		if rec.KeyRef != nil {
			km, err := cfg.Keys(ctx, rec.Tenant)
			if err != nil {
				return nil, fmt.Errorf("pki: key manager for tenant %s: %w", rec.Tenant, err)
			}
			if s, err = km.Load(ctx, rec.KeyRef); err != nil {
				return nil, fmt.Errorf("pki: load key of CA %s: %w", rec.ID, err)
			}
		}
		st, err := newCAState(rec, s)
		if err != nil {
			return nil, err
		}
		a.cas[rec.ID] = st
	}
	now := cfg.Now()
	err = a.store.ForEachRevoked(ctx, "", func(r Revoked) error {
		if r.NotAfter.Before(now) {
			return nil // expired: no relying party will accept it anyway
		}
		return a.revoked.load(r)
	})
	if err != nil {
		return nil, fmt.Errorf("pki: load revocations: %w", err)
	}
	for _, st := range a.cas {
		if st.rec.Kind == KindIssuing && st.signer != nil {
			if err := a.startIssuing(ctx, st); err != nil {
				return nil, err
			}
		}
	}
	return a, nil
}

func newCAState(rec CA, s crypto.Signer) (*caState, error) {
	cert, err := x509.ParseCertificate(rec.CertDER)
	if err != nil {
		return nil, fmt.Errorf("pki: CA %s: parse certificate: %w", rec.ID, err)
	}
	if s != nil && !publicKeysEqual(s.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("pki: CA %s: key does not match certificate", rec.ID)
	}
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(cert.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, fmt.Errorf("pki: CA %s: parse public key: %w", rec.ID, err)
	}
	n1 := sha1.Sum(cert.RawSubject)
	k1 := sha1.Sum(spki.PublicKey.RightAlign())
	n2 := sha256.Sum256(cert.RawSubject)
	k2 := sha256.Sum256(spki.PublicKey.RightAlign())
	return &caState{rec: rec, cert: cert, signer: s,
		nameHash1: n1[:], keyHash1: k1[:], nameHash256: n2[:], keyHash256: k2[:]}, nil
}

// startIssuing prepares the OCSP responder and the first CRL of an
// issuing CA.
func (a *Authority) startIssuing(ctx context.Context, st *caState) error {
	r, err := a.newResponder(ctx, st)
	if err != nil {
		return err
	}
	st.ocsp = r
	return a.refreshCRL(ctx, st)
}

// Revocations returns the in-memory revocation set; the MQTT gateway asks
// it on every connect and subscribes to it to cut sessions.
func (a *Authority) Revocations() *RevocationSet { return a.revoked }

// Run keeps CRLs, OCSP responder certificates and cached responses fresh
// and regenerates CRLs after revocations (bursts are coalesced: while one
// generation runs, further revocations only mark the CRL dirty). It returns
// when ctx is done.
func (a *Authority) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.MaintainInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.crlKick:
			for _, st := range a.issuingCAs() {
				if st.crlDirty.Swap(false) {
					if err := a.RefreshCRL(ctx, st.rec.ID); err != nil {
						st.crlDirty.Store(true)
						a.log.Error("pki: regenerate CRL", "ca", st.rec.ID, "err", err)
					}
				}
			}
		case <-t.C:
			if err := a.Maintain(ctx); err != nil {
				a.log.Error("pki: maintenance", "err", err)
			}
		}
	}
}

// Maintain renews whatever is due at the current time of the configured
// clock: CRLs with less than a third of their validity left (or marked
// dirty), OCSP responder certificates with less than a third left, and
// expired cached OCSP responses. Run calls it periodically; tests call it
// after moving their clock.
func (a *Authority) Maintain(ctx context.Context) error {
	now := a.cfg.Now()
	var errs []error
	for _, st := range a.issuingCAs() {
		snap := st.crl.Load()
		if st.crlDirty.Swap(false) || snap == nil || now.After(snap.nextUpdate.Add(-a.cfg.CRLValidity/3)) {
			if err := a.RefreshCRL(ctx, st.rec.ID); err != nil {
				st.crlDirty.Store(true)
				errs = append(errs, err)
			}
		}
		if st.ocsp != nil {
			if err := a.maintainResponder(ctx, st, now); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (a *Authority) issuingCAs() []*caState {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]*caState, 0, len(a.cas))
	for _, st := range a.cas {
		if st.rec.Kind == KindIssuing && st.signer != nil {
			out = append(out, st)
		}
	}
	return out
}

func (a *Authority) ca(id string) (*caState, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	st, ok := a.cas[id]
	return st, ok
}

// CAs returns the CA records of tenant ("" for all), oldest first.
func (a *Authority) CAs(tenant string) []CA {
	a.mu.RLock()
	defer a.mu.RUnlock()
	var out []CA
	for _, st := range a.cas {
		if tenant == "" || st.rec.Tenant == tenant {
			out = append(out, st.rec)
		}
	}
	sortCAs(out)
	return out
}

// CA returns the record of the CA with id.
func (a *Authority) CA(id string) (CA, bool) {
	st, ok := a.ca(id)
	if !ok {
		return CA{}, false
	}
	return st.rec, true
}

// ErrNoCA reports that a tenant has no usable CA for the operation.
var ErrNoCA = errors.New("pki: no such CA")

// ErrExists reports that a tenant already has CAs.
var ErrExists = errors.New("pki: tenant already has CAs")

// TenantCAs is the pair of CAs created for a tenant.
type TenantCAs struct {
	Root, Issuing CA
}

// CreateTenantCAs creates a tenant's root CA (self-signed, RootValidity,
// pathlen 1) and issuing CA (IssuingValidity, pathlen 0) with keys of alg
// generated by km. km must be the manager that Config.Keys returns for the
// tenant, or the keys cannot be loaded after a restart.
func (a *Authority) CreateTenantCAs(ctx context.Context, tenant string, alg Algorithm, km KeyManager) (TenantCAs, error) {
	if err := wire.ValidateTenantID(tenant); err != nil {
		return TenantCAs{}, err
	}
	if err := alg.Validate(); err != nil {
		return TenantCAs{}, err
	}
	if len(a.CAs(tenant)) > 0 {
		return TenantCAs{}, fmt.Errorf("%w: %s", ErrExists, tenant)
	}
	now := a.cfg.Now()
	rootID := newCAID()
	ref, key, err := km.Generate(ctx, alg, "ward/"+tenant+"/root/"+rootID)
	if err != nil {
		return TenantCAs{}, fmt.Errorf("pki: generate root key: %w", err)
	}
	tmpl := caTemplate(tenant, "Root CA", now, a.cfg.RootValidity, 1)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		_ = km.Destroy(ctx, ref)
		return TenantCAs{}, fmt.Errorf("pki: sign root certificate: %w", err)
	}
	root := CA{ID: rootID, Tenant: tenant, Kind: KindRoot, CertDER: der, KeyRef: ref, Status: CAActive, Created: now.UTC()}
	rootSt, err := newCAState(root, key)
	if err != nil {
		return TenantCAs{}, err
	}
	if err := a.store.PutCA(ctx, root); err != nil {
		_ = km.Destroy(ctx, ref)
		return TenantCAs{}, fmt.Errorf("pki: store root CA: %w", err)
	}
	a.mu.Lock()
	a.cas[rootID] = rootSt
	a.gen.Add(1)
	a.mu.Unlock()
	if err := a.audit(ctx, Event{Action: "ca.create", Tenant: tenant, CAID: rootID}); err != nil {
		return TenantCAs{}, err
	}
	iss, err := a.NewIssuingCA(ctx, tenant, alg, km, nil)
	if err != nil {
		return TenantCAs{}, err
	}
	return TenantCAs{Root: root, Issuing: iss}, nil
}

// NewIssuingCA creates a new issuing CA for tenant, signed by the tenant's
// root, and retires the previous issuing CA (it keeps serving CRL and OCSP).
// If the root is offline, rootKey must be the root key handed back (see
// [ParseKeyPEM]); it is used for this one signature and not kept.
func (a *Authority) NewIssuingCA(ctx context.Context, tenant string, alg Algorithm, km KeyManager, rootKey crypto.Signer) (CA, error) {
	if err := alg.Validate(); err != nil {
		return CA{}, err
	}
	root, err := a.tenantCA(tenant, KindRoot)
	if err != nil {
		return CA{}, err
	}
	signer := a.signerOf(root)
	if signer == nil {
		if rootKey == nil {
			return CA{}, fmt.Errorf("%w: the root CA of %s is offline; hand its key back to create an issuing CA", ErrNoCA, tenant)
		}
		if !publicKeysEqual(rootKey.Public(), root.cert.PublicKey) {
			return CA{}, errors.New("pki: the key handed back is not the root CA's key")
		}
		signer = rootKey
	}
	now := a.cfg.Now()
	id := newCAID()
	ref, key, err := km.Generate(ctx, alg, "ward/"+tenant+"/issuing/"+id)
	if err != nil {
		return CA{}, fmt.Errorf("pki: generate issuing key: %w", err)
	}
	validity := a.cfg.IssuingValidity
	if rem := root.cert.NotAfter.Sub(now); rem < validity {
		validity = rem // never outlive the root
	}
	tmpl := caTemplate(tenant, "Issuing CA", now, validity, 0)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, key.Public(), signer)
	if err != nil {
		_ = km.Destroy(ctx, ref)
		return CA{}, fmt.Errorf("pki: sign issuing certificate: %w", err)
	}
	rec := CA{ID: id, Tenant: tenant, Kind: KindIssuing, ParentID: root.rec.ID, CertDER: der, KeyRef: ref, Status: CAActive, Created: now.UTC()}
	st, err := newCAState(rec, key)
	if err != nil {
		return CA{}, err
	}
	if err := a.store.PutCA(ctx, rec); err != nil {
		_ = km.Destroy(ctx, ref)
		return CA{}, fmt.Errorf("pki: store issuing CA: %w", err)
	}
	if err := a.startIssuing(ctx, st); err != nil {
		return CA{}, err
	}
	a.mu.Lock()
	var old []*caState
	for _, o := range a.cas {
		if o.rec.Tenant == tenant && o.rec.Kind == KindIssuing && o.rec.Status == CAActive {
			old = append(old, o)
		}
	}
	a.cas[id] = st
	a.gen.Add(1)
	a.mu.Unlock()
	for _, o := range old {
		upd := o.rec
		upd.Status = CARetired
		if err := a.store.UpdateCA(ctx, upd); err != nil {
			return CA{}, fmt.Errorf("pki: retire issuing CA %s: %w", o.rec.ID, err)
		}
		a.mu.Lock()
		o.rec = upd
		a.mu.Unlock()
	}
	if err := a.audit(ctx, Event{Action: "ca.create", Tenant: tenant, CAID: id}); err != nil {
		return CA{}, err
	}
	return rec, nil
}

// ExportRootKey returns the tenant root CA's private key as PKCS#8 PEM, to
// be stored offline before [Authority.RootOffline]. Keys in an HSM yield
// ErrNotExportable. The result is a secret: never log it.
func (a *Authority) ExportRootKey(ctx context.Context, tenant string) ([]byte, error) {
	root, err := a.tenantCA(tenant, KindRoot)
	if err != nil {
		return nil, err
	}
	s := a.signerOf(root)
	if s == nil {
		return nil, fmt.Errorf("%w: the root CA of %s is already offline", ErrNoCA, tenant)
	}
	return exportKeyPEM(s)
}

// RootOffline removes the tenant root key from the server: the key manager
// destroys it and the record forgets its ref. exportedPEM must be the key as
// returned by ExportRootKey; requiring it proves the operator holds a copy,
// so the root cannot be lost by accident. Issuance continues with the
// issuing CA.
func (a *Authority) RootOffline(ctx context.Context, tenant string, km KeyManager, exportedPEM []byte) error {
	root, err := a.tenantCA(tenant, KindRoot)
	if err != nil {
		return err
	}
	if a.signerOf(root) == nil {
		return fmt.Errorf("%w: the root CA of %s is already offline", ErrNoCA, tenant)
	}
	k, err := ParseKeyPEM(exportedPEM)
	if err != nil {
		return err
	}
	if !publicKeysEqual(k.Public(), root.cert.PublicKey) {
		return errors.New("pki: the exported key does not match the root CA; refusing to take the root offline")
	}
	upd := root.rec
	upd.KeyRef = nil
	upd.Status = CAOffline
	if err := a.store.UpdateCA(ctx, upd); err != nil {
		return fmt.Errorf("pki: update root CA: %w", err)
	}
	if err := km.Destroy(ctx, root.rec.KeyRef); err != nil {
		return fmt.Errorf("pki: destroy root key: %w", err)
	}
	a.mu.Lock()
	root.rec = upd
	root.signer = nil
	a.mu.Unlock()
	return a.audit(ctx, Event{Action: "ca.offline", Tenant: tenant, CAID: root.rec.ID})
}

// tenantCA returns the newest active (or, for roots, offline) CA of a kind.
func (a *Authority) tenantCA(tenant string, kind CAKind) (*caState, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	var best *caState
	for _, st := range a.cas {
		if st.rec.Tenant != tenant || st.rec.Kind != kind || st.rec.Status == CARetired {
			continue
		}
		if best == nil || st.rec.Created.After(best.rec.Created) || (st.rec.Created.Equal(best.rec.Created) && st.rec.ID > best.rec.ID) {
			best = st
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: tenant %s has no %s CA", ErrNoCA, tenant, kind)
	}
	return best, nil
}

// signerOf reads st.signer, which RootOffline clears under a.mu.
func (a *Authority) signerOf(st *caState) crypto.Signer {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return st.signer
}

func (a *Authority) audit(ctx context.Context, e Event) error {
	if a.cfg.Auditor == nil {
		return nil
	}
	if err := a.cfg.Auditor.Audit(ctx, e); err != nil {
		return fmt.Errorf("pki: audit %s: %w", e.Action, err)
	}
	return nil
}

func newCAID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b[:])
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// DropTenant forgets a deleted tenant's CAs: nothing more is issued, and
// their CRLs and OCSP answers stop being served. The caller has deleted
// the records (and destroyed the tenant data key that sealed file-mode
// keys) first.
func (a *Authority) DropTenant(tenant string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, st := range a.cas {
		if st.rec.Tenant == tenant {
			delete(a.cas, id)
			a.gen.Add(1)
		}
	}
}

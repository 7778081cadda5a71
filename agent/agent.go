package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/wire"
)

// Renewal schedule. A certificate is renewed at RenewFraction of its
// lifetime plus a random jitter, so that a fleet enrolled in one afternoon
// does not renew in the same second; failures are retried with jittered
// exponential backoff between RenewBackoffMin and RenewBackoffMax.
const (
	// RenewFraction is the point of the lifetime where renewal starts:
	// late enough not to waste certificates, early enough to leave a third
	// of the lifetime for retries through server outages.
	RenewFraction = 2.0 / 3.0
	// RenewJitterFraction bounds the random delay added to the renewal
	// time, as a fraction of the lifetime.
	RenewJitterFraction = 0.05
	// RenewBackoffMin is the base of the retry delay: the first retry
	// after a failed renewal comes within RenewBackoffMin.
	RenewBackoffMin = 30 * time.Second
	// RenewBackoffMax caps the retry delay, so that a device whose server
	// was down for a day tries again within the hour it comes back.
	RenewBackoffMax = time.Hour
	// cleanupWindow is how many generations around the current one New
	// looks at for keys left by an interrupted renewal.
	cleanupWindow = 4
)

// Identity is an enrolled device's credential. Certificates are parsed;
// the private key stays in the keystore under KeyName.
type Identity struct {
	Tenant, Device string
	// Generation counts certificates: 1 after enrollment, +1 per renewal.
	Generation uint64
	// KeyName is the key's name in the keystore, "device-<Generation>".
	KeyName string
	// Certificate is the device certificate.
	Certificate *x509.Certificate
	// Chain is what the device presents in TLS: Certificate first, then
	// intermediates, without the root.
	Chain []*x509.Certificate
	// CACerts is the issuing CA's chain as served by the cacerts
	// operation, against which Certificate was verified.
	CACerts []*x509.Certificate
}

func (s *state) identity() *Identity {
	return &Identity{
		Tenant: s.Tenant, Device: s.Device, Generation: s.Generation, KeyName: s.Key,
		Certificate: s.leaf(), Chain: s.chain, CACerts: s.caCerts,
	}
}

// Enroll obtains the device's first certificate with a bootstrap
// credential: it fetches the CA certificates, generates a new key in the
// keystore, sends a CSR to simpleenroll, verifies the certificate and
// saves the identity in StateDir. If the server answers 202 (pending
// approval) Enroll waits as told by Retry-After and tries again until ctx
// ends. It returns an error wrapping [ErrAlreadyEnrolled] if StateDir
// already holds an identity.
func Enroll(ctx context.Context, cfg Config, cred Credential) (*Identity, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if cred == nil {
		return nil, errors.New("agent: Enroll needs a credential")
	}
	if err := prepareStateDir(r.StateDir); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	switch _, err := readState(r.StateDir); {
	case err == nil:
		return nil, fmt.Errorf("agent: %w: %s exists in %s", ErrAlreadyEnrolled, StateFile, r.StateDir)
	case !errors.Is(err, ErrNotEnrolled):
		return nil, fmt.Errorf("agent: %w", err)
	}
	removeTempFiles(r.StateDir)
	c := newESTClient(r)
	defer c.close()
	log := r.Logger.With("tenant", r.Tenant, "device", r.Device)

	caCerts, err := c.caCerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	ks := r.Keystore
	name := keyName(1)
	// With no state file, a key of generation 1 can only be left from an
	// interrupted enrollment: nothing uses it.
	if err := deleteIfExists(ctx, ks, name); err != nil {
		return nil, fmt.Errorf("agent: removing the key of an interrupted enrollment: %w", err)
	}
	key, err := ks.Generate(ctx, name, r.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("agent: generating the device key: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			ks.Delete(context.WithoutCancel(ctx), name)
		}
	}()
	if p, ok := cred.(preparer); ok {
		// Challenge-response mechanisms (TPM) run their first round
		// now, with the new key, and yield the credential to present.
		if cred, err = p.prepare(ctx, r, c, key); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	csr, err := enrollCSR(r.Rand, key, r.Tenant, r.Device)
	if err != nil {
		return nil, fmt.Errorf("agent: signing the CSR: %w", err)
	}
	var leaf *x509.Certificate
	for {
		ac := &authContext{tenant: r.Tenant, device: r.Device, label: r.label(), now: r.Clock.Now(), rand: r.Rand}
		leaf, err = c.enroll(ctx, wire.ESTSimpleEnroll, csr, cred, ac, nil)
		var se *ServerError
		if !errors.As(err, &se) || se.Status != http.StatusAccepted {
			break
		}
		log.Info("enrollment pending approval", "retry_in", se.RetryAfter)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("agent: %w (gave up: %w)", err, ctx.Err())
		case <-r.Clock.After(se.RetryAfter):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	now := r.Clock.Now()
	chain, err := verifyIssued(leaf, key.Public(), r.Tenant, r.Device, caCerts, now)
	if err != nil {
		return nil, fmt.Errorf("agent: simpleenroll: %w: %w", ErrBadResponse, err)
	}
	st := &state{
		stateFile: stateFile{
			Version: stateVersion, Tenant: r.Tenant, Device: r.Device, Label: r.label(),
			Server: r.base.String(), ServerCA: string(r.CABundle), Keystore: ks.Kind(),
			Key: name, Generation: 1, EnrolledAt: now.UTC(),
		},
		chain: chain, caCerts: caCerts,
	}
	ok, err := writeState(r.StateDir, st, nop)
	committed = ok
	if err != nil {
		if !ok {
			return nil, fmt.Errorf("agent: %w", err)
		}
		log.Warn("state saved but not yet durable", "err", err)
	}
	log.Info("enrolled", "serial", serialHex(leaf), "not_after", leaf.NotAfter, "key", name)
	return st.identity(), nil
}

func nop(string) {}

// deleteIfExists deletes a key, treating "not found" as done.
func deleteIfExists(ctx context.Context, ks keystore.Keystore, name string) error {
	if err := ks.Delete(ctx, name); err != nil && !errors.Is(err, keystore.ErrNotFound) {
		return err
	}
	return nil
}

// Agent keeps an enrolled device's credential fresh and serves it to TLS
// clients. Its methods are safe for concurrent use.
type Agent struct {
	cfg  *resolved
	est  *estClient
	log  *slog.Logger
	hook func(step string) // crash-test hook; nop in production
	wake chan struct{}     // tells Run the schedule changed

	renewMu sync.Mutex // serialises renewals; taken before mu

	mu       sync.Mutex
	st       *state
	key      keystore.Key
	tlsCert  *tls.Certificate
	next     time.Time // next renewal attempt
	failures int       // consecutive failed attempts
	lastErr  error

	// renewalAttest, set by Conn.ServeAttestation, attests the new key
	// before simplereenroll.
	renewalAttest func(ctx context.Context, spki []byte) error

	macSt   macState  // telemetry MAC secret and epoch
	seqOnce sync.Once // telemetry sequence numbers
	seq     *sequencer
	seqErr  error
}

// New loads the identity saved in cfg.StateDir and its key. Fields of cfg
// left empty (Server, CABundle, Tenant, Device, Label) are taken from the
// saved identity; fields that are set must match it. New also removes
// what an interrupted renewal may have left: temporary state files, a
// next-generation key that never got its certificate, and an old key whose
// deletion did not happen. It returns an error wrapping [ErrNotEnrolled]
// when there is no identity yet.
func New(cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("agent: invalid configuration: no state directory configured")
	}
	st, err := readState(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	for _, f := range []struct {
		name      string
		cfg       *string
		saved     string
		mustMatch bool
	}{
		{"tenant", &cfg.Tenant, st.Tenant, true},
		{"device", &cfg.Device, st.Device, true},
		{"label", &cfg.Label, st.Label, true},
		{"server", &cfg.Server, st.Server, false},
	} {
		switch {
		case *f.cfg == "":
			*f.cfg = f.saved
		case f.mustMatch && *f.cfg != f.saved:
			return nil, fmt.Errorf("agent: configured %s %q differs from the enrolled %s %q in %s", f.name, *f.cfg, f.name, f.saved, cfg.StateDir)
		}
	}
	if len(cfg.CABundle) == 0 {
		cfg.CABundle = []byte(st.ServerCA)
	}
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: r, est: newESTClient(r), log: r.Logger.With("tenant", st.Tenant, "device", st.Device), hook: nop, wake: make(chan struct{}, 1)}
	ctx := context.Background()
	removeTempFiles(r.StateDir)
	a.cleanupKeys(ctx, st.Generation)

	key, err := r.Keystore.Load(ctx, st.Key)
	if errors.Is(err, keystore.ErrNotFound) {
		return nil, fmt.Errorf("agent: %w: the key %s named in %s is not in the %s keystore; enroll again", ErrBadState, st.Key, StateFile, r.Keystore.Kind())
	}
	if err != nil {
		return nil, fmt.Errorf("agent: loading key %s: %w", st.Key, err)
	}
	// Check the chain's structure at a time it was valid; expiry is not a
	// reason to refuse to start, since renewal may still succeed and
	// Status reports it.
	if _, err := verifyIssued(st.leaf(), key.Public(), st.Tenant, st.Device, st.caCerts, st.leaf().NotBefore); err != nil {
		return nil, fmt.Errorf("agent: %w: %w", ErrBadState, err)
	}
	a.install(st, key)
	if now := r.Clock.Now(); now.After(st.leaf().NotAfter) {
		a.log.Warn("certificate expired; renewal will probably be refused, enroll again with a bootstrap credential", "not_after", st.leaf().NotAfter)
	}
	return a, nil
}

// cleanupKeys deletes keys of generations other than gen near it: keys of
// later generations were generated by a renewal that did not finish; keys
// of earlier ones belong to certificates already replaced.
func (a *Agent) cleanupKeys(ctx context.Context, gen uint64) {
	for g := gen + 1; g <= gen+cleanupWindow; g++ {
		a.deleteStale(ctx, g)
	}
	for g := gen - 1; g >= 1 && g+cleanupWindow >= gen; g-- {
		a.deleteStale(ctx, g)
	}
}

func (a *Agent) deleteStale(ctx context.Context, gen uint64) {
	name := keyName(gen)
	err := a.cfg.Keystore.Delete(ctx, name)
	switch {
	case err == nil:
		a.log.Info("removed a key left by an interrupted renewal", "key", name)
	case !errors.Is(err, keystore.ErrNotFound):
		a.log.Warn("could not remove a stale key", "key", name, "err", err)
	}
}

// install makes st and key the current credential and schedules renewal.
func (a *Agent) install(st *state, key keystore.Key) {
	raw := make([][]byte, len(st.chain))
	for i, c := range st.chain {
		raw[i] = c.Raw
	}
	cert := &tls.Certificate{Certificate: raw, PrivateKey: key, Leaf: st.leaf()}
	next := renewalTime(st.leaf(), a.jitter(lifetime(st.leaf())))
	a.mu.Lock()
	a.st, a.key, a.tlsCert = st, key, cert
	a.next, a.failures, a.lastErr = next, 0, nil
	a.mu.Unlock()
}

func lifetime(c *x509.Certificate) time.Duration { return c.NotAfter.Sub(c.NotBefore) }

// renewalTime is when a certificate should be renewed, before jitter.
func renewalTime(c *x509.Certificate, jitter time.Duration) time.Time {
	return c.NotBefore.Add(time.Duration(float64(lifetime(c))*RenewFraction) + jitter)
}

// jitter returns a random duration in [0, RenewJitterFraction*life).
func (a *Agent) jitter(life time.Duration) time.Duration {
	return a.randDuration(time.Duration(float64(life) * RenewJitterFraction))
}

// randDuration returns a random duration in [0, d).
func (a *Agent) randDuration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	var b [8]byte
	if _, err := a.cfg.Rand.Read(b[:]); err != nil {
		return d / 2
	}
	return time.Duration(binary.BigEndian.Uint64(b[:]) % uint64(d))
}

// backoff returns the wait before retry number n (n >= 1) of a failed
// renewal: exponential from RenewBackoffMin, capped at RenewBackoffMax,
// with "equal jitter" (half fixed, half random), so that waits do not
// shrink from one attempt to the next below the cap, yet a fleet that
// failed together spreads out. Near expiry the wait is also capped at a quarter of the
// remaining lifetime, so the last hours are not slept through.
func (a *Agent) backoff(n int, notAfter, now time.Time) time.Duration {
	d := RenewBackoffMax
	if n < 20 {
		d = min(RenewBackoffMin<<(n-1), RenewBackoffMax)
	}
	d = d/2 + a.randDuration(d/2+1)
	if rem := notAfter.Sub(now) / 4; rem >= RenewBackoffMin && d > rem {
		d = rem
	}
	return d
}

// Run renews the certificate when it is due, until ctx ends, and returns
// ctx's error. A failed renewal never affects the current credential: it
// is retried with backoff and the credential stays in use until a new one
// is saved.
func (a *Agent) Run(ctx context.Context) error {
	clock := a.cfg.Clock
	for {
		a.mu.Lock()
		next := a.next
		a.mu.Unlock()
		if d := next.Sub(clock.Now()); d > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-clock.After(d):
			case <-a.wake:
			}
			continue
		}
		a.Renew(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Renew renews the certificate now, whatever the schedule, with a new key
// (renewal is key rotation). On failure the current credential stays and
// the next attempt is scheduled with backoff (or after the server's
// Retry-After for a 202).
func (a *Agent) Renew(ctx context.Context) error {
	a.renewMu.Lock()
	defer a.renewMu.Unlock()
	err := a.renew(ctx)
	if err != nil {
		now := a.cfg.Clock.Now()
		a.mu.Lock()
		a.failures++
		a.lastErr = err
		var se *ServerError
		if errors.As(err, &se) && se.RetryAfter > 0 {
			a.next = now.Add(se.RetryAfter)
		} else {
			a.next = now.Add(a.backoff(a.failures, a.st.leaf().NotAfter, now))
		}
		next, n := a.next, a.failures
		a.mu.Unlock()
		a.log.Warn("renewal failed; keeping the current certificate", "err", err, "attempt", n, "next_attempt", next)
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return err
}

// renew does one renewal attempt. The order of steps is what makes a
// crash at any point recoverable: the state file names the old key until
// the new certificate and key are both durable, and the old key is
// destroyed only after that.
func (a *Agent) renew(ctx context.Context) error {
	a.mu.Lock()
	cur, tlsCert := a.st, a.tlsCert
	a.mu.Unlock()
	ks := a.cfg.Keystore

	caCerts, err := a.est.caCerts(ctx)
	if err != nil {
		return err
	}
	gen := cur.Generation + 1
	name := keyName(gen)
	if err := deleteIfExists(ctx, ks, name); err != nil {
		return fmt.Errorf("removing stale key %s: %w", name, err)
	}
	key, err := ks.Generate(ctx, name, a.cfg.Algorithm)
	if err != nil {
		return fmt.Errorf("generating key %s: %w", name, err)
	}
	a.hook("key-generated")
	committed := false
	defer func() {
		if !committed {
			if err := ks.Delete(context.WithoutCancel(ctx), name); err != nil {
				a.log.Warn("could not remove the unused new key; it will be removed at next start", "key", name, "err", err)
			}
		}
	}()
	a.mu.Lock()
	attestFn := a.renewalAttest
	a.mu.Unlock()
	if attestFn != nil {
		// The server may require a fresh pass bound to the new key; it
		// decides, so a failed attestation is only logged here and the
		// server's refusal, if any, is the renewal's error.
		spki, err := spkiOf(key.Public())
		if err != nil {
			return err
		}
		if err := attestFn(ctx, spki); err != nil {
			a.log.Warn("attestation before renewal did not pass", "err", err)
		}
	}
	csr, err := reenrollCSR(a.cfg.Rand, key, cur.leaf())
	if err != nil {
		return fmt.Errorf("signing the CSR: %w", err)
	}
	a.hook("csr-signed")
	leaf, err := a.est.enroll(ctx, wire.ESTSimpleReenroll, csr, nil, nil, tlsCert)
	if err != nil {
		return err
	}
	a.hook("reenrolled")
	now := a.cfg.Clock.Now()
	chain, err := verifyIssued(leaf, key.Public(), cur.Tenant, cur.Device, caCerts, now)
	if err != nil {
		return fmt.Errorf("simplereenroll: %w: %w", ErrBadResponse, err)
	}
	next := &state{stateFile: cur.stateFile, chain: chain, caCerts: caCerts}
	next.Generation, next.Key, next.RenewedAt = gen, name, now.UTC()
	committed, err = writeState(a.cfg.StateDir, next, a.hook)
	if err != nil {
		if !committed {
			return err
		}
		a.log.Warn("state saved but not yet durable", "err", err)
	}
	a.hook("state-written")
	a.install(next, key)
	a.log.Info("renewed", "serial", serialHex(leaf), "not_after", leaf.NotAfter, "key", name)

	// Only now is the old key garbage. If this fails or the process dies
	// first, New deletes it at the next start.
	if err := ks.Delete(context.WithoutCancel(ctx), cur.Key); err != nil && !errors.Is(err, keystore.ErrNotFound) {
		a.log.Warn("could not delete the old key; it will be deleted at next start", "key", cur.Key, "err", err)
	}
	a.hook("old-key-deleted")
	return nil
}

// TLSCertificate returns the current credential for a TLS client. Call it
// for each new connection: renewal replaces it.
func (a *Agent) TLSCertificate() *tls.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tlsCert
}

// GetClientCertificate has the signature of tls.Config.GetClientCertificate,
// so every handshake uses the credential current at that moment.
func (a *Agent) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return a.TLSCertificate(), nil
}

// Identity returns the current identity.
func (a *Agent) Identity() *Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st.identity()
}

// Close releases network connections. It does not close the keystore,
// which belongs to the caller.
func (a *Agent) Close() error {
	a.est.close()
	return nil
}

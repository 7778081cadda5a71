package attest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"time"

	gattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/wardiot/ward/wire"
)

const (
	// NonceSize is the size of a challenge nonce: 32 random bytes, the
	// size of the SHA-256 PCR bank's digests and within TPM2B_DATA.
	NonceSize = 32
	// MaxPendingChallenges bounds outstanding challenges per device so a
	// device (or a confused scheduler) cannot grow the store.
	MaxPendingChallenges = 4
)

// ErrChallenge is wrapped when evidence answers no outstanding challenge
// of the device: unknown, already answered or expired. No verdict is
// recorded; the server may issue a new challenge.
var ErrChallenge = errors.New("evidence does not answer an outstanding challenge")

// RefKeys returns a tenant's reference-value signing key (Ed25519 or
// ECDSA public key).
type RefKeys interface {
	RefValueKey(ctx context.Context, tenant string) (crypto.PublicKey, error)
}

// Config builds a Verifier.
type Config struct {
	Store Store
	// EKRoots are the registered TPM manufacturer roots; EK certificates
	// must chain to one. EKIntermediates are manufacturers' issuing CAs.
	EKRoots         *x509.CertPool
	EKIntermediates *x509.CertPool
	RefKeys         RefKeys
	// Now defaults to time.Now.
	Now func() time.Time
	// Rand defaults to crypto/rand.
	Rand io.Reader
}

// Verifier issues challenges, enrolls AKs and appraises evidence.
type Verifier struct {
	store   Store
	roots   *x509.CertPool
	inter   *x509.CertPool
	refKeys RefKeys
	now     func() time.Time
	rand    io.Reader
}

// New validates cfg and returns a Verifier.
func New(cfg Config) (*Verifier, error) {
	if cfg.Store == nil || cfg.RefKeys == nil {
		return nil, errors.New("attest: Config needs Store and RefKeys")
	}
	v := &Verifier{store: cfg.Store, roots: cfg.EKRoots, inter: cfg.EKIntermediates,
		refKeys: cfg.RefKeys, now: cfg.Now, rand: cfg.Rand}
	if v.now == nil {
		v.now = time.Now
	}
	if v.rand == nil {
		v.rand = rand.Reader
	}
	return v, nil
}

// ImportRefValues verifies doc's signature with the tenant's key and
// stores it; devices of its hardware model running its release are then
// appraised against it. Importing is what approves a release.
func (v *Verifier) ImportRefValues(ctx context.Context, tenant string, doc, sig []byte) (*RefValues, error) {
	r, err := ParseRefValues(doc)
	if err != nil {
		return nil, err
	}
	key, err := v.refKeys.RefValueKey(ctx, tenant)
	if err != nil {
		return nil, fmt.Errorf("reference-value key of tenant: %w", err)
	}
	if err := verifyRefSignature(r, sig, key); err != nil {
		return nil, err
	}
	r.Tenant = tenant
	r.Signature = append([]byte(nil), sig...)
	r.Imported = v.now()
	if err := v.store.PutRefValues(ctx, *r); err != nil {
		return nil, err
	}
	return r, nil
}

func (v *Verifier) randomID() (string, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(v.rand, b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// releases returns the reference values to appraise dev against:
// current release first, then the previous approved one.
func (v *Verifier) releases(ctx context.Context, dev Device) ([]*RefValues, []string, error) {
	var out []*RefValues
	var missing []string
	for _, rel := range []string{dev.Release, dev.PreviousRelease} {
		if rel == "" {
			continue
		}
		r, err := v.store.RefValues(ctx, dev.Tenant, dev.HWModel, rel)
		if errors.Is(err, ErrNotFound) {
			missing = append(missing, fmt.Sprintf("no approved reference values for %s release %s", dev.HWModel, rel))
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		out = append(out, &r)
	}
	return out, missing, nil
}

// NewChallenge makes a scheduled attestation challenge: a fresh 32-byte
// nonce, the policy PCRs of the device's releases, the policy's TTL.
func (v *Verifier) NewChallenge(ctx context.Context, dev Device) (*wire.AttestChallenge, error) {
	nonce := make([]byte, NonceSize)
	if _, err := io.ReadFull(v.rand, nonce); err != nil {
		return nil, err
	}
	return v.challenge(ctx, dev, nonce, nil, nil)
}

// RenewalChallenge makes a challenge that binds the key of the CSR the
// device will renew with: nonce = SHA-256(server nonce || csrSPKI). A
// pass on it lets RenewalAllowed accept that CSR.
func (v *Verifier) RenewalChallenge(ctx context.Context, dev Device, csrSPKI []byte) (*wire.AttestChallenge, error) {
	if len(csrSPKI) == 0 {
		return nil, errors.New("attest: renewal challenge needs the CSR's public key")
	}
	server := make([]byte, NonceSize)
	if _, err := io.ReadFull(v.rand, server); err != nil {
		return nil, err
	}
	h := sha256.Sum256(csrSPKI)
	return v.challenge(ctx, dev, wire.RenewalNonce(server, csrSPKI), server, h[:])
}

func (v *Verifier) challenge(ctx context.Context, dev Device, nonce, server, bound []byte) (*wire.AttestChallenge, error) {
	p, err := v.policy(ctx, dev)
	if err != nil {
		return nil, err
	}
	refs, _, err := v.releases(ctx, dev)
	if err != nil {
		return nil, err
	}
	pcrSet := map[int]bool{}
	var pcrs []int
	for _, r := range refs {
		for _, p := range r.PolicyPCRs() {
			if !pcrSet[p] {
				pcrSet[p] = true
				pcrs = append(pcrs, p)
			}
		}
	}
	id, err := v.randomID()
	if err != nil {
		return nil, err
	}
	now := v.now()
	c := Challenge{Tenant: dev.Tenant, Device: dev.ID, ID: id, Nonce: nonce, PCRs: pcrs,
		Expires: now.Add(p.ChallengeTTL), BoundSPKI: bound}
	if err := v.store.PutChallenge(ctx, c, now, MaxPendingChallenges); err != nil {
		return nil, err
	}
	return &wire.AttestChallenge{ID: id, Nonce: nonce, ServerNonce: server, PCRs: pcrs, Expires: c.Expires}, nil
}

// Verify appraises evidence against the challenge it answers, records
// the result and returns the verdict with the policy's quarantine
// decision. An error means no appraisal took place: ErrChallenge for
// evidence answering no outstanding challenge, or a store failure.
func (v *Verifier) Verify(ctx context.Context, dev Device, ev *wire.AttestEvidence) (Verdict, error) {
	ch, err := v.store.TakeChallenge(ctx, dev.Tenant, dev.ID, ev.ChallengeID)
	if errors.Is(err, ErrNotFound) {
		return Verdict{}, fmt.Errorf("%w: unknown or already answered", ErrChallenge)
	}
	if err != nil {
		return Verdict{}, err
	}
	now := v.now()
	if now.After(ch.Expires) {
		return Verdict{}, fmt.Errorf("%w: expired at %s", ErrChallenge, ch.Expires.UTC().Format(time.RFC3339))
	}
	pol, err := v.policy(ctx, dev)
	if err != nil {
		return Verdict{}, err
	}
	var a *appraisal
	switch {
	case ev.TPM != nil:
		a, err = v.verifyTPM(ctx, dev, ch, ev.TPM)
	case ev.Software != nil:
		a, err = v.verifySoftware(ctx, dev, ch, ev.Software, pol)
	default:
		a = &appraisal{assurance: AssuranceTPM}
		a.fail("evidence has neither a TPM quote nor a software report")
	}
	if err != nil {
		return Verdict{}, err
	}
	vd := a.verdict(now)
	vd.Quarantine = vd.Result == Fail && pol.QuarantineOnFailure
	res := Result{Tenant: dev.Tenant, Device: dev.ID, ChallengeID: ch.ID, Verdict: vd,
		BoundSPKI: ch.BoundSPKI, Summary: a.summary}
	if err := v.store.PutResult(ctx, res); err != nil {
		return Verdict{}, err
	}
	return vd, nil
}

// appraisal collects the outcome of the checks.
type appraisal struct {
	fails, flags []string
	release      string
	assurance    Assurance
	tpmVerified  bool
	counters     Counters
	summary      EvidenceSummary
}

func (a *appraisal) fail(format string, args ...any) {
	a.fails = append(a.fails, fmt.Sprintf(format, args...))
}

func (a *appraisal) flag(format string, args ...any) {
	a.flags = append(a.flags, fmt.Sprintf(format, args...))
}

func (a *appraisal) verdict(now time.Time) Verdict {
	v := Verdict{Result: Pass, Release: a.release, Assurance: a.assurance, TPMVerified: a.tpmVerified, Time: now}
	v.Reasons = append(append(v.Reasons, a.fails...), a.flags...)
	switch {
	case len(a.fails) > 0:
		v.Result = Fail
		v.Release = ""
	case len(a.flags) > 0:
		v.Result = Flag
	}
	if a.assurance == AssuranceSoftware {
		v.Reasons = append(v.Reasons, "low assurance: software report signed by the device key, not TPM-verified")
	}
	if len(v.Reasons) > wire.MaxReasons {
		v.Reasons = v.Reasons[:wire.MaxReasons]
	}
	return v
}

// verifyTPM runs the TPM-tier checks in the order that makes each step
// rely only on what the previous ones established.
func (v *Verifier) verifyTPM(ctx context.Context, dev Device, ch Challenge, ev *wire.TPMEvidence) (*appraisal, error) {
	a := &appraisal{assurance: AssuranceTPM}
	// 1. The enrolled AK only.
	ak, err := v.store.AK(ctx, dev.Tenant, dev.ID)
	if errors.Is(err, ErrNotFound) {
		a.fail("no enrolled attestation key: enroll the AK first")
		return a, nil
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(ak.Public, ev.AKPublic) != 1 {
		a.fail("evidence is signed by an attestation key other than the enrolled one")
		return a, nil
	}
	refs, missing, err := v.releases(ctx, dev)
	if err != nil {
		return nil, err
	}
	appraiseTPM(a, ak.Public, ch.Nonce, ev, refs, missing)
	if !a.tpmVerified {
		return a, nil
	}
	// Clock rules: against the highest counters seen in verified quotes.
	prev, found, err := v.store.AdvanceCounters(ctx, dev.Tenant, dev.ID, a.counters)
	if err != nil {
		return nil, err
	}
	if found {
		checkClock(a, prev, a.counters)
	} else if !a.counters.Safe {
		a.flag("TPM clock not safe (Safe=0): the TPM lost power without an orderly shutdown")
	}
	return a, nil
}

// appraiseTPM is the CPU-bound part of verification: quote, replay and
// reference values. It sets a.tpmVerified when the quote verified.
func appraiseTPM(a *appraisal, akPublic, nonce []byte, ev *wire.TPMEvidence, refs []*RefValues, missing []string) {
	// Quote, signature and log bytes come from the device and reach
	// third-party parsers; a fault there fails the evidence, never the server.
	defer func() {
		if r := recover(); r != nil {
			a.tpmVerified = false
			a.fail("evidence could not be processed (parser fault)")
		}
	}()
	akHash := sha256.Sum256(akPublic)
	a.summary.AKHash = akHash[:]
	a.summary.TPMInfo = fmt.Sprintf("%s %s fw %d.%d", ev.Info.Manufacturer, ev.Info.VendorInfo, ev.Info.FirmwareMajor, ev.Info.FirmwareMinor)
	pub, err := gattest.ParseAKPublic(akPublic)
	if err != nil {
		a.fail("enrolled AK does not parse: %v", err)
		return
	}
	// 2. Quote signature and nonce.
	quotes := make([]gattest.Quote, len(ev.Quotes))
	for i, q := range ev.Quotes {
		quotes[i] = gattest.Quote{Quote: q.Quote, Signature: q.Signature}
	}
	pcrs := make([]gattest.PCR, 0, len(ev.PCRs))
	for _, p := range ev.PCRs {
		h, ok := wireHashes[p.Alg]
		if !ok {
			a.fail("PCR %d: unknown bank %q", p.Index, p.Alg)
			return
		}
		pcrs = append(pcrs, gattest.PCR{Index: p.Index, Digest: p.Digest, DigestAlg: h})
	}
	if err := pub.VerifyAll(quotes, pcrs, nonce); err != nil {
		a.fail("quote does not verify with the enrolled AK and this challenge's nonce: %v", err)
		return
	}
	// Clock info from the signed quote, never from the device's claims.
	att, err := tpm2.DecodeAttestationData(ev.Quotes[0].Quote)
	if err != nil {
		a.fail("quote: %v", err)
		return
	}
	a.tpmVerified = true
	a.counters = Counters{Clock: att.ClockInfo.Clock, ResetCount: att.ClockInfo.ResetCount,
		RestartCount: att.ClockInfo.RestartCount, Safe: att.ClockInfo.Safe == 1}
	a.summary.Counters = a.counters

	// 3. Only quote-verified PCRs of the SHA-256 bank (the bank the
	// reference values use) go into the replay, and of those only the
	// policy PCRs: events on other PCRs are never used, so replaying them
	// would only cost time.
	var policy [24]bool
	for _, r := range refs {
		for _, p := range r.PolicyPCRs() {
			policy[p] = true
		}
	}
	verified := make([]gattest.PCR, 0, 24)
	values := map[int][]byte{}
	for _, p := range pcrs {
		if p.QuoteVerified() && p.DigestAlg == crypto.SHA256 && p.Index >= 0 && p.Index < len(policy) &&
			(len(refs) == 0 || policy[p.Index]) {
			verified = append(verified, p)
			values[p.Index] = p.Digest
		}
	}
	// 4. Event-log replay.
	events, err := replayLog(ev.EventLog, verified)
	if err != nil {
		a.fail("%v", err)
		return
	}
	a.summary.Events = len(events)
	byPCR := map[int][]gattest.Event{}
	for _, e := range events {
		byPCR[e.Index] = append(byPCR[e.Index], e)
	}
	if len(refs) == 0 {
		for _, m := range missing {
			a.fail("%s", m)
		}
		if len(missing) == 0 {
			a.fail("device has no release on record: nothing to appraise against")
		}
		return
	}
	// 5-7 against the current release, then the previous approved one.
	var first []string
	for i, r := range refs {
		reasons := checkRelease(r, byPCR, values)
		if len(reasons) == 0 {
			a.release = r.Release
			a.summary.PCRs = map[int][]byte{}
			for _, p := range r.PolicyPCRs() {
				a.summary.PCRs[p] = values[p]
			}
			return
		}
		if i == 0 {
			first = reasons
		}
	}
	a.fails = append(a.fails, missing...)
	a.fails = append(a.fails, first...)
	if len(refs) > 1 {
		a.fail("previous release %s does not match either", refs[1].Release)
	}
}

var wireHashes = map[string]crypto.Hash{
	"sha1": crypto.SHA1, "sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512,
}

// replayLog parses a device-supplied event log and replays it against
// quote-verified PCRs. A device with a genuine TPM controls the log bytes,
// so a panic in the third-party parser is turned into a failure here
// rather than taking the server down.
func replayLog(log []byte, pcrs []gattest.PCR) (events []gattest.Event, err error) {
	if len(log) > wire.MaxEventLogSize {
		return nil, fmt.Errorf("event log is %d bytes, limit %d", len(log), wire.MaxEventLogSize)
	}
	defer func() {
		if r := recover(); r != nil {
			events, err = nil, errors.New("event log could not be parsed (parser fault)")
		}
	}()
	el, err := gattest.ParseEventLog(log)
	if err != nil {
		return nil, fmt.Errorf("event log does not parse: %v", err)
	}
	events, err = el.Verify(pcrs)
	if err != nil {
		return nil, fmt.Errorf("event log does not replay to the quoted PCRs: %v", err)
	}
	return events, nil
}

// checkRelease appraises replayed events against one release's reference
// values and returns why they do not match (nil if they do).
func checkRelease(r *RefValues, byPCR map[int][]gattest.Event, values map[int][]byte) []string {
	var reasons []string
	refByPCR := map[int][]RefStage{}
	for _, s := range r.Stages {
		refByPCR[s.PCR] = append(refByPCR[s.PCR], s)
	}
	for _, p := range r.PolicyPCRs() {
		if _, ok := values[p]; !ok {
			reasons = append(reasons, fmt.Sprintf("PCR %d is not covered by the quote", p))
			continue
		}
		if want, ok := r.PCRs[p]; ok && !bytes.Equal(values[p], want[:]) {
			reasons = append(reasons, fmt.Sprintf("PCR %d value differs from release %s", p, r.Release))
		}
		stages := refByPCR[p]
		if len(stages) == 0 {
			continue
		}
		// 5. Replay passes a PCR without events whatever its value.
		evs := byPCR[p]
		if len(evs) == 0 {
			reasons = append(reasons, fmt.Sprintf("PCR %d has no events in the log", p))
			continue
		}
		// 6. Every event digest on a policy PCR is a reference digest.
		for _, e := range evs {
			known := false
			for _, s := range stages {
				if bytes.Equal(e.Digest, s.SHA256[:]) {
					known = true
					break
				}
			}
			if !known {
				reasons = append(reasons, fmt.Sprintf("PCR %d: measurement %x is not in release %s", p, e.Digest, r.Release))
			}
		}
	}
	// 7. Every stage present.
	for _, s := range r.Stages {
		found := false
		for _, e := range byPCR[s.PCR] {
			if bytes.Equal(e.Digest, s.SHA256[:]) {
				found = true
				break
			}
		}
		if !found {
			reasons = append(reasons, fmt.Sprintf("stage %s (PCR %d) was not measured", s.Name, s.PCR))
		}
	}
	return reasons
}

// checkClock applies the freshness rules of Keylime's check_quote_timing
// adapted to devices that lose power: counters never go down (else the
// TPM state was rolled back or cloned, or an old quote replayed); with no
// counter moved the clock must advance; Safe=0 is a power loss: flag.
func checkClock(a *appraisal, prev, cur Counters) {
	switch {
	case cur.ResetCount < prev.ResetCount:
		a.fail("TPM reset count went down (%d after %d): rolled-back or cloned TPM state", cur.ResetCount, prev.ResetCount)
		return
	case cur.ResetCount == prev.ResetCount && cur.RestartCount < prev.RestartCount:
		a.fail("TPM restart count went down (%d after %d): rolled-back or cloned TPM state", cur.RestartCount, prev.RestartCount)
		return
	case cur.ResetCount == prev.ResetCount && cur.RestartCount == prev.RestartCount && cur.Clock <= prev.Clock:
		a.fail("TPM clock did not advance (%d after %d) and no reset happened: replayed or rolled-back state", cur.Clock, prev.Clock)
		return
	}
	if !cur.Safe {
		a.flag("TPM clock not safe (Safe=0): the TPM lost power without an orderly shutdown")
	}
}

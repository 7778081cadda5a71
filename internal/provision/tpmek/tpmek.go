// Package tpmek authenticates devices by their TPM's endorsement key (EK),
// in two rounds:
//
//  1. The device sends its EK certificate (or EK public key) and the
//     parameters of a fresh attestation key (AK), wire.TPMChallengeRequest.
//     The server checks the EK certificate against the group's TPM
//     manufacturer roots and/or the EK against the group's allow-list, and
//     answers a wire.TPMChallenge: a credential-activation challenge
//     (go-attestation ActivationParameters.Generate) that only a TPM
//     holding both that EK and that AK can open, a nonce, the device ID the
//     EK proves, and the server's sealed state.
//  2. The device activates the credential (TPM2_ActivateCredential), makes
//     its operational key in the TPM certified by the AK with the nonce as
//     qualifying data, signs a CSR with it, and calls EST simpleenroll
//     with a wire.TPMResponse as bearer token. The server checks the
//     secret in constant time, the AK's certification of the key (a
//     TPM-resident, non-duplicable, TPM-generated key: go-attestation
//     CertificationParameters.Verify), that the certification carries the
//     nonce, and that the certified key is the CSR's key.
//
// The server keeps no per-challenge memory until round two: the state
// travels sealed (AES-GCM under the tenant's data key, bound to the
// group) with a short expiry, and round two records the challenge ID
// with Store.ConsumeNonce, so a response is accepted once across all
// server nodes.
//
// The device ID is IDPrefix + the lower-case hex SHA-256 of the PKIX EK
// public key (EKHash). The AK public area is returned for later remote
// attestation.
package tpmek

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/wire"
)

const (
	// ChallengeTTL bounds the time between the two rounds. A TPM
	// activates a credential and makes a key in well under a second; a
	// minute covers slow TPMs and networks, and keeps the store's replay
	// records short-lived.
	ChallengeTTL = time.Minute
	// nonceSize is the qualifying data bound into the key certification.
	nonceSize = 32
	// maxStateSize bounds the sealed state the server opens.
	maxStateSize = 4 << 10
)

// EKHash returns the lower-case hex SHA-256 of a PKIX DER EK public key,
// the form of TPMConfig.AllowedEKs.
func EKHash(pkix []byte) string {
	s := sha256.Sum256(pkix)
	return hex.EncodeToString(s[:])
}

func stateAAD(groupID string) []byte { return []byte("ward tpm challenge\x00" + groupID) }

// state is the sealed server state of a challenge.
type state struct {
	ID      []byte `json:"id"`
	Group   string `json:"g"`
	EKPub   []byte `json:"ek"`
	AK      []byte `json:"ak"`
	Secret  []byte `json:"s"`
	Nonce   []byte `json:"n"`
	Expires int64  `json:"exp"`
}

// Authenticator implements provision.Authenticator and
// provision.Challenger for MechanismTPM.
type Authenticator struct {
	store   provision.Store
	sealers provision.Sealers
	now     func() time.Time
}

var (
	_ provision.Authenticator = (*Authenticator)(nil)
	_ provision.Challenger    = (*Authenticator)(nil)
)

// New returns an authenticator.
func New(store provision.Store, sealers provision.Sealers, now func() time.Time) *Authenticator {
	return &Authenticator{store: store, sealers: sealers, now: now}
}

func deviceID(cfg *provision.TPMConfig, ekPKIX []byte) (string, error) {
	id := cfg.IDPrefix + EKHash(ekPKIX)
	if err := wire.ValidateDeviceID(id); err != nil {
		return "", fmt.Errorf("tpmek: group ID prefix makes an invalid device ID: %w", err)
	}
	return id, nil
}

// ekPublic verifies the EK in r against cfg and returns its PKIX DER.
func (a *Authenticator) ekPublic(cfg *provision.TPMConfig, r *wire.TPMChallengeRequest) ([]byte, error) {
	var pub crypto.PublicKey
	switch {
	case len(r.EKCert) > 0:
		cert, err := attest.ParseEKCertificate(r.EKCert)
		if err != nil {
			return nil, &provision.Error{Reason: provision.ReasonMalformed, Detail: "EK certificate", Err: err}
		}
		if len(cfg.EKRoots) > 0 {
			if err := verifyEKCert(cfg, cert, a.now()); err != nil {
				return nil, err
			}
		}
		pub = cert.PublicKey
	case len(cfg.EKRoots) > 0:
		return nil, provision.Refuse(provision.ReasonUnknownCA, "group requires an EK certificate")
	default:
		p, err := x509.ParsePKIXPublicKey(r.EKPublic)
		if err != nil {
			return nil, &provision.Error{Reason: provision.ReasonMalformed, Detail: "EK public key", Err: err}
		}
		pub = p
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, &provision.Error{Reason: provision.ReasonMalformed, Detail: "EK public key", Err: err}
	}
	if len(cfg.AllowedEKs) > 0 && !slices.Contains(cfg.AllowedEKs, EKHash(der)) {
		return nil, provision.Refuse(provision.ReasonNotAllowed, "EK %s is not on the group's allow-list", EKHash(der))
	}
	return der, nil
}

func verifyEKCert(cfg *provision.TPMConfig, cert *x509.Certificate, now time.Time) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, der := range cfg.EKRoots {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return errors.New("tpmek: group has an unparsable EK root")
		}
		roots.AddCert(c)
	}
	for _, der := range cfg.EKIntermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return errors.New("tpmek: group has an unparsable EK intermediate")
		}
		inter.AddCert(c)
	}
	// EK certificates mark their TPM-specific subject alternative name
	// (a directoryName) critical; it identifies the TPM model and is not
	// a name we match, so it must not make verification fail.
	c := *cert
	c.UnhandledCriticalExtensions = nil
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: c.NotBefore, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if _, err := c.Verify(opts); err != nil {
		return provision.Refuse(provision.ReasonUnknownCA, "EK certificate does not chain to a TPM manufacturer root of the group")
	}
	if now.Before(c.NotBefore) || (!c.NotAfter.IsZero() && now.After(c.NotAfter)) {
		return provision.Refuse(provision.ReasonExpired, "EK certificate not valid at %s", now.UTC().Format(time.RFC3339))
	}
	return nil
}

// Challenge implements provision.Challenger: round one.
func (a *Authenticator) Challenge(ctx context.Context, g *provision.Group, payload []byte, _ string) ([]byte, error) {
	cfg := g.TPM
	if cfg == nil {
		return nil, provision.Refuse(provision.ReasonWrongGroup, "group %q is not a TPM group", g.Name)
	}
	r, err := wire.ParseTPMChallengeRequest(payload)
	if err != nil {
		return nil, &provision.Error{Reason: provision.ReasonMalformed, Err: err}
	}
	ekDER, err := a.ekPublic(cfg, r)
	if err != nil {
		return nil, err
	}
	id, err := deviceID(cfg, ekDER)
	if err != nil {
		return nil, err
	}
	ekPub, _ := x509.ParsePKIXPublicKey(ekDER)
	ap := attest.ActivationParameters{EK: ekPub, AK: attest.AttestationParameters{
		Public: r.AK.Public, CreateData: r.AK.CreateData, CreateAttestation: r.AK.CreateAttestation, CreateSignature: r.AK.CreateSignature,
	}}
	secret, ec, err := ap.Generate()
	if err != nil {
		return nil, &provision.Error{Reason: provision.ReasonMalformed, Detail: "AK parameters refused", Err: err}
	}
	st := state{ID: make([]byte, 16), Group: g.ID, EKPub: ekDER, AK: r.AK.Public, Secret: secret, Nonce: make([]byte, nonceSize)}
	if _, err := rand.Read(st.ID); err != nil {
		return nil, err
	}
	if _, err := rand.Read(st.Nonce); err != nil {
		return nil, err
	}
	exp := a.now().Add(ChallengeTTL)
	st.Expires = exp.Unix()
	plain, err := json.Marshal(&st)
	if err != nil {
		return nil, err
	}
	s, err := a.sealers(ctx, g.Tenant)
	if err != nil {
		return nil, err
	}
	sealed, err := s.Seal(plain, stateAAD(g.ID))
	if err != nil {
		return nil, err
	}
	return json.Marshal(&wire.TPMChallenge{Challenge: sealed, Credential: ec.Credential, Secret: ec.Secret,
		Nonce: st.Nonce, DeviceID: id, Expires: st.Expires})
}

// Authenticate implements provision.Authenticator: round two.
func (a *Authenticator) Authenticate(ctx context.Context, g *provision.Group, req *provision.Request) (*provision.Result, error) {
	cfg := g.TPM
	if cfg == nil {
		return nil, provision.Refuse(provision.ReasonWrongGroup, "group %q is not a TPM group", g.Name)
	}
	resp, err := wire.ParseTPMBearer(req.BearerToken)
	if err != nil {
		return nil, &provision.Error{Reason: provision.ReasonMalformed, Err: err}
	}
	if len(resp.Challenge) > maxStateSize {
		return nil, provision.Refuse(provision.ReasonMalformed, "challenge too large")
	}
	s, err := a.sealers(ctx, g.Tenant)
	if err != nil {
		return nil, err
	}
	plain, err := s.Open(resp.Challenge, stateAAD(g.ID))
	if err != nil {
		return nil, provision.Refuse(provision.ReasonWrongGroup, "challenge was not issued for group %q", g.Name)
	}
	var st state
	if err := json.Unmarshal(plain, &st); err != nil || st.Group != g.ID {
		return nil, provision.Refuse(provision.ReasonWrongGroup, "challenge was not issued for group %q", g.Name)
	}
	now := a.now()
	if !now.Before(time.Unix(st.Expires, 0)) {
		return nil, provision.Refuse(provision.ReasonExpired, "challenge expired")
	}
	if subtle.ConstantTimeCompare(resp.Secret, st.Secret) != 1 {
		return nil, provision.Refuse(provision.ReasonActivation, "activation secret wrong: EK and AK are not in one TPM")
	}
	if err := verifyKey(&st, resp, req.CSR); err != nil {
		return nil, err
	}
	// Re-check the allow-list: it may have changed between the rounds.
	ekHash := EKHash(st.EKPub)
	if len(cfg.AllowedEKs) > 0 && !slices.Contains(cfg.AllowedEKs, ekHash) {
		return nil, provision.Refuse(provision.ReasonNotAllowed, "EK %s is not on the group's allow-list", ekHash)
	}
	key := "tpm:" + g.ID + ":" + base64.RawURLEncoding.EncodeToString(st.ID)
	if err := a.store.ConsumeNonce(ctx, key, time.Unix(st.Expires, 0), now); err != nil {
		if errors.Is(err, provision.ErrConflict) {
			return nil, provision.Refuse(provision.ReasonReplay, "challenge response already used")
		}
		return nil, err
	}
	id, err := deviceID(cfg, st.EKPub)
	if err != nil {
		return nil, err
	}
	return &provision.Result{DeviceID: id, Fingerprint: "ek:" + ekHash, AKPublic: st.AK, EKPublic: st.EKPub}, nil
}

// verifyKey checks that the AK certified the CSR's key, fresh for this
// challenge.
func verifyKey(st *state, resp *wire.TPMResponse, csr *x509.CertificateRequest) error {
	ak, err := attest.ParseAKPublic(st.AK)
	if err != nil {
		return &provision.Error{Reason: provision.ReasonKeyNotAttested, Detail: "AK public", Err: err}
	}
	cp := attest.CertificationParameters{Public: resp.Key.Public, CreateData: resp.Key.CreateData,
		CreateAttestation: resp.Key.CreateAttestation, CreateSignature: resp.Key.CreateSignature}
	if err := cp.Verify(attest.VerifyOpts{Public: ak.Public, Hash: ak.Hash}); err != nil {
		return &provision.Error{Reason: provision.ReasonKeyNotAttested, Detail: "key certification", Err: err}
	}
	att, err := tpm2.DecodeAttestationData(resp.Key.CreateAttestation)
	if err != nil || subtle.ConstantTimeCompare(att.ExtraData, st.Nonce) != 1 {
		return provision.Refuse(provision.ReasonKeyNotAttested, "key certification does not carry this challenge's nonce")
	}
	pub, err := tpm2.DecodePublic(resp.Key.Public)
	if err != nil {
		return &provision.Error{Reason: provision.ReasonKeyNotAttested, Detail: "certified key", Err: err}
	}
	k, err := pub.Key()
	if err != nil {
		return &provision.Error{Reason: provision.ReasonKeyNotAttested, Detail: "certified key", Err: err}
	}
	certified, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return &provision.Error{Reason: provision.ReasonKeyNotAttested, Detail: "certified key", Err: err}
	}
	if csr == nil {
		return provision.Refuse(provision.ReasonMalformed, "no CSR")
	}
	requested, err := x509.MarshalPKIXPublicKey(csr.PublicKey)
	if err != nil || subtle.ConstantTimeCompare(certified, requested) != 1 {
		return provision.Refuse(provision.ReasonKeyNotAttested, "CSR key is not the key the AK certified")
	}
	return nil
}

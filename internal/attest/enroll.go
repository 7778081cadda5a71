package attest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"

	gattest "github.com/google/go-attestation/attest"

	"github.com/wardiot/ward/wire"
)

// ActivationTTL bounds how long a credential activation stays pending:
// a TPM answers in milliseconds, a minute covers slow links.
const ActivationTTL = 5 * time.Minute

// ErrEnrollment is wrapped by AK enrollment refusals.
var ErrEnrollment = errors.New("AK enrollment refused")

// oidSubjectAltName: EK certificates carry the TPM manufacturer, model
// and version in a critical SAN holding only a directoryName (TCG EK
// Credential Profile 3.2.9), which crypto/x509 leaves as unhandled.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// verifyEKCert checks that der is an EK certificate chaining to a
// registered TPM manufacturer root and returns it.
func (v *Verifier) verifyEKCert(der []byte) (*x509.Certificate, error) {
	if v.roots == nil {
		return nil, fmt.Errorf("%w: no TPM manufacturer roots are registered", ErrEnrollment)
	}
	cert, err := gattest.ParseEKCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: EK certificate: %v", ErrEnrollment, err)
	}
	var unhandled []asn1.ObjectIdentifier
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) {
			continue // parsed by crypto/x509; only the directoryName is left over
		}
		unhandled = append(unhandled, oid)
	}
	cert.UnhandledCriticalExtensions = unhandled
	_, err = cert.Verify(x509.VerifyOptions{
		Roots: v.roots, Intermediates: v.inter, CurrentTime: v.now(),
		// EK certificates carry tcg-kp-EKCertificate, unknown to crypto/x509.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: EK certificate does not chain to a registered TPM manufacturer root: %v", ErrEnrollment, err)
	}
	return cert, nil
}

// BeginAKEnrollment checks an AK enrollment request and returns a
// credential-activation challenge: a secret encrypted to the certified EK
// for the AK's name, which only the TPM holding both can recover. The
// EK comes from the verified certificate only.
func (v *Verifier) BeginAKEnrollment(ctx context.Context, dev Device, req *wire.AKEnrollRequest) (*wire.AKActivationChallenge, error) {
	cert, err := v.verifyEKCert(req.EKCert)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public key: %v", ErrEnrollment, err)
	}
	ekHash := sha256.Sum256(spki)
	if dev.EK != nil {
		if eq, ok := dev.EK.(interface{ Equal(any) bool }); !ok || !eq.Equal(cert.PublicKey) {
			return nil, fmt.Errorf("%w: EK differs from the one registered for the device", ErrEnrollment)
		}
	}
	// Re-enrollment (a new AK after a TPM clear) must come from the same
	// TPM, or a device could move its identity onto a clean TPM.
	if old, err := v.store.AK(ctx, dev.Tenant, dev.ID); err == nil {
		if subtle.ConstantTimeCompare(old.EKKeyHash, ekHash[:]) != 1 {
			return nil, fmt.Errorf("%w: the device's AK was enrolled with another TPM's EK", ErrEnrollment)
		}
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	params := gattest.ActivationParameters{
		EK: cert.PublicKey,
		AK: gattest.AttestationParameters{
			Public: req.AK.Public, CreateData: req.AK.CreateData,
			CreateAttestation: req.AK.CreateAttestation, CreateSignature: req.AK.CreateSignature,
		},
		Rand: v.rand,
	}
	secret, ec, err := params.Generate()
	if err != nil {
		return nil, fmt.Errorf("%w: AK parameters: %v", ErrEnrollment, err)
	}
	id, err := v.randomID()
	if err != nil {
		return nil, err
	}
	sh := sha256.Sum256(secret)
	clear(secret)
	act := Activation{Tenant: dev.Tenant, Device: dev.ID, ID: id, SecretHash: sh[:],
		AKPublic: append([]byte(nil), req.AK.Public...), EKKeyHash: ekHash[:],
		EKIssuer: cert.Issuer.String(), Expires: v.now().Add(ActivationTTL)}
	if err := v.store.PutActivation(ctx, act); err != nil {
		return nil, err
	}
	return &wire.AKActivationChallenge{ID: id, Credential: ec.Credential, Secret: ec.Secret, Expires: act.Expires}, nil
}

// FinishAKEnrollment checks the secret the device's TPM recovered and,
// if it matches, registers the AK: from then on only quotes by this AK
// are accepted for the device.
func (v *Verifier) FinishAKEnrollment(ctx context.Context, dev Device, resp *wire.AKActivationResponse) error {
	act, err := v.store.TakeActivation(ctx, dev.Tenant, dev.ID, resp.ID)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: unknown or already used activation", ErrEnrollment)
	}
	if err != nil {
		return err
	}
	now := v.now()
	if now.After(act.Expires) {
		return fmt.Errorf("%w: activation expired", ErrEnrollment)
	}
	got := sha256.Sum256(resp.Secret)
	if subtle.ConstantTimeCompare(got[:], act.SecretHash) != 1 {
		return fmt.Errorf("%w: credential activation failed: the AK and the EK are not in the same TPM", ErrEnrollment)
	}
	return v.store.PutAK(ctx, AKRecord{Tenant: dev.Tenant, Device: dev.ID, Public: act.AKPublic,
		EKKeyHash: act.EKKeyHash, EKIssuer: act.EKIssuer, Enrolled: now})
}

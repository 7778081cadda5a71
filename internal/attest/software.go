package attest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/wardiot/ward/wire"
)

// verifySoftware appraises the no-TPM tier: the device key's signature,
// the nonce, and the active slot's hash against the releases' rootfs
// stage. The result is labelled low assurance and never TPM-verified.
func (v *Verifier) verifySoftware(ctx context.Context, dev Device, ch Challenge, r *wire.SoftwareReport, pol Policy) (*appraisal, error) {
	a := &appraisal{assurance: AssuranceSoftware}
	// A device with a TPM must not be able to downgrade to self-report.
	if _, err := v.store.AK(ctx, dev.Tenant, dev.ID); err == nil {
		a.fail("device has an enrolled TPM attestation key: software reports refused (downgrade)")
		return a, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if !pol.AllowSoftware {
		a.fail("policy does not accept the software tier")
		return a, nil
	}
	msg, err := r.SignedBytes()
	if err != nil {
		a.fail("software report: %v", err)
		return a, nil
	}
	if err := verifyDeviceSignature(dev, msg, r.Signature); err != nil {
		a.fail("software report: %v", err)
		return a, nil
	}
	if subtle.ConstantTimeCompare(r.Nonce, ch.Nonce) != 1 {
		a.fail("software report is not for this challenge's nonce")
		return a, nil
	}
	refs, missing, err := v.releases(ctx, dev)
	if err != nil {
		return nil, err
	}
	active := r.Slots[r.ActiveSlot]
	for _, ref := range refs {
		for _, s := range ref.Stages {
			if s.Name == StageRootfs && bytes.Equal(active, s.SHA256[:]) {
				a.release = ref.Release
				return a, nil
			}
		}
	}
	a.fails = append(a.fails, missing...)
	a.fail("active slot %s hash %x matches no approved release's rootfs", r.ActiveSlot, active)
	return a, nil
}

// StageRootfs names the reference stage a software report's active slot
// hash is compared with.
const StageRootfs = "rootfs"

func verifyDeviceSignature(dev Device, msg, sig []byte) error {
	switch k := dev.PublicKey.(type) {
	case ed25519.PublicKey:
		if ed25519.Verify(k, msg, sig) {
			return nil
		}
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		if ecdsa.VerifyASN1(k, d[:], sig) {
			return nil
		}
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig) == nil {
			return nil
		}
	case nil:
		return errors.New("device public key unknown")
	default:
		return fmt.Errorf("device key type %T unsupported", k)
	}
	return errors.New("signature does not verify with the device key")
}

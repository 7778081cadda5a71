package attest

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/wire"
)

// SoftwareEvidence answers a challenge without a TPM: a report of the
// A/B slot hashes and the nonce, signed by the device key. This is the
// low-assurance tier (wire.AssuranceSoftware): it proves the key and
// freshness, but software that is compromised can report any hash, so the
// server never treats it as TPM-verified.
//
// slots maps slot names ("a", "b") to image SHA-256s; active names the
// slot that booted.
func SoftwareEvidence(c *wire.AttestChallenge, slots map[string][sha256.Size]byte, active string, key crypto.Signer, now time.Time) (*wire.AttestEvidence, error) {
	if _, ok := slots[active]; !ok {
		return nil, fmt.Errorf("attest: active slot %q has no hash", active)
	}
	r := &wire.SoftwareReport{
		Nonce: c.Nonce, ActiveSlot: active, Slots: map[string][]byte{},
		Time: now.UTC().Truncate(time.Second),
	}
	for name, h := range slots {
		r.Slots[name] = append([]byte(nil), h[:]...)
	}
	msg, err := r.SignedBytes()
	if err != nil {
		return nil, err
	}
	if r.Signature, err = SignMessage(key, msg); err != nil {
		return nil, err
	}
	return &wire.AttestEvidence{ChallengeID: c.ID, Software: r}, nil
}

// SignMessage signs msg the way wire.SoftwareReport documents: Ed25519
// over msg, ECDSA (ASN.1) or RSA PKCS#1 v1.5 over SHA-256(msg).
func SignMessage(key crypto.Signer, msg []byte) ([]byte, error) {
	if key == nil {
		return nil, errors.New("attest: no device key")
	}
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		return key.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	d := sha256.Sum256(msg)
	sig, err := key.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("attest: sign software report: %w", err)
	}
	return sig, nil
}

package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
)

// Algorithm names a key algorithm for CA keys.
type Algorithm string

// Supported CA key algorithms.
const (
	ECDSAP256 Algorithm = "ecdsa-p256" // the default: small, fast, universally supported
	ECDSAP384 Algorithm = "ecdsa-p384"
	RSA3072   Algorithm = "rsa-3072"
	Ed25519   Algorithm = "ed25519"
)

// DefaultAlgorithm is used when none is configured.
const DefaultAlgorithm = ECDSAP256

// ErrUnsupportedAlgorithm is wrapped by errors about unknown or disallowed
// algorithms and key types.
var ErrUnsupportedAlgorithm = errors.New("pki: unsupported algorithm")

// ParseAlgorithm parses an algorithm name. The empty string yields
// [DefaultAlgorithm].
func ParseAlgorithm(s string) (Algorithm, error) {
	if s == "" {
		return DefaultAlgorithm, nil
	}
	a := Algorithm(s)
	if err := a.Validate(); err != nil {
		return "", err
	}
	return a, nil
}

// Validate reports whether a is one of the supported algorithms.
func (a Algorithm) Validate() error {
	switch a {
	case ECDSAP256, ECDSAP384, RSA3072, Ed25519:
		return nil
	}
	return fmt.Errorf("%w: %q (use ecdsa-p256, ecdsa-p384, rsa-3072 or ed25519)", ErrUnsupportedAlgorithm, truncate(string(a)))
}

// String returns the algorithm's name.
func (a Algorithm) String() string { return string(a) }

// generateSoftwareKey makes a key in process memory (file key manager,
// OCSP responder keys).
func generateSoftwareKey(a Algorithm) (crypto.Signer, error) {
	switch a {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, a.Validate()
}

// AlgorithmOf reports the algorithm of a public key, or an error wrapping
// ErrUnsupportedAlgorithm if it is none of the supported ones.
func AlgorithmOf(pub crypto.PublicKey) (Algorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		}
	case *rsa.PublicKey:
		if k.N.BitLen() == 3072 {
			return RSA3072, nil
		}
	case ed25519.PublicKey:
		return Ed25519, nil
	}
	return "", fmt.Errorf("%w: key type %T", ErrUnsupportedAlgorithm, pub)
}

// Key size policy for subject keys in CSRs.
const (
	// MinRSABits: RSA below 2048 bits is breakable within a certificate's
	// lifetime (NIST SP 800-57).
	MinRSABits = 2048
	// MaxRSABits bounds the cost of verifying a CSR signature; larger
	// moduli are a denial-of-service lever, not a security gain.
	MaxRSABits = 8192
)

// checkSubjectKey enforces the key policy for keys we certify: ECDSA on
// P-256 or P-384 (no weak or exotic curves), RSA 2048..8192 with a sane
// exponent, or Ed25519.
func checkSubjectKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s (use P-256 or P-384)", ErrUnsupportedAlgorithm, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits (use %d to %d)", ErrUnsupportedAlgorithm, n, MinRSABits, MaxRSABits)
		}
		if k.E < 3 || k.E%2 == 0 {
			return fmt.Errorf("%w: RSA public exponent %d", ErrUnsupportedAlgorithm, k.E)
		}
		return nil
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("%w: key type %T", ErrUnsupportedAlgorithm, pub)
}

// truncate keeps error messages bounded when they quote untrusted input.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

package deviceauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"github.com/wardiot/ward/internal/strictjson"
)

// Limits on client assertions. The assertion is parsed before anything
// about the sender is known, so every limit bounds work an anonymous
// caller can make the server do.
const (
	// MaxAssertionLen bounds the compact JWS. A Ward assertion is about
	// 400 bytes with an ECDSA or Ed25519 key and under 1 KiB with RSA-4096;
	// 8 KiB leaves room for longer IDs without letting a caller make the
	// server base64-decode and JSON-parse megabytes.
	MaxAssertionLen = 8 << 10
	// MaxJTILen bounds the assertion ID kept in the replay caches.
	MaxJTILen = 256
	// maxAudiences bounds an aud array: one value is normal, a few are
	// tolerated, more is an attempt to make the server compare a lot.
	maxAudiences = 8
	// maxJSONDepth: header and claims are flat objects, aud may be an
	// array inside them. Anything deeper is not an assertion.
	maxJSONDepth = 3
	// minRSABits refuses RSA keys too short to trust (NIST SP 800-131A).
	minRSABits = 2048
)

// errAssertion is wrapped by every assertion parse and verification error.
// The texts are safe to return to the client: they describe the
// assertion's form, never a secret or whether a device exists.
var errAssertion = errors.New("client assertion refused")

// jws is a parsed but not yet verified compact JWS carrying JWT claims.
type jws struct {
	alg          string
	kid          string
	signingInput string // BASE64URL(header) '.' BASE64URL(payload)
	sig          []byte
	claims       claims
}

// claims are the registered claims RFC 7523 §3 requires of a client
// assertion. Times are seconds since the epoch.
type claims struct {
	iss, sub, jti string
	aud           []string
	exp, iat      int64
	nbf           int64
	hasNBF        bool
}

func assertionErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errAssertion, fmt.Sprintf(format, args...))
}

// b64 is base64url without padding (RFC 7515 §2). Strict refuses
// non-zero trailing bits, so each byte string has exactly one encoding and
// the signing input cannot be varied without breaking the signature.
var b64 = base64.RawURLEncoding.Strict()

// parseJWS parses a compact-serialized JWS (RFC 7515 §7.1) whose payload is
// a JWT claims set. It does not verify the signature: the key is found from
// the claims. It refuses everything but the three-part compact form, every
// header parameter other than alg, typ and kid (in particular jwk, jku,
// x5u, x5c and crit: the key comes from the device's certificate, never
// from the token), "none" and MAC algorithms, duplicate JSON keys and
// missing or mistyped claims.
func parseJWS(s string) (*jws, error) {
	if len(s) > MaxAssertionLen {
		return nil, assertionErr("longer than %d bytes", MaxAssertionLen)
	}
	h, rest, ok1 := strings.Cut(s, ".")
	p, sg, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sg, ".") {
		return nil, assertionErr("not a compact JWS (three base64url parts separated by '.')")
	}
	if h == "" || p == "" || sg == "" {
		return nil, assertionErr("a compact JWS part is empty (unsigned JWTs are not accepted)")
	}
	hb, err := b64.DecodeString(h)
	if err != nil {
		return nil, assertionErr("header is not unpadded base64url")
	}
	pb, err := b64.DecodeString(p)
	if err != nil {
		return nil, assertionErr("payload is not unpadded base64url")
	}
	sig, err := b64.DecodeString(sg)
	if err != nil {
		return nil, assertionErr("signature is not unpadded base64url")
	}
	j := &jws{signingInput: s[:len(h)+1+len(p)], sig: sig}
	if err := j.parseHeader(hb); err != nil {
		return nil, err
	}
	if err := j.claims.parse(pb); err != nil {
		return nil, err
	}
	return j, nil
}

func decodeObject(b []byte, what string) (map[string]any, error) {
	v, err := strictjson.Decode(b, maxJSONDepth)
	if err != nil {
		if errors.Is(err, strictjson.ErrStrict) {
			return nil, assertionErr("%s: %v", what, err)
		}
		return nil, assertionErr("%s is not valid JSON", what)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, assertionErr("%s is not a JSON object", what)
	}
	return m, nil
}

func (j *jws) parseHeader(b []byte) error {
	m, err := decodeObject(b, "JOSE header")
	if err != nil {
		return err
	}
	for k, v := range m {
		s, ok := v.(string)
		switch k {
		case "alg":
			if !ok {
				return assertionErr("header alg is not a string")
			}
			j.alg = s
		case "kid":
			if !ok || len(s) > MaxJTILen {
				return assertionErr("header kid is not a string of at most %d bytes", MaxJTILen)
			}
			j.kid = s
		case "typ":
			// RFC 7515 §4.1.9: typ is a media type, compared
			// case-insensitively, "application/" optional.
			t := strings.TrimPrefix(strings.ToLower(s), "application/")
			if !ok || (t != "jwt" && t != "client-authentication+jwt") {
				return assertionErr("header typ must be JWT or client-authentication+jwt")
			}
		default:
			return assertionErr("header parameter %q is not accepted (only alg, typ and kid; the key comes from the device certificate)", clip(k))
		}
	}
	switch j.alg {
	case "":
		return assertionErr("header has no alg")
	case "none", "None", "NONE":
		return assertionErr("alg none is not accepted: the assertion must be signed")
	}
	return nil
}

func (c *claims) parse(b []byte) error {
	m, err := decodeObject(b, "claims")
	if err != nil {
		return err
	}
	str := func(name string, required bool) (string, error) {
		v, ok := m[name]
		if !ok {
			if required {
				return "", assertionErr("claim %s is missing", name)
			}
			return "", nil
		}
		s, ok := v.(string)
		if !ok || s == "" {
			return "", assertionErr("claim %s is not a non-empty string", name)
		}
		return s, nil
	}
	num := func(name string, required bool) (int64, bool, error) {
		v, ok := m[name]
		if !ok {
			if required {
				return 0, false, assertionErr("claim %s is missing", name)
			}
			return 0, false, nil
		}
		n, ok := v.(json.Number)
		if !ok {
			return 0, false, assertionErr("claim %s is not a NumericDate", name)
		}
		t, err := numericDate(n)
		if err != nil {
			return 0, false, assertionErr("claim %s: %v", name, err)
		}
		return t, true, nil
	}
	if c.iss, err = str("iss", true); err != nil {
		return err
	}
	if c.sub, err = str("sub", true); err != nil {
		return err
	}
	if c.jti, err = str("jti", true); err != nil {
		return err
	}
	if len(c.jti) > MaxJTILen {
		return assertionErr("claim jti is longer than %d bytes", MaxJTILen)
	}
	if c.exp, _, err = num("exp", true); err != nil {
		return err
	}
	if c.iat, _, err = num("iat", true); err != nil {
		return err
	}
	if c.nbf, c.hasNBF, err = num("nbf", false); err != nil {
		return err
	}
	switch a := m["aud"].(type) {
	case string:
		c.aud = []string{a}
	case []any:
		if len(a) == 0 || len(a) > maxAudiences {
			return assertionErr("claim aud must hold 1 to %d values", maxAudiences)
		}
		for _, v := range a {
			s, ok := v.(string)
			if !ok {
				return assertionErr("claim aud holds a value that is not a string")
			}
			c.aud = append(c.aud, s)
		}
	case nil:
		return assertionErr("claim aud is missing")
	default:
		return assertionErr("claim aud is not a string or an array of strings")
	}
	return nil
}

// maxNumericDate is the year 5138: far beyond any honest timestamp, small
// enough that adding lifetimes never overflows.
const maxNumericDate = 1e11

// numericDate parses a JWT NumericDate (RFC 7519 §2): seconds since the
// epoch, possibly fractional. Fractions are truncated.
func numericDate(n json.Number) (int64, error) {
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		if i < 0 || i > maxNumericDate {
			return 0, errors.New("out of range")
		}
		return i, nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return 0, errors.New("not a number of seconds in range")
	}
	return int64(f), nil
}

// verifySignature checks sig over input with key, for the alg the header
// names. The alg must be one that fits the key's type: the classic
// confusion (HS256 keyed with the public key's bytes, or RS256 against an
// ECDSA key) fails here because no MAC algorithm is implemented at all and
// each key type accepts only its own signature algorithms.
func verifySignature(alg string, key crypto.PublicKey, input string, sig []byte) error {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		var want string
		var size int
		var digest []byte
		switch k.Curve {
		case elliptic.P256():
			want, size = "ES256", 32
			if alg == want {
				d := sha256.Sum256([]byte(input))
				digest = d[:]
			}
		case elliptic.P384():
			want, size = "ES384", 48
			if alg == want {
				d := sha512.Sum384([]byte(input))
				digest = d[:]
			}
		default:
			return assertionErr("the device key's curve is not supported")
		}
		if alg != want {
			return assertionErr("alg %q does not fit the device's ECDSA %s key (use %s)", clip(alg), k.Curve.Params().Name, want)
		}
		// RFC 7518 §3.4: R and S as fixed-size big-endian integers,
		// not DER.
		if len(sig) != 2*size {
			return assertionErr("%s signature must be %d bytes", want, 2*size)
		}
		r := new(big.Int).SetBytes(sig[:size])
		s := new(big.Int).SetBytes(sig[size:])
		if !ecdsa.Verify(k, digest, r, s) {
			return errBadSignature
		}
		return nil
	case ed25519.PublicKey:
		// RFC 8037 "EdDSA"; RFC 9864 names the same thing "Ed25519".
		if alg != "EdDSA" && alg != "Ed25519" {
			return assertionErr("alg %q does not fit the device's Ed25519 key (use EdDSA)", clip(alg))
		}
		if len(k) != ed25519.PublicKeySize || len(sig) != ed25519.SignatureSize {
			return errBadSignature
		}
		if !ed25519.Verify(k, []byte(input), sig) {
			return errBadSignature
		}
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return assertionErr("the device's RSA key is shorter than %d bits", minRSABits)
		}
		d := sha256.Sum256([]byte(input))
		var err error
		switch alg {
		case "RS256":
			err = rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig)
		case "PS256":
			err = rsa.VerifyPSS(k, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		default:
			return assertionErr("alg %q does not fit the device's RSA key (use PS256 or RS256)", clip(alg))
		}
		if err != nil {
			return errBadSignature
		}
		return nil
	}
	return assertionErr("the device's key type is not supported for client assertions")
}

// errBadSignature is deliberately the same whether the device is unknown,
// has another key, or the signature is corrupt: the answer must not tell a
// caller which devices exist.
var errBadSignature = fmt.Errorf("%w: the signature does not verify with the current certificate key of the device named in iss and sub", errAssertion)

// clip keeps error messages bounded when they quote untrusted input.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Zero-touch provisioning messages. A device proves its bootstrap
// credential to the EST simpleenroll operation: a manufacturer certificate
// as its TLS client certificate, or one of the bearer tokens below in
// "Authorization: Bearer <token>". The token's prefix names the mechanism,
// so the server can pick the enrollment group's authenticator before it
// parses the rest:
//
//	wardsym.v1.<device>.<expiry>.<nonce>.<mac>  symmetric key (SymKeyToken)
//	wardgrp_<id>_<secret>                       one-time group enrollment token
//	wardtpm.<base64url(JSON TPMResponse)>       TPM, second round (TPMResponse)
//
// The TPM mechanism takes two rounds. First the agent POSTs a
// TPMChallengeRequest (JSON) to ProvisionChallengePath(label, "tpm") and
// gets a TPMChallenge; then it calls simpleenroll with the TPMResponse as
// its bearer token and a CSR whose key the TPM made and certified.

// Bearer token prefixes of the provisioning mechanisms.
const (
	SymKeyTokenPrefix = "wardsym."
	GroupTokenPrefix  = "wardgrp_"
	TPMBearerPrefix   = "wardtpm."
)

// ErrMalformedProvision is wrapped by every error about a provisioning
// message that does not parse.
var ErrMalformedProvision = errors.New("malformed provisioning message")

// ProvisionChallengePath is the path where a device starts a
// challenge-response mechanism (only "tpm" today) for an EST label. It sits
// beside the EST paths but is not part of RFC 7030.
func ProvisionChallengePath(label, mechanism string) string {
	return ProvisionPrefix + label + "/" + mechanism + "/challenge"
}

// ProvisionPrefix is where ProvisionChallengePath paths live.
const ProvisionPrefix = "/.well-known/ward/provision/"

// ---- Symmetric key ----

// Limits of the symmetric-key mechanism.
const (
	// MaxSymKeyTokenLen bounds a token before it is parsed: prefix,
	// version, a 128-character device ID, a 20-digit expiry, a 16-byte
	// nonce and a 32-byte MAC in base64 fit in 240 bytes.
	MaxSymKeyTokenLen = 256
	// SymKeyNonceSize is the random nonce in a token: 128 bits make
	// collisions between honest tokens negligible, so the server can
	// refuse any nonce it has seen.
	SymKeyNonceSize = 16
	// SymKeyMaxLifetime bounds how far in the future a token may expire.
	// A short window bounds how long the server must remember nonces to
	// refuse replays and how long a token sniffed from a log stays useful.
	SymKeyMaxLifetime = 10 * time.Minute
)

// DeriveSymmetricDeviceKey returns K_dev = HMAC-SHA256(groupKey, deviceID),
// the per-device key of the symmetric-key mechanism (the derivation Azure
// DPS uses for group enrollments). The factory line computes it from the
// group key and writes it into the device; the server recomputes it, so
// per-device keys are never stored.
func DeriveSymmetricDeviceKey(groupKey []byte, deviceID string) []byte {
	m := hmac.New(sha256.New, groupKey)
	m.Write([]byte(deviceID))
	return m.Sum(nil)
}

// SymKeyToken is a parsed symmetric-key token. The MAC is not verified by
// the parser; use VerifySymKeyToken.
type SymKeyToken struct {
	DeviceID string
	Expiry   time.Time // second precision
	Nonce    []byte
	MAC      []byte
	signed   string // "v1.<device>.<expiry>.<nonce>", the MACed fields
}

// symKeyMAC computes the token MAC. The tenant and group are MACed but not
// sent, so a token made for one group is worthless at another even where
// both share a group key.
func symKeyMAC(deviceKey []byte, tenant, group, signed string) []byte {
	m := hmac.New(sha256.New, deviceKey)
	m.Write([]byte("ward symkey token v1\x00" + tenant + "\x00" + group + "\x00" + signed))
	return m.Sum(nil)
}

// NewSymKeyToken makes the token a device presents: deviceKey is K_dev,
// nonce must be SymKeyNonceSize random bytes, expiry at most
// SymKeyMaxLifetime ahead of the server's clock.
func NewSymKeyToken(deviceKey []byte, tenant, group, deviceID string, expiry time.Time, nonce []byte) (string, error) {
	if err := ValidateDeviceID(deviceID); err != nil {
		return "", err
	}
	if len(nonce) != SymKeyNonceSize {
		return "", fmt.Errorf("symmetric-key token nonce must be %d bytes", SymKeyNonceSize)
	}
	signed := "v1." + deviceID + "." + strconv.FormatInt(expiry.Unix(), 10) + "." + base64.RawURLEncoding.EncodeToString(nonce)
	mac := symKeyMAC(deviceKey, tenant, group, signed)
	return SymKeyTokenPrefix + signed + "." + base64.RawURLEncoding.EncodeToString(mac), nil
}

// ParseSymKeyToken parses a token without verifying it. Device IDs may
// contain '.', so the fixed fields are taken from the right.
func ParseSymKeyToken(s string) (*SymKeyToken, error) {
	bad := func(why string) error {
		return fmt.Errorf("%w: symmetric-key token: %s", ErrMalformedProvision, why)
	}
	if len(s) > MaxSymKeyTokenLen {
		return nil, bad("too long")
	}
	rest, ok := strings.CutPrefix(s, SymKeyTokenPrefix+"v1.")
	if !ok {
		return nil, bad("not a v1 token")
	}
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return nil, bad("missing MAC")
	}
	signed, macB64 := s[len(SymKeyTokenPrefix):len(SymKeyTokenPrefix)+3+i], rest[i+1:]
	rest = rest[:i]
	i = strings.LastIndexByte(rest, '.')
	if i < 0 {
		return nil, bad("missing nonce")
	}
	rest, nonceB64 := rest[:i], rest[i+1:]
	i = strings.LastIndexByte(rest, '.')
	if i < 0 {
		return nil, bad("missing expiry")
	}
	device, expS := rest[:i], rest[i+1:]
	if err := ValidateDeviceID(device); err != nil {
		return nil, bad("invalid device ID")
	}
	if len(expS) == 0 || len(expS) > 19 || expS[0] == '0' || strings.TrimLeft(expS, "0123456789") != "" {
		return nil, bad("invalid expiry")
	}
	exp, err := strconv.ParseInt(expS, 10, 64)
	if err != nil || exp > 1<<40 {
		return nil, bad("invalid expiry")
	}
	nonce, err := base64.RawURLEncoding.Strict().DecodeString(nonceB64)
	if err != nil || len(nonce) != SymKeyNonceSize {
		return nil, bad("invalid nonce")
	}
	mac, err := base64.RawURLEncoding.Strict().DecodeString(macB64)
	if err != nil || len(mac) != sha256.Size {
		return nil, bad("invalid MAC")
	}
	return &SymKeyToken{DeviceID: device, Expiry: time.Unix(exp, 0), Nonce: nonce, MAC: mac, signed: signed}, nil
}

// VerifyMAC reports, in constant time, whether t was made with deviceKey
// for tenant and group. It checks neither expiry nor replay.
func (t *SymKeyToken) VerifyMAC(deviceKey []byte, tenant, group string) bool {
	return hmac.Equal(symKeyMAC(deviceKey, tenant, group, t.signed), t.MAC)
}

// ---- TPM ----

// Limits of the TPM mechanism's messages.
const (
	// MaxTPMChallengeRequestSize bounds the JSON body of round one: an
	// RSA-4096 EK certificate with a long chain of extensions is under
	// 2 KiB and the AK parameters under 1 KiB; base64 grows them by 4/3.
	MaxTPMChallengeRequestSize = 16 << 10
	// MaxTPMBearerLen bounds the round-two bearer token before it is
	// decoded: the sealed challenge (~700 bytes), the 32-byte secret and
	// the certification of an RSA-2048 key (~1 KiB), base64 twice.
	MaxTPMBearerLen = 8 << 10
)

// TPMKeyParams are a TPM object's public area and its creation (or
// certification) evidence, as go-attestation's AttestationParameters and
// CertificationParameters hold them: TPM2B-free TPMT_PUBLIC,
// TPMS_CREATION_DATA, TPMS_ATTEST and TPMT_SIGNATURE encodings.
type TPMKeyParams struct {
	Public            []byte `json:"public"`
	CreateData        []byte `json:"create_data,omitempty"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// TPMChallengeRequest is round one, device to server: who the TPM is
// (its EK) and the attestation key (AK) it made.
type TPMChallengeRequest struct {
	// EKCert is the DER EK certificate read from the TPM's NV index.
	// Groups that trust EK manufacturer roots require it.
	EKCert []byte `json:"ek_cert,omitempty"`
	// EKPublic is the PKIX DER EK public key, for groups that allow-list
	// EK hashes and for TPMs without a certificate. Ignored when EKCert
	// is present: the key is then taken from the verified certificate.
	EKPublic []byte `json:"ek_public,omitempty"`
	// AK is the new attestation key's parameters.
	AK TPMKeyParams `json:"ak"`
}

// TPMChallenge is round one's answer, server to device.
type TPMChallenge struct {
	// Challenge is opaque server state (sealed; only the server reads
	// it). The device returns it unchanged in TPMResponse.
	Challenge []byte `json:"challenge"`
	// Credential and Secret are TPM2_ActivateCredential's inputs
	// (go-attestation's EncryptedCredential): only the TPM that holds
	// both the EK and the AK recovers the secret.
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
	// Nonce must be the qualifying data of the certification of the CSR
	// key (TPM2_CertifyCreation or TPM2_Certify by the AK), binding that
	// key to this challenge.
	Nonce []byte `json:"nonce"`
	// DeviceID is the identity the EK proves. The CSR must name it (as
	// subject CN or Ward device URI SAN).
	DeviceID string `json:"device_id"`
	// Expires is when the server stops accepting the response (Unix s).
	Expires int64 `json:"expires"`
}

// TPMResponse is round two, device to server, carried as the bearer
// token of simpleenroll (see EncodeTPMBearer).
type TPMResponse struct {
	Challenge []byte `json:"challenge"`
	// Secret is what TPM2_ActivateCredential returned.
	Secret []byte `json:"secret"`
	// Key certifies the CSR's key: its public area and the AK's signed
	// attestation over it with Nonce as qualifying data.
	Key TPMKeyParams `json:"key"`
}

// EncodeTPMBearer encodes r as a bearer token.
func EncodeTPMBearer(r *TPMResponse) (string, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	s := TPMBearerPrefix + base64.RawURLEncoding.EncodeToString(b)
	if len(s) > MaxTPMBearerLen {
		return "", fmt.Errorf("TPM response is %d bytes, at most %d", len(s), MaxTPMBearerLen)
	}
	return s, nil
}

// ParseTPMBearer decodes a bearer token made by EncodeTPMBearer.
func ParseTPMBearer(s string) (*TPMResponse, error) {
	if len(s) > MaxTPMBearerLen {
		return nil, fmt.Errorf("%w: TPM response too long", ErrMalformedProvision)
	}
	rest, ok := strings.CutPrefix(s, TPMBearerPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: not a TPM response", ErrMalformedProvision)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("%w: TPM response is not base64url", ErrMalformedProvision)
	}
	var r TPMResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: TPM response is not JSON", ErrMalformedProvision)
	}
	if len(r.Challenge) == 0 || len(r.Secret) == 0 || len(r.Key.Public) == 0 ||
		len(r.Key.CreateAttestation) == 0 || len(r.Key.CreateSignature) == 0 {
		return nil, fmt.Errorf("%w: TPM response lacks a field", ErrMalformedProvision)
	}
	return &r, nil
}

// ParseTPMChallengeRequest decodes a round-one body with the size limit.
func ParseTPMChallengeRequest(b []byte) (*TPMChallengeRequest, error) {
	if len(b) > MaxTPMChallengeRequestSize {
		return nil, fmt.Errorf("%w: TPM challenge request too large", ErrMalformedProvision)
	}
	var r TPMChallengeRequest
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: TPM challenge request is not JSON", ErrMalformedProvision)
	}
	if len(r.EKCert) == 0 && len(r.EKPublic) == 0 {
		return nil, fmt.Errorf("%w: TPM challenge request names no EK", ErrMalformedProvision)
	}
	if len(r.AK.Public) == 0 || len(r.AK.CreateAttestation) == 0 || len(r.AK.CreateSignature) == 0 {
		return nil, fmt.Errorf("%w: TPM challenge request lacks AK parameters", ErrMalformedProvision)
	}
	return &r, nil
}

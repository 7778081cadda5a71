package wire

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Attestation contract. The server publishes an AttestChallenge on
// ward/v1/<device>/attest/request; the device answers with AttestEvidence
// on ward/v1/<device>/attest/reply; the server may push the AttestVerdict
// back on the request topic so the device can log it. AK enrollment
// (AKEnrollRequest -> AKActivationChallenge -> AKActivationResponse) rides
// the same topics or the API; which one is the server's choice.
//
// All byte fields are base64 (standard, padded) as encoding/json does.

// Security limits for attestation messages. They are generous for real
// devices and small enough that a hostile device cannot make the server
// allocate much.
const (
	// MaxAttestMessageSize bounds any attestation message on the wire.
	// Evidence is the largest: a firmware event log (MaxEventLogSize)
	// grows by 4/3 in base64, plus quotes and PCRs.
	MaxAttestMessageSize = 1 << 20
	// MaxEventLogSize bounds the TCG event log. Real UEFI logs are 20 to
	// 100 KiB; 512 KiB leaves room for verbose firmware.
	MaxEventLogSize = 512 << 10
	// MaxQuotes bounds the quotes in evidence: one per PCR bank, and TPMs
	// have at most a handful of banks.
	MaxQuotes = 4
	// MaxPCRValues bounds PCR values in evidence: 24 PCRs in each of
	// MaxQuotes banks.
	MaxPCRValues = 24 * MaxQuotes
	// MaxTPMBlobSize bounds TPM structures (TPMT_PUBLIC, TPMS_ATTEST,
	// TPMT_SIGNATURE, credential blobs), which a TPM caps at 4 KiB
	// responses anyway.
	MaxTPMBlobSize = 4 << 10
	// MaxCertSize bounds an EK certificate (DER); real ones are under 2 KiB.
	MaxCertSize = 8 << 10
	// MaxNonceSize bounds a nonce: TPM2B_DATA holds at most 64 bytes.
	MaxNonceSize = 64
	// MaxReasons bounds the reasons in a verdict.
	MaxReasons = 64
	// MaxSlots bounds the slots in a software report (A/B, maybe recovery).
	MaxSlots = 4
)

// Attestation tiers.
const (
	// AssuranceTPM: a TPM quote with an enrolled AK, event log replayed.
	AssuranceTPM = "tpm"
	// AssuranceSoftware: a report of slot hashes signed by the device key.
	// Low assurance: compromised software can lie about what it runs.
	AssuranceSoftware = "software"
)

// Verdict results.
const (
	VerdictPass = "pass"
	VerdictFail = "fail"
	// VerdictFlag: the evidence verified but something needs a human's
	// eye (for example a power loss); not a failure.
	VerdictFlag = "flag"
)

// AttestChallenge asks the device to attest. The device quotes Nonce over
// PCRs (TPM tier) or signs it into a software report.
type AttestChallenge struct {
	ID    string `json:"id"`
	Nonce []byte `json:"nonce"`
	// ServerNonce is set for renewal gating: Nonce is then
	// RenewalNonce(ServerNonce, SPKI of the CSR the device is about to
	// send), so a device can check that the challenge binds its new key.
	ServerNonce []byte    `json:"server_nonce,omitempty"`
	PCRs        []int     `json:"pcrs,omitempty"`
	Expires     time.Time `json:"expires"`
}

// RenewalNonce binds an attestation to a certificate renewal:
// SHA-256(serverNonce || csrSPKI), where csrSPKI is the DER
// SubjectPublicKeyInfo of the key in the CSR.
func RenewalNonce(serverNonce, csrSPKI []byte) []byte {
	h := sha256.New()
	h.Write(serverNonce)
	h.Write(csrSPKI)
	return h.Sum(nil)
}

// AttestEvidence answers a challenge. Exactly one of TPM and Software is
// set.
type AttestEvidence struct {
	ChallengeID string          `json:"challenge_id"`
	TPM         *TPMEvidence    `json:"tpm,omitempty"`
	Software    *SoftwareReport `json:"software,omitempty"`
}

// TPMEvidence is what go-attestation's AttestPlatform produces, plus
// informational TPM data. The verifier trusts only what the quote signs.
type TPMEvidence struct {
	// AKPublic is the AK's TPMT_PUBLIC.
	AKPublic []byte     `json:"ak_public"`
	Quotes   []TPMQuote `json:"quotes"`
	PCRs     []PCRValue `json:"pcrs"`
	// EventLog is the TCG PC Client crypto-agile event log.
	EventLog []byte `json:"event_log"`
	// Info is what the device says about its TPM: informational only, the
	// verifier reads clock and counters from the signed quote.
	Info TPMInfo `json:"info"`
}

// TPMQuote is a TPMS_ATTEST and its TPMT_SIGNATURE.
type TPMQuote struct {
	Quote     []byte `json:"quote"`
	Signature []byte `json:"signature"`
}

// PCRValue is one PCR of one bank. Alg is "sha1", "sha256", "sha384" or
// "sha512".
type PCRValue struct {
	Index  int    `json:"index"`
	Alg    string `json:"alg"`
	Digest []byte `json:"digest"`
}

// TPMInfo describes the device's TPM (unauthenticated).
type TPMInfo struct {
	Manufacturer  string `json:"manufacturer,omitempty"`
	VendorInfo    string `json:"vendor_info,omitempty"`
	FirmwareMajor int    `json:"firmware_major,omitempty"`
	FirmwareMinor int    `json:"firmware_minor,omitempty"`
	Clock         uint64 `json:"clock,omitempty"`
	ResetCount    uint32 `json:"reset_count,omitempty"`
	RestartCount  uint32 `json:"restart_count,omitempty"`
	Safe          bool   `json:"safe,omitempty"`
}

// SoftwareReport is the no-TPM tier: the device signs the nonce and the
// hashes of its A/B slots with its device key. It proves freshness and
// the key, not what runs: software can lie about its own hashes.
type SoftwareReport struct {
	Nonce      []byte `json:"nonce"`
	ActiveSlot string `json:"active_slot"`
	// Slots maps a slot name ("a", "b") to the SHA-256 of its image.
	Slots map[string][]byte `json:"slots"`
	Time  time.Time         `json:"time"`
	// Signature is by the device key over SignedBytes: ASN.1 ECDSA or
	// PKCS#1 v1.5 over SHA-256 of it, or Ed25519 over it.
	Signature []byte `json:"signature"`
}

// softwareReportContext separates software-report signatures from any
// other use of the device key.
const softwareReportContext = "ward-attest-software-report-v1\x00"

// SignedBytes returns what Signature covers: a context string and the
// JSON encoding of the report without its signature (encoding/json sorts
// map keys, so the encoding is deterministic). It fails only for a time
// outside years 0-9999.
func (r *SoftwareReport) SignedBytes() ([]byte, error) {
	c := *r
	c.Signature = nil
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encode software report: %w", err)
	}
	return append([]byte(softwareReportContext), b...), nil
}

// AttestVerdict is the appraisal of one piece of evidence.
type AttestVerdict struct {
	ChallengeID string    `json:"challenge_id"`
	Result      string    `json:"result"`
	Reasons     []string  `json:"reasons,omitempty"`
	Release     string    `json:"release,omitempty"`
	Assurance   string    `json:"assurance"`
	Time        time.Time `json:"time"`
}

// AKParams are go-attestation's AttestationParameters of a TPM 2.0 AK.
type AKParams struct {
	Public            []byte `json:"public"`
	CreateData        []byte `json:"create_data"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// AKEnrollRequest asks the server to register an AK for the device. The
// EK certificate must chain to a registered TPM manufacturer root.
type AKEnrollRequest struct {
	EKCert []byte   `json:"ek_cert"`
	AK     AKParams `json:"ak"`
}

// AKActivationChallenge is TPM2_MakeCredential's output: only the TPM
// holding both the EK and the AK can recover the secret.
type AKActivationChallenge struct {
	ID         string    `json:"id"`
	Credential []byte    `json:"credential"`
	Secret     []byte    `json:"secret"`
	Expires    time.Time `json:"expires"`
}

// AKActivationResponse returns the secret TPM2_ActivateCredential
// recovered.
type AKActivationResponse struct {
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
}

// maxIDLen bounds challenge identifiers.
const maxIDLen = 64

// ErrAttestMessage is wrapped by every parse error below.
var ErrAttestMessage = errors.New("invalid attestation message")

func decodeStrict(b []byte, v any) error {
	if len(b) > MaxAttestMessageSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrAttestMessage, len(b), MaxAttestMessageSize)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrAttestMessage, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return fmt.Errorf("%w: data after the JSON object", ErrAttestMessage)
	}
	return nil
}

func badf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrAttestMessage, fmt.Sprintf(format, args...))
}

func checkID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return badf("id must be 1 to %d characters", maxIDLen)
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return badf("id has a character outside [A-Za-z0-9_-]")
		}
	}
	return nil
}

func checkBlob(name string, b []byte, limit int, required bool) error {
	if required && len(b) == 0 {
		return badf("%s is missing", name)
	}
	if len(b) > limit {
		return badf("%s is %d bytes, limit %d", name, len(b), limit)
	}
	return nil
}

// ParseAttestChallenge decodes and checks a challenge.
func ParseAttestChallenge(b []byte) (*AttestChallenge, error) {
	var c AttestChallenge
	if err := decodeStrict(b, &c); err != nil {
		return nil, err
	}
	if err := checkID(c.ID); err != nil {
		return nil, err
	}
	if len(c.Nonce) < 16 || len(c.Nonce) > MaxNonceSize {
		return nil, badf("nonce must be 16 to %d bytes", MaxNonceSize)
	}
	if err := checkBlob("server_nonce", c.ServerNonce, MaxNonceSize, false); err != nil {
		return nil, err
	}
	if len(c.PCRs) > 24 {
		return nil, badf("%d PCRs, limit 24", len(c.PCRs))
	}
	for _, p := range c.PCRs {
		if p < 0 || p > 23 {
			return nil, badf("PCR %d out of range 0-23", p)
		}
	}
	if c.Expires.IsZero() {
		return nil, badf("expires is missing")
	}
	return &c, nil
}

// ParseAttestEvidence decodes and checks the shape of evidence. It does
// not verify anything cryptographic: that is the verifier's job.
func ParseAttestEvidence(b []byte) (*AttestEvidence, error) {
	var e AttestEvidence
	if err := decodeStrict(b, &e); err != nil {
		return nil, err
	}
	if err := checkID(e.ChallengeID); err != nil {
		return nil, err
	}
	if (e.TPM == nil) == (e.Software == nil) {
		return nil, badf("exactly one of tpm and software must be present")
	}
	if t := e.TPM; t != nil {
		if err := checkBlob("ak_public", t.AKPublic, MaxTPMBlobSize, true); err != nil {
			return nil, err
		}
		if len(t.Quotes) == 0 || len(t.Quotes) > MaxQuotes {
			return nil, badf("%d quotes, want 1 to %d", len(t.Quotes), MaxQuotes)
		}
		for _, q := range t.Quotes {
			if err := checkBlob("quote", q.Quote, MaxTPMBlobSize, true); err != nil {
				return nil, err
			}
			if err := checkBlob("quote signature", q.Signature, MaxTPMBlobSize, true); err != nil {
				return nil, err
			}
		}
		if len(t.PCRs) == 0 || len(t.PCRs) > MaxPCRValues {
			return nil, badf("%d PCR values, want 1 to %d", len(t.PCRs), MaxPCRValues)
		}
		for _, p := range t.PCRs {
			if p.Index < 0 || p.Index > 23 {
				return nil, badf("PCR %d out of range 0-23", p.Index)
			}
			size, ok := pcrAlgSizes[p.Alg]
			if !ok {
				return nil, badf("PCR %d: unknown hash algorithm %q", p.Index, p.Alg)
			}
			if len(p.Digest) != size {
				return nil, badf("PCR %d: %s digest is %d bytes, want %d", p.Index, p.Alg, len(p.Digest), size)
			}
		}
		if err := checkBlob("event_log", t.EventLog, MaxEventLogSize, true); err != nil {
			return nil, err
		}
		if len(t.Info.Manufacturer) > 64 || len(t.Info.VendorInfo) > 64 {
			return nil, badf("TPM info strings exceed 64 bytes")
		}
	}
	if s := e.Software; s != nil {
		if len(s.Nonce) < 16 || len(s.Nonce) > MaxNonceSize {
			return nil, badf("software report nonce must be 16 to %d bytes", MaxNonceSize)
		}
		if len(s.Slots) == 0 || len(s.Slots) > MaxSlots {
			return nil, badf("%d slots, want 1 to %d", len(s.Slots), MaxSlots)
		}
		for name, h := range s.Slots {
			if name == "" || len(name) > 16 {
				return nil, badf("slot name must be 1 to 16 bytes")
			}
			if len(h) != sha256.Size {
				return nil, badf("slot %q hash is %d bytes, want %d", name, len(h), sha256.Size)
			}
		}
		if _, ok := s.Slots[s.ActiveSlot]; !ok {
			return nil, badf("active slot %q has no hash", s.ActiveSlot)
		}
		if err := checkBlob("software report signature", s.Signature, 1024, true); err != nil {
			return nil, err
		}
	}
	return &e, nil
}

// pcrAlgSizes maps the PCR bank names used on the wire to digest sizes.
var pcrAlgSizes = map[string]int{"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

// ParseAttestVerdict decodes and checks a verdict.
func ParseAttestVerdict(b []byte) (*AttestVerdict, error) {
	var v AttestVerdict
	if err := decodeStrict(b, &v); err != nil {
		return nil, err
	}
	if err := checkID(v.ChallengeID); err != nil {
		return nil, err
	}
	switch v.Result {
	case VerdictPass, VerdictFail, VerdictFlag:
	default:
		return nil, badf("unknown result %q", v.Result)
	}
	switch v.Assurance {
	case AssuranceTPM, AssuranceSoftware:
	default:
		return nil, badf("unknown assurance %q", v.Assurance)
	}
	if len(v.Reasons) > MaxReasons {
		return nil, badf("%d reasons, limit %d", len(v.Reasons), MaxReasons)
	}
	return &v, nil
}

// ParseAKEnrollRequest decodes and checks an AK enrollment request.
func ParseAKEnrollRequest(b []byte) (*AKEnrollRequest, error) {
	var r AKEnrollRequest
	if err := decodeStrict(b, &r); err != nil {
		return nil, err
	}
	if err := checkBlob("ek_cert", r.EKCert, MaxCertSize, true); err != nil {
		return nil, err
	}
	for name, v := range map[string][]byte{
		"ak.public": r.AK.Public, "ak.create_data": r.AK.CreateData,
		"ak.create_attestation": r.AK.CreateAttestation, "ak.create_signature": r.AK.CreateSignature,
	} {
		if err := checkBlob(name, v, MaxTPMBlobSize, true); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

// ParseAKActivationChallenge decodes and checks an activation challenge.
func ParseAKActivationChallenge(b []byte) (*AKActivationChallenge, error) {
	var c AKActivationChallenge
	if err := decodeStrict(b, &c); err != nil {
		return nil, err
	}
	if err := checkID(c.ID); err != nil {
		return nil, err
	}
	if err := checkBlob("credential", c.Credential, MaxTPMBlobSize, true); err != nil {
		return nil, err
	}
	if err := checkBlob("secret", c.Secret, MaxTPMBlobSize, true); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseAKActivationResponse decodes and checks an activation response.
func ParseAKActivationResponse(b []byte) (*AKActivationResponse, error) {
	var r AKActivationResponse
	if err := decodeStrict(b, &r); err != nil {
		return nil, err
	}
	if err := checkID(r.ID); err != nil {
		return nil, err
	}
	if err := checkBlob("secret", r.Secret, MaxNonceSize, true); err != nil {
		return nil, err
	}
	return &r, nil
}

// MaxSPKISize bounds a SubjectPublicKeyInfo in a renewal request: an
// RSA-4096 SPKI is about 550 bytes, post-quantum keys a few KiB.
const MaxSPKISize = 4 << 10

// AttestRenewalRequest asks for a renewal challenge (published on
// ward/v1/<device>/attest/renewal): the server answers with an
// AttestChallenge on attest/request whose Nonce is
// RenewalNonce(ServerNonce, SPKI), so the evidence that answers it binds
// the key of the CSR the device is about to send to simplereenroll.
type AttestRenewalRequest struct {
	// SPKI is the DER SubjectPublicKeyInfo of the CSR's key.
	SPKI []byte `json:"spki"`
}

// ParseAttestRenewalRequest decodes and checks a renewal request.
func ParseAttestRenewalRequest(b []byte) (*AttestRenewalRequest, error) {
	var r AttestRenewalRequest
	if err := decodeStrict(b, &r); err != nil {
		return nil, err
	}
	if err := checkBlob("spki", r.SPKI, MaxSPKISize, true); err != nil {
		return nil, err
	}
	return &r, nil
}

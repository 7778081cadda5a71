package provision

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/audit"
)

// Mechanism names a kind of bootstrap credential.
type Mechanism string

// Mechanisms. Each has an authenticator in a folder of this package.
const (
	MechanismX509      Mechanism = "x509"      // manufacturer certificate (x509pop)
	MechanismTPM       Mechanism = "tpm"       // TPM endorsement key (tpmek)
	MechanismSymmetric Mechanism = "symmetric" // key derived from a group key (symkey)
	MechanismToken     Mechanism = "token"     // one-time enrollment token (jointoken)
)

// Valid reports whether m is a known mechanism.
func (m Mechanism) Valid() bool {
	switch m {
	case MechanismX509, MechanismTPM, MechanismSymmetric, MechanismToken:
		return true
	}
	return false
}

// Group is an enrollment group: which bootstrap credentials a tenant
// accepts and what a device that presents one becomes.
type Group struct {
	// ID is a stable random identifier, set by NewGroupID. Sealed group
	// secrets are bound to it, so a sealed key cannot be moved to
	// another group.
	ID     string
	Tenant string
	// Name has tenant-ID syntax; the EST label "<tenant>.<name>" selects
	// the group.
	Name      string
	Mechanism Mechanism
	// Exactly the config of Mechanism is set.
	X509      *X509Config      `json:",omitempty"`
	TPM       *TPMConfig       `json:",omitempty"`
	Symmetric *SymmetricConfig `json:",omitempty"`
	Token     *TokenConfig     `json:",omitempty"`
	Template  Template
	// Reprovision allows a device ID already provisioned to onboard
	// again (devices that are factory-reset in the field). Off by
	// default: a second onboarding usually means a cloned credential.
	Reprovision bool
	// Enabled groups accept enrollments; disabled ones refuse them all.
	Enabled bool
	// Webhook, when set, is asked to approve each enrollment.
	Webhook   *Webhook `json:",omitempty"`
	CreatedAt time.Time
}

// Template is what a device enrolled through a group becomes.
type Template struct {
	Policy string            `json:"policy,omitempty"` // device policy name
	Tags   map[string]string `json:"tags,omitempty"`
	// Twin holds the desired-state defaults, a JSON object.
	Twin json.RawMessage `json:"twin,omitempty"`
	// Profile is the pki issuance profile name ("" = the server's default).
	Profile string `json:"profile,omitempty"`
	// Lifetime of the operational certificate (0 = the profile's).
	Lifetime time.Duration `json:"lifetime,omitempty"`
}

// Limits on templates, so a group or a webhook answer cannot make every
// certificate request carry megabytes.
const (
	// MaxTags bounds the tags of a template.
	MaxTags = 64
	// MaxTagLen bounds a tag key or value.
	MaxTagLen = 256
	// MaxTwinSize bounds the twin defaults (a JSON object).
	MaxTwinSize = 32 << 10
	// MaxLifetime bounds a certificate lifetime a template may ask for;
	// the pki profile may cap it further.
	MaxLifetime = 5 * 365 * 24 * time.Hour
)

// Validate reports the first problem with t.
func (t *Template) Validate() error {
	if len(t.Tags) > MaxTags {
		return fmt.Errorf("template has %d tags, at most %d", len(t.Tags), MaxTags)
	}
	for k, v := range t.Tags {
		if k == "" || len(k) > MaxTagLen || len(v) > MaxTagLen {
			return fmt.Errorf("template tag keys must be 1 to %d bytes and values at most %d", MaxTagLen, MaxTagLen)
		}
	}
	if len(t.Twin) > 0 {
		if len(t.Twin) > MaxTwinSize {
			return fmt.Errorf("template twin defaults are %d bytes, at most %d", len(t.Twin), MaxTwinSize)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(t.Twin, &obj); err != nil || obj == nil {
			return errors.New("template twin defaults must be a JSON object")
		}
	}
	if t.Lifetime < 0 || t.Lifetime > MaxLifetime {
		return fmt.Errorf("template lifetime must be between 0 and %v", MaxLifetime)
	}
	if len(t.Policy) > MaxTagLen || len(t.Profile) > MaxTagLen {
		return fmt.Errorf("template policy and profile names must be at most %d bytes", MaxTagLen)
	}
	return nil
}

// X509Config configures the manufacturer-certificate mechanism.
type X509Config struct {
	// Roots are the DER certificates of the manufacturer CAs.
	Roots [][]byte
	// Intermediates are DER intermediate CA certificates the devices
	// may not send themselves.
	Intermediates [][]byte `json:",omitempty"`
	// AnyEKU accepts manufacturer certificates without the clientAuth
	// extended key usage (many are issued with none).
	AnyEKU bool `json:",omitempty"`
	// DeviceID is how the device ID is read from the certificate.
	DeviceID IDRule
	// RevokedSerials are revoked certificate serial numbers (lower-case
	// hex, no leading zeros), for makers who publish a list, not a CRL.
	RevokedSerials []string `json:",omitempty"`
	// CRLs are DER CRLs signed by one of Roots or Intermediates.
	CRLs [][]byte `json:",omitempty"`
}

// IDRule says which field of a manufacturer certificate is the device ID.
type IDRule struct {
	// From is "cn" (subject common name), "serial" (serial number,
	// lower-case hex), "dns" (first DNS SAN) or "uri" (first URI SAN).
	From string
	// StripPrefix is removed from the value when present (for example
	// "urn:maker:serial:"); a value without it is refused, so a rule
	// cannot silently match unrelated certificates.
	StripPrefix string `json:",omitempty"`
}

// TPMConfig configures the TPM endorsement-key mechanism. At least one of
// EKRoots and AllowedEKs is set; with both, an EK must satisfy both.
type TPMConfig struct {
	// EKRoots are DER roots of TPM manufacturers' EK certificates.
	EKRoots [][]byte `json:",omitempty"`
	// EKIntermediates are DER intermediates for EK certificates.
	EKIntermediates [][]byte `json:",omitempty"`
	// AllowedEKs are lower-case hex SHA-256 digests of PKIX EK public
	// keys (see EKHash).
	AllowedEKs []string `json:",omitempty"`
	// IDPrefix is put before the EK hash to form the device ID.
	IDPrefix string `json:",omitempty"`
}

// SymmetricConfig configures the symmetric-key mechanism.
type SymmetricConfig struct {
	// SealedKey is the 32-byte group key sealed by the tenant's data key
	// (see symkey.NewGroupKey).
	SealedKey []byte
}

// TokenConfig configures one-time enrollment tokens of a group.
type TokenConfig struct {
	// MaxTTL caps the lifetime of tokens minted for the group (0 =
	// jointoken.DefaultMaxTTL).
	MaxTTL time.Duration `json:",omitempty"`
}

// Webhook is a group's pre-provisioning hook.
type Webhook struct {
	// URL must be https.
	URL string
	// SealedSecret is the HMAC key of request signatures, sealed by the
	// tenant's data key with WebhookSecretAAD(group ID).
	SealedSecret []byte
}

// WebhookSecretAAD is the sealing context of a group's webhook secret.
func WebhookSecretAAD(groupID string) []byte {
	return []byte("ward provision webhook secret\x00" + groupID)
}

// Request is an enrollment attempt as the EST layer received it. Nothing
// in it is verified.
type Request struct {
	// CSR is parsed with its signature checked by the EST layer.
	CSR *x509.CertificateRequest
	// PeerCertificates is the TLS client chain, leaf first, unverified
	// except for possession of the leaf's key.
	PeerCertificates []*x509.Certificate
	// BearerToken is from "Authorization: Bearer".
	BearerToken string
	// RemoteAddr is for audit and events.
	RemoteAddr string
}

// Result is what an authenticator proved.
type Result struct {
	// DeviceID is the identity the credential proves.
	DeviceID string
	// Fingerprint identifies the bootstrap credential (for example
	// "sha256:<hex of the certificate>" or "ek:<EK hash>"), recorded on
	// the device to recognise a clone later. Never a secret.
	Fingerprint string
	// AKPublic is the TPM attestation key's public area (TPMT_PUBLIC),
	// for later remote attestation; TPM mechanism only.
	AKPublic []byte
	// EKPublic is the PKIX DER EK public key; TPM mechanism only.
	EKPublic []byte
}

// Authenticator verifies one mechanism's bootstrap credential.
type Authenticator interface {
	// Authenticate verifies the bootstrap credential in req against g's
	// configuration and returns the device ID it proves. It must check
	// that req.CSR names that device ID (RequestedDeviceID), consume
	// single-use credentials atomically (only once they verified), and
	// return an *Error with the reason for every refusal. A credential
	// of another mechanism or meant for another group must be refused
	// with ReasonWrongGroup so that a tenant-wide label can try the next
	// group.
	Authenticate(ctx context.Context, g *Group, req *Request) (*Result, error)
}

// Challenger is implemented by authenticators of challenge-response
// mechanisms (tpm): the first round, before the EST request.
type Challenger interface {
	// Challenge answers round one. payload and the answer are the
	// mechanism's JSON messages from package wire. Refusals are *Error.
	Challenge(ctx context.Context, g *Group, payload []byte, remoteAddr string) ([]byte, error)
}

// Sealer seals and opens a tenant's secrets at rest; tenant.Sealer
// implements it.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(ciphertext, aad []byte) ([]byte, error)
}

// Sealers returns a tenant's sealer. The server passes a function over
// tenant.Service.Sealer.
type Sealers func(ctx context.Context, tenant string) (Sealer, error)

// SecurityEvent is a refused or suspicious provisioning attempt.
type SecurityEvent struct {
	Time       time.Time
	Kind       string // "provision.refused", "provision.claim_refused", ...
	Reason     Reason
	Tenant     string
	Group      string
	Mechanism  Mechanism
	DeviceID   string // when known
	RemoteAddr string
	Actor      string // operator for claims
	// Detail is a short explanation. Never a secret.
	Detail string
}

// Events receives security events. The server wires it to the security
// event stream; it must not block for long.
type Events interface {
	SecurityEvent(ctx context.Context, e SecurityEvent)
}

// Auditor appends to the audit log. The server implements it as
// store.InTx + audit.Append; an error fails the operation that was being
// recorded (an enrollment that cannot be audited does not happen).
type Auditor interface {
	Audit(ctx context.Context, e audit.Entry) error
}

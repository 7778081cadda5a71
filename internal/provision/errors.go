package provision

import (
	"errors"
	"fmt"
)

// Reason is why a provisioning step was refused. Reasons go to security
// events and the audit log; devices are told only that enrollment was
// refused, so that an attacker learns nothing about which check failed.
type Reason string

// Reasons of refusal.
const (
	ReasonMalformed          Reason = "malformed"           // credential or request does not parse
	ReasonNoCredential       Reason = "no_credential"       // nothing this mechanism accepts
	ReasonUnknownGroup       Reason = "unknown_group"       // label names no enabled group
	ReasonWrongGroup         Reason = "wrong_group"         // credential belongs to another group or mechanism
	ReasonUnknownCA          Reason = "unknown_ca"          // chain does not reach a registered CA
	ReasonExpired            Reason = "expired"             // certificate, token or challenge out of its validity
	ReasonRevoked            Reason = "revoked"             // certificate revoked by the maker
	ReasonBadUsage           Reason = "bad_usage"           // certificate lacks the required key usage
	ReasonNotAllowed         Reason = "not_allowed"         // EK not on the allow-list
	ReasonBadMAC             Reason = "bad_mac"             // symmetric token MAC wrong
	ReasonBadToken           Reason = "bad_token"           // unknown or wrong one-time token
	ReasonReplay             Reason = "replay"              // nonce or challenge seen before
	ReasonTokenUsed          Reason = "token_used"          // one-time token already redeemed
	ReasonActivation         Reason = "activation_failed"   // TPM credential activation secret wrong
	ReasonKeyNotAttested     Reason = "key_not_attested"    // CSR key not certified by the activated AK
	ReasonCSRMismatch        Reason = "csr_mismatch"        // CSR names another device
	ReasonAlreadyProvisioned Reason = "already_provisioned" // second onboarding of a device ID
	ReasonWebhookDenied      Reason = "webhook_denied"
	ReasonWebhookTimeout     Reason = "webhook_timeout"
	ReasonWebhookFailed      Reason = "webhook_failed" // non-2xx, bad answer, transport error
	ReasonBadClaimCode       Reason = "bad_claim_code"
	ReasonRateLimited        Reason = "rate_limited"
	ReasonNotClaimable       Reason = "not_claimable"
)

// ErrRefused is wrapped by every *Error, so errors.Is(err, ErrRefused)
// tells a refusal from an internal failure (store down, and so on).
var ErrRefused = errors.New("provisioning refused")

// Error is a refusal with its reason. Its text never holds a secret.
type Error struct {
	Reason Reason
	// Detail explains the refusal for operators (audit, events).
	Detail string
	// Err is an underlying cause, if any.
	Err error
}

func (e *Error) Error() string {
	s := "provisioning refused: " + string(e.Reason)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns ErrRefused and the cause.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrRefused, e.Err}
	}
	return []error{ErrRefused}
}

// Refuse returns an *Error; detail is formatted with args.
func Refuse(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the reason of a refusal, or "" for other errors.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

package telemetry

import (
	"errors"
	"fmt"
)

// Reason classifies a rejected message. Reasons are stable strings: they
// become security event types and metric labels.
type Reason string

// Rejection reasons.
const (
	ReasonTooLarge       Reason = "too_large"
	ReasonMalformed      Reason = "malformed"
	ReasonDeviceMismatch Reason = "device_mismatch"
	ReasonUnknownKey     Reason = "unknown_key" // key ID or epoch not (or no longer) accepted
	ReasonBadSignature   Reason = "bad_signature"
	ReasonStale          Reason = "stale"  // timestamp too old, or sequence below the replay window
	ReasonFuture         Reason = "future" // timestamp too far ahead
	ReasonReplay         Reason = "replay"
	ReasonUnknownSchema  Reason = "unknown_schema"
	ReasonSchemaInvalid  Reason = "schema_invalid"
)

// Error is returned for every rejected message. Detail is safe to log and
// to show an operator: it never holds key material or payload values.
type Error struct {
	Reason Reason
	Detail string
	Err    error // underlying cause, may be nil
}

// Error returns the reason and detail; both are safe to log.
func (e *Error) Error() string {
	if e.Detail == "" {
		return "telemetry rejected: " + string(e.Reason)
	}
	return fmt.Sprintf("telemetry rejected: %s: %s", e.Reason, e.Detail)
}

// Unwrap returns the underlying cause, e.g. a wire parse error.
func (e *Error) Unwrap() error { return e.Err }

func reject(r Reason, err error, format string, args ...any) *Error {
	return &Error{Reason: r, Detail: fmt.Sprintf(format, args...), Err: err}
}

// ReasonOf returns the reason of a rejection, or "" if err is not one (for
// instance an infrastructure error from [Keys]).
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

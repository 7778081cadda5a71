package est

import (
	"fmt"
	"net/http"
	"time"
)

// Error is an EST failure with the HTTP status and the message the client
// sees. CA implementations return it (or wrap it) to choose the response;
// any other error becomes a 500 with a generic message, so that internal
// details never reach a client.
type Error struct {
	// Status is the HTTP status code, for example 401, 403 or 202.
	Status int
	// Message is sent to the client as text/plain. It must be safe to
	// show an unauthenticated peer: no secrets, tokens or internal paths.
	Message string
	// RetryAfter, when positive, is sent as a Retry-After header in whole
	// seconds (rounded up). A 202 without it gets DefaultRetryAfter.
	RetryAfter time.Duration
	// Err is the internal cause, given to the Observer and never sent.
	Err error
}

// DefaultRetryAfter is sent with a 202 whose Error has no RetryAfter:
// RFC 7030 §4.2.3 requires the header, and a minute keeps a fleet of
// polling devices from hammering a manual approval queue.
const DefaultRetryAfter = time.Minute

// Error returns the safe message, and the cause after it.
func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if e.Err != nil {
		return fmt.Sprintf("est: %d %s: %v", e.Status, msg, e.Err)
	}
	return fmt.Sprintf("est: %d %s", e.Status, msg)
}

// Unwrap returns the internal cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same status, so that
// errors.Is(err, est.ErrForbidden) holds for any 403 whatever its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status
}

// Sentinel errors, to return as they are or to compare with errors.Is. Use
// the constructor functions below to give a more helpful safe message.
var (
	// ErrAuthRequired (401) means no usable credential was presented. The
	// response carries WWW-Authenticate challenges for Basic and Bearer.
	ErrAuthRequired = &Error{Status: http.StatusUnauthorized, Message: "authentication required"}
	// ErrForbidden (403) means the credential was understood and refused.
	ErrForbidden = &Error{Status: http.StatusForbidden, Message: "enrollment refused"}
	// ErrBadRequest (400) means the request cannot be acted on as sent.
	ErrBadRequest = &Error{Status: http.StatusBadRequest, Message: "bad request"}
	// ErrNotFound (404) means the label (CA) or operation does not exist.
	ErrNotFound = &Error{Status: http.StatusNotFound, Message: "no such EST label or operation"}
	// ErrPending (202) means the request was accepted for manual or
	// asynchronous approval; the client should retry the same request.
	ErrPending = &Error{Status: http.StatusAccepted, Message: "enrollment pending", RetryAfter: DefaultRetryAfter}
)

// AuthRequired returns a 401 with a safe message and an internal cause.
func AuthRequired(msg string, cause error) *Error {
	return &Error{Status: http.StatusUnauthorized, Message: msg, Err: cause}
}

// Forbidden returns a 403 with a safe message and an internal cause.
func Forbidden(msg string, cause error) *Error {
	return &Error{Status: http.StatusForbidden, Message: msg, Err: cause}
}

// BadRequest returns a 400 with a safe message and an internal cause.
func BadRequest(msg string, cause error) *Error {
	return &Error{Status: http.StatusBadRequest, Message: msg, Err: cause}
}

// NotFound returns a 404 with a safe message.
func NotFound(msg string) *Error {
	return &Error{Status: http.StatusNotFound, Message: msg}
}

// Pending returns a 202 asking the client to retry after d.
func Pending(d time.Duration) *Error {
	return &Error{Status: http.StatusAccepted, Message: "enrollment pending", RetryAfter: d}
}

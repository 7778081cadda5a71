package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// Error is an error with an HTTP status and a message that is safe to show
// to the caller. Any other error becomes a 500 whose details stay in the
// server log.
type Error struct {
	Status int
	Title  string
	Detail string
	Type   string // optional problem type URI
}

func (e *Error) Error() string { return e.Title + ": " + e.Detail }

// problem is the RFC 9457 body.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// WriteError maps err to a problem+json response.
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	e := classify(err)
	if e.Status >= 500 {
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if e.Type == "" {
		e.Type = "about:blank"
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(problem{Type: e.Type, Title: e.Title, Status: e.Status, Detail: e.Detail})
}

func classify(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, tenant.ErrForbidden):
		return &Error{Status: http.StatusForbidden, Title: "Forbidden", Detail: err.Error()}
	case errors.Is(err, tenant.ErrNoTenant):
		return &Error{Status: http.StatusNotFound, Title: "Not found", Detail: err.Error()}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Title: "Not found", Detail: err.Error()}
	case errors.Is(err, store.ErrConflict):
		return &Error{Status: http.StatusConflict, Title: "Conflict", Detail: err.Error()}
	case errors.Is(err, wire.ErrInvalidID), errors.Is(err, ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Title: "Bad request", Detail: err.Error()}
	}
	return &Error{Status: http.StatusInternalServerError, Title: "Internal error",
		Detail: "the server could not complete the request; the cause is in the server log"}
}

// ErrInvalid marks validation errors whose text is safe to return.
var ErrInvalid = errors.New("invalid request")

// Invalid wraps a validation error so it maps to 400 with its message.
func Invalid(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Status: http.StatusBadRequest, Title: "Bad request", Detail: err.Error()}
}

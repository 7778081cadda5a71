package deviceauth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// AuthError is returned by [Server.Authenticate] when a request carries no
// usable access token. Code is the RFC 6750 §3.1 error code ("" when the
// request had no credentials at all); Description is safe to show.
type AuthError struct {
	Code        string
	Description string
}

func (e *AuthError) Error() string {
	if e.Code == "" {
		return "device authentication required: " + e.Description
	}
	return e.Code + ": " + e.Description
}

// Is makes errors.Is(err, ErrUnauthenticated) true for every AuthError.
func (e *AuthError) Is(target error) bool { return target == ErrUnauthenticated }

// ErrUnauthenticated matches every [*AuthError].
var ErrUnauthenticated = errors.New("deviceauth: unauthenticated")

// Authenticate checks the request's Bearer access token (RFC 6750 §2.1)
// and returns the device it was issued to. Tokens are accepted only in the
// Authorization header, never in a query or form, which end up in logs.
// It returns an [*AuthError] for a missing, unknown, expired or revoked
// token, or for a device whose certificate was revoked or that was
// disabled since; any other error is an infrastructure failure.
func (s *Server) Authenticate(r *http.Request) (Identity, error) {
	hs := r.Header.Values("Authorization")
	if len(hs) == 0 {
		return Identity{}, &AuthError{Description: "send Authorization: Bearer <access token> from " + "POST /oauth/token"}
	}
	if len(hs) > 1 {
		return Identity{}, &AuthError{Code: "invalid_request", Description: "more than one Authorization header"}
	}
	scheme, tok, ok := strings.Cut(hs[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return Identity{}, &AuthError{Code: "invalid_request", Description: "the Authorization scheme must be Bearer"}
	}
	return s.authenticateToken(r.Context(), tok)
}

func (s *Server) authenticateToken(ctx context.Context, tok string) (Identity, error) {
	const invalid = "the access token is unknown, expired or revoked; get a new one from the token endpoint"
	if len(tok) > MaxTokenLen {
		return Identity{}, &AuthError{Code: "invalid_token", Description: invalid}
	}
	h, ok := hashToken(tok, accessPrefix)
	if !ok {
		return Identity{}, &AuthError{Code: "invalid_token", Description: invalid}
	}
	t, err := s.cfg.Store.AccessToken(ctx, h)
	switch {
	case errors.Is(err, ErrNotFound):
		return Identity{}, &AuthError{Code: "invalid_token", Description: invalid}
	case err != nil:
		return Identity{}, fmt.Errorf("deviceauth: looking up access token: %w", err)
	}
	// The store found it by hash; comparing again in constant time guards
	// against a store whose lookup is looser than equality.
	if subtle.ConstantTimeCompare(t.Hash[:], h[:]) != 1 || t.Kind != KindAccess {
		return Identity{}, &AuthError{Code: "invalid_token", Description: invalid}
	}
	if !s.cfg.Clock().Before(t.ExpiresAt) {
		return Identity{}, &AuthError{Code: "invalid_token", Description: "the access token has expired; refresh it"}
	}
	// A revoked certificate kills every token issued under it, at once.
	if err := s.cfg.Status.Usable(ctx, t.Tenant, t.Device, t.CertSerial); err != nil {
		if errors.Is(err, ErrRefused) {
			return Identity{}, &AuthError{Code: "invalid_token", Description: "the device's certificate is revoked or the device is disabled"}
		}
		return Identity{}, fmt.Errorf("deviceauth: checking device status: %w", err)
	}
	return Identity{Tenant: t.Tenant, Device: t.Device, CertSerial: t.CertSerial}, nil
}

type identityKey struct{}

// IdentityFrom returns the device identity [Server.Middleware] put in ctx.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// Middleware authenticates every request with [Server.Authenticate] and
// passes it on with the identity in its context ([IdentityFrom]), or
// answers 401 with a problem+json body and an RFC 6750 WWW-Authenticate
// challenge.
func (s *Server) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.Authenticate(r)
		if err != nil {
			s.writeAuthError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	})
}

func (s *Server) writeAuthError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *AuthError
	if !errors.As(err, &ae) {
		s.cfg.Logger.Error("device authentication failed", "err", err, "remote", r.RemoteAddr)
		writeProblem(w, http.StatusServiceUnavailable, "Service unavailable", "the server could not check the token; try again later")
		return
	}
	c := `Bearer realm="ward-device"`
	if ae.Code != "" {
		c += `, error="` + ae.Code + `", error_description="` + descSafe(ae.Description) + `"`
	}
	w.Header().Set("WWW-Authenticate", c)
	status := http.StatusUnauthorized
	if ae.Code == "invalid_request" {
		status = http.StatusBadRequest
	}
	writeProblem(w, status, "Unauthorized", ae.Description)
}

// problem is an RFC 9457 body.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{Type: "about:blank", Title: title, Status: status, Detail: detail})
}

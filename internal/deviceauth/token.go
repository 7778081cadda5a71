package deviceauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/wardiot/ward/wire"
)

// Token formats. The prefixes let secret scanners find leaked tokens and
// tell the kinds apart before any lookup; the 32 random bytes (256 bits)
// make guessing hopeless and let the store keep a plain SHA-256 rather than
// a slow password hash.
const (
	accessPrefix  = "wardat_"
	refreshPrefix = "wardrt_"
	tokenRandLen  = 32
	// MaxTokenLen bounds a presented token before it is hashed.
	MaxTokenLen = 64
)

var tokenBodyLen = base64.RawURLEncoding.EncodedLen(tokenRandLen)

func newSecret(prefix string) (string, Hash, error) {
	var b [tokenRandLen]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", Hash{}, err
	}
	s := prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return s, sha256.Sum256([]byte(s)), nil
}

// hashToken checks a presented token's form and returns its hash.
func hashToken(s, prefix string) (Hash, bool) {
	if len(s) != len(prefix)+tokenBodyLen || !strings.HasPrefix(s, prefix) {
		return Hash{}, false
	}
	return sha256.Sum256([]byte(s)), true
}

func newFamily() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// assertionKey is what the replay caches keep for an assertion: a hash of
// the client ID and jti, since jti is unique only per issuer (RFC 7519
// §4.1.7) and hashing keeps the key fixed-size whatever the client sent.
func assertionKey(clientID, jti string) Hash {
	h := sha256.New()
	h.Write([]byte(clientID))
	h.Write([]byte{0})
	h.Write([]byte(jti))
	var k Hash
	h.Sum(k[:0])
	return k
}

// oauthError is an RFC 6749 §5.2 error response.
type oauthError struct {
	status int
	code   string
	desc   string
}

func (e *oauthError) Error() string { return e.code + ": " + e.desc }

func invalidRequest(format string, args ...any) *oauthError {
	return &oauthError{http.StatusBadRequest, "invalid_request", fmt.Sprintf(format, args...)}
}

func invalidClient(desc string) *oauthError {
	return &oauthError{http.StatusUnauthorized, "invalid_client", desc}
}

func invalidGrant(desc string) *oauthError {
	return &oauthError{http.StatusBadRequest, "invalid_grant", desc}
}

// tokenResponse is the RFC 6749 §5.1 success body.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// TokenHandler serves the OAuth 2.0 token endpoint, POST [wire.TokenPath]:
// grant_type=client_credentials with a private_key_jwt client assertion
// (RFC 7523 §2.2), or grant_type=refresh_token (RFC 6749 §6).
//
// A refresh request may omit client authentication even though devices are
// confidential clients (a deviation from RFC 6749 §6): a device whose key
// sits in a slow TPM should not sign every ten minutes. The refresh token
// is then the credential, which is why it rotates on each use, is bound to
// the certificate it was issued under, and a reused one revokes its family.
// If a client assertion is sent with a refresh request it is verified and
// must name the token's device.
func (s *Server) TokenHandler() http.Handler {
	return http.HandlerFunc(s.serveToken)
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	// RFC 6749 §5.1: token responses must not be cached.
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	resp, err := s.token(r)
	if err != nil {
		var oe *oauthError
		if !errors.As(err, &oe) {
			s.cfg.Logger.Error("device token request failed", "err", err, "remote", r.RemoteAddr)
			writeJSON(w, http.StatusInternalServerError, map[string]string{
				"error": "server_error", "error_description": "the server could not complete the request; try again later"})
			return
		}
		if oe.status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodPost)
		}
		writeJSON(w, oe.status, map[string]string{"error": oe.code, "error_description": descSafe(oe.desc)})
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) token(r *http.Request) (*tokenResponse, error) {
	if r.Method != http.MethodPost {
		return nil, &oauthError{http.StatusMethodNotAllowed, "invalid_request", "the token endpoint takes POST"}
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, invalidRequest("Content-Type must be application/x-www-form-urlencoded")
	}
	if r.Header.Get("Authorization") != "" {
		// RFC 6749 §2.3: one authentication method per request.
		return nil, invalidRequest("authenticate with client_assertion only, not an Authorization header")
	}
	if r.ContentLength > MaxFormLen {
		return nil, &oauthError{http.StatusRequestEntityTooLarge, "invalid_request", fmt.Sprintf("request body larger than %d bytes", MaxFormLen)}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxFormLen+1))
	if err != nil {
		return nil, invalidRequest("could not read the request body")
	}
	if len(body) > MaxFormLen {
		return nil, &oauthError{http.StatusRequestEntityTooLarge, "invalid_request", fmt.Sprintf("request body larger than %d bytes", MaxFormLen)}
	}
	form, err := parseForm(body)
	if err != nil {
		return nil, invalidRequest("%v", err)
	}
	ctx := r.Context()
	switch g := form["grant_type"]; g {
	case wire.GrantClientCredentials:
		return s.clientCredentials(ctx, form, r.RemoteAddr)
	case wire.GrantRefreshToken:
		return s.refresh(ctx, form, r.RemoteAddr)
	case "":
		return nil, invalidRequest("grant_type is missing")
	default:
		return nil, &oauthError{http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q is not supported (use client_credentials or refresh_token)", clip(g))}
	}
}

// authenticateClient verifies the private_key_jwt client authentication
// in form and returns the device's identity.
func (s *Server) authenticateClient(ctx context.Context, form map[string]string, remote string) (Identity, error) {
	if form["client_assertion"] == "" {
		return Identity{}, invalidClient("client authentication required: send client_assertion_type=" + wire.ClientAssertionType + " and a client_assertion JWT signed by the device key")
	}
	if t := form["client_assertion_type"]; t != wire.ClientAssertionType {
		return Identity{}, invalidClient("client_assertion_type must be " + wire.ClientAssertionType)
	}
	j, err := parseJWS(form["client_assertion"])
	if err != nil {
		return Identity{}, invalidClient(err.Error())
	}
	c := &j.claims
	if c.iss != c.sub {
		return Identity{}, invalidClient("claims iss and sub must both be the client ID <tenant>/<device>")
	}
	if id := form["client_id"]; id != "" && id != c.sub {
		return Identity{}, invalidClient("client_id does not match the assertion's sub")
	}
	tenant, device, err := wire.ParseDeviceClientID(c.sub)
	if err != nil {
		return Identity{}, invalidClient(err.Error())
	}
	if !s.audienceOK(c.aud) {
		return Identity{}, invalidClient("claim aud must be this token endpoint's URL, " + s.cfg.Audiences[0])
	}
	now := s.cfg.Clock()
	exp, iat := time.Unix(c.exp, 0), time.Unix(c.iat, 0)
	switch {
	case !now.Before(exp.Add(ClockSkew)):
		return Identity{}, invalidClient("the assertion has expired (exp); make a new one for each request")
	case iat.After(now.Add(ClockSkew)):
		return Identity{}, invalidClient("the assertion was issued in the future (iat); check the device clock")
	case exp.Sub(iat) > MaxAssertionLifetime, exp.After(now.Add(MaxAssertionLifetime + ClockSkew)):
		return Identity{}, invalidClient(fmt.Sprintf("the assertion lives longer than %v (exp - iat)", MaxAssertionLifetime))
	case c.hasNBF && time.Unix(c.nbf, 0).After(now.Add(ClockSkew)):
		return Identity{}, invalidClient("the assertion is not valid yet (nbf); check the device clock")
	}

	key, serial, err := s.cfg.Keys.CurrentKey(ctx, tenant, device)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		return Identity{}, invalidClient(errBadSignature.Error())
	case err != nil:
		return Identity{}, fmt.Errorf("deviceauth: looking up the key of %s/%s: %w", tenant, device, err)
	}
	if err := verifySignature(j.alg, key, j.signingInput, j.sig); err != nil {
		return Identity{}, invalidClient(err.Error())
	}
	id := Identity{Tenant: tenant, Device: device, CertSerial: serial}

	if err := s.usable(ctx, id, "", remote); err != nil {
		return Identity{}, err
	}

	// Single use: first this process's cache, then the shared store, so
	// a replay to another node is refused too. Checked after the signature
	// so that nobody but the device can spend its jtis.
	k := assertionKey(c.sub, c.jti)
	until := exp.Add(ClockSkew)
	replayed := !s.replay.add(k, until, now)
	if !replayed {
		if err := s.cfg.Store.UseAssertionID(ctx, k, until, now); errors.Is(err, ErrReused) {
			replayed = true
		} else if err != nil {
			return Identity{}, fmt.Errorf("deviceauth: recording assertion ID: %w", err)
		}
	}
	if replayed {
		s.cfg.Events.SecurityEvent(ctx, Event{Type: EventAssertionReplay, Time: now, Tenant: tenant, Device: device,
			RemoteAddr: remote, Detail: "a client assertion was presented again"})
		return Identity{}, invalidClient("the assertion was already used; make a new one with a fresh jti for each request")
	}
	return id, nil
}

func (s *Server) audienceOK(aud []string) bool {
	for _, a := range aud {
		for _, want := range s.cfg.Audiences {
			if a == want {
				return true
			}
		}
	}
	return false
}

// usable asks DeviceStatus whether id may hold tokens. A refusal is a
// security event and an audit entry, and revokes family if one is given.
func (s *Server) usable(ctx context.Context, id Identity, family, remote string) error {
	err := s.cfg.Status.Usable(ctx, id.Tenant, id.Device, id.CertSerial)
	if err == nil {
		return nil
	}
	if !errors.Is(err, ErrRefused) {
		return fmt.Errorf("deviceauth: checking status of %s/%s: %w", id.Tenant, id.Device, err)
	}
	if family != "" {
		if rerr := s.cfg.Store.RevokeFamily(ctx, family); rerr != nil {
			return fmt.Errorf("deviceauth: revoking token family: %w", rerr)
		}
	}
	now := s.cfg.Clock()
	s.cfg.Events.SecurityEvent(ctx, Event{Type: EventRefused, Time: now, Tenant: id.Tenant, Device: id.Device,
		Family: family, RemoteAddr: remote, Detail: err.Error()})
	s.audit(ctx, AuditEntry{Actor: actor(id), Action: "device_token.issue", Target: "certificate:" + id.CertSerial,
		Tenant: id.Tenant, Result: "denied", Detail: err.Error()})
	if family != "" {
		return invalidGrant("the device may not authenticate: its certificate is revoked or it is disabled")
	}
	return invalidClient("the device may not authenticate: its certificate is revoked or it is disabled")
}

func (s *Server) audit(ctx context.Context, e AuditEntry) {
	if err := s.cfg.Auditor.Audit(ctx, e); err != nil {
		s.cfg.Logger.Error("device token audit entry lost", "action", e.Action, "tenant", e.Tenant, "err", err)
	}
}

func actor(id Identity) string { return "device:" + wire.DeviceClientID(id.Tenant, id.Device) }

func (s *Server) clientCredentials(ctx context.Context, form map[string]string, remote string) (*tokenResponse, error) {
	id, err := s.authenticateClient(ctx, form, remote)
	if err != nil {
		return nil, err
	}
	fam, err := newFamily()
	if err != nil {
		return nil, err
	}
	now := s.cfg.Clock()
	// Routine issuance is not audited: at fleet scale it would drown the
	// audit log. Refusals and family revocations are.
	return s.issue(ctx, id, fam, now, now.Add(s.cfg.RefreshAbsoluteLifetime))
}

// issue stores and returns an access token and a refresh token of family.
func (s *Server) issue(ctx context.Context, id Identity, family string, now, familyExp time.Time) (*tokenResponse, error) {
	at, ah, err := newSecret(accessPrefix)
	if err != nil {
		return nil, err
	}
	rt, rh, err := newSecret(refreshPrefix)
	if err != nil {
		return nil, err
	}
	base := Token{Family: family, Tenant: id.Tenant, Device: id.Device, CertSerial: id.CertSerial,
		IssuedAt: now, FamilyExpiresAt: familyExp}
	access, refresh := base, base
	access.Hash, access.Kind, access.ExpiresAt = ah, KindAccess, now.Add(s.cfg.AccessTokenLifetime)
	refresh.Hash, refresh.Kind = rh, KindRefresh
	refresh.ExpiresAt = now.Add(s.cfg.RefreshIdleLifetime)
	if refresh.ExpiresAt.After(familyExp) {
		refresh.ExpiresAt = familyExp
	}
	if access.ExpiresAt.After(familyExp) {
		access.ExpiresAt = familyExp
	}
	if err := s.cfg.Store.PutTokens(ctx, []Token{access, refresh}); err != nil {
		return nil, fmt.Errorf("deviceauth: storing tokens: %w", err)
	}
	return &tokenResponse{AccessToken: at, TokenType: "Bearer",
		ExpiresIn: int64(access.ExpiresAt.Sub(now) / time.Second), RefreshToken: rt}, nil
}

func (s *Server) refresh(ctx context.Context, form map[string]string, remote string) (*tokenResponse, error) {
	presented := form["refresh_token"]
	if presented == "" {
		return nil, invalidRequest("refresh_token is missing")
	}
	var client *Identity
	if form["client_assertion"] != "" || form["client_assertion_type"] != "" {
		id, err := s.authenticateClient(ctx, form, remote)
		if err != nil {
			return nil, err
		}
		client = &id
	}
	const unknown = "the refresh token is unknown, expired or revoked; authenticate again with client credentials"
	h, ok := hashToken(presented, refreshPrefix)
	if !ok {
		return nil, invalidGrant(unknown)
	}
	now := s.cfg.Clock()
	tok, err := s.cfg.Store.UseRefreshToken(ctx, h, now)
	switch {
	case errors.Is(err, ErrReused) && tok != nil:
		return nil, s.reused(ctx, tok, now, remote)
	case errors.Is(err, ErrNotFound):
		return nil, invalidGrant(unknown)
	case err != nil:
		return nil, fmt.Errorf("deviceauth: using refresh token: %w", err)
	}
	if subtle.ConstantTimeCompare(tok.Hash[:], h[:]) != 1 || tok.Kind != KindRefresh {
		return nil, invalidGrant(unknown)
	}
	if !now.Before(tok.ExpiresAt) {
		return nil, invalidGrant(unknown)
	}
	id := Identity{Tenant: tok.Tenant, Device: tok.Device, CertSerial: tok.CertSerial}
	if client != nil && (client.Tenant != id.Tenant || client.Device != id.Device) {
		// Another device holds this device's refresh token: it was
		// stolen, so the family goes as for a reuse.
		if err := s.cfg.Store.RevokeFamily(ctx, tok.Family); err != nil {
			return nil, fmt.Errorf("deviceauth: revoking token family: %w", err)
		}
		s.cfg.Events.SecurityEvent(ctx, Event{Type: EventRefreshWrongClient, Time: now, Tenant: tok.Tenant, Device: tok.Device,
			Family: tok.Family, RemoteAddr: remote, Detail: "refresh token presented by " + actor(*client) + "; its token family is revoked"})
		s.audit(ctx, AuditEntry{Actor: actor(*client), Action: "device_token.revoke_family", Target: "token-family:" + tok.Family,
			Tenant: tok.Tenant, Result: "denied", Detail: "refresh token of " + actor(id) + " presented by another device"})
		return nil, invalidGrant("the refresh token was not issued to the authenticated client")
	}
	if err := s.usable(ctx, id, tok.Family, remote); err != nil {
		return nil, err
	}
	// Tokens follow the certificate: after a renewal the device proves
	// possession of its new key before it gets tokens bound to it.
	_, serial, err := s.cfg.Keys.CurrentKey(ctx, id.Tenant, id.Device)
	switch {
	case errors.Is(err, ErrUnknownDevice):
		return nil, invalidGrant(unknown)
	case err != nil:
		return nil, fmt.Errorf("deviceauth: looking up the key of %s/%s: %w", id.Tenant, id.Device, err)
	}
	if serial != id.CertSerial {
		return nil, invalidGrant("the device has a new certificate since this token family began; authenticate again with client credentials signed by its key")
	}
	return s.issue(ctx, id, tok.Family, now, tok.FamilyExpiresAt)
}

// reused handles a refresh token presented a second time: someone holds a
// copy. Which of the two presenters is the device is unknowable, so the
// whole family goes, including the tokens the first use produced.
func (s *Server) reused(ctx context.Context, tok *Token, now time.Time, remote string) error {
	if err := s.cfg.Store.RevokeFamily(ctx, tok.Family); err != nil {
		return fmt.Errorf("deviceauth: revoking token family after reuse: %w", err)
	}
	id := Identity{Tenant: tok.Tenant, Device: tok.Device, CertSerial: tok.CertSerial}
	s.cfg.Events.SecurityEvent(ctx, Event{Type: EventRefreshReuse, Time: now, Tenant: tok.Tenant, Device: tok.Device,
		Family: tok.Family, RemoteAddr: remote, Detail: "a used refresh token was presented again; its token family is revoked"})
	s.audit(ctx, AuditEntry{Actor: actor(id), Action: "device_token.revoke_family", Target: "token-family:" + tok.Family,
		Tenant: tok.Tenant, Result: "denied", Detail: "refresh token reuse from " + remote})
	return invalidGrant("the refresh token was already used, so every token of its family is revoked; authenticate again with client credentials")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// descSafe keeps error_description within the characters RFC 6749 §5.2
// allows (%x20-21 / %x23-5B / %x5D-7E).
func descSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b[i] = '\''
		}
	}
	return string(b)
}

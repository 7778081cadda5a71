// Package httpauth authenticates a device to Ward's device API over HTTPS
// with OAuth 2.0 tokens, for devices that post instead of holding an MQTT
// session.
//
// The device proves possession of its certificate key with a short-lived
// JWT client assertion (RFC 7523 private_key_jwt) signed by a
// crypto.Signer (a file key, a PKCS#11 token or a TPM from agent/keystore),
// exchanges it for an access token and a refresh token, and from then on
// refreshes without signing. Refresh tokens rotate on every use; the server
// revokes the whole token family if an old one comes back, so a Client
// never sends one twice, and falls back to a fresh assertion whenever a
// refresh is refused.
package httpauth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/wardiot/ward/wire"
)

const (
	// AssertionLifetime is how long a client assertion is valid. It is
	// used within a second of being made; the slack covers a slow network.
	// The server refuses more than five minutes.
	AssertionLifetime = time.Minute
	// renewMargin: an access token this close to expiry is renewed before
	// use, so that it does not expire in flight.
	renewMargin = 30 * time.Second
	// maxResponseLen bounds what is read of a token endpoint response.
	maxResponseLen = 16 << 10
)

// Config configures a [Client].
type Config struct {
	// BaseURL is the server's HTTPS origin, e.g. https://ward.example.com.
	BaseURL string
	// Audience is the aud of client assertions. It defaults to BaseURL +
	// wire.TokenPath, which is what the server expects unless it sits
	// behind a proxy that rewrites the origin.
	Audience string
	Tenant   string
	Device   string
	// Signer is the device's certificate key.
	Signer crypto.Signer
	// HTTPClient carries the requests; it should trust the server's CA.
	// nil means http.DefaultClient.
	HTTPClient *http.Client
	// Clock is for tests; nil means time.Now.
	Clock func() time.Time
}

// Client holds a device's tokens. It is safe for concurrent use.
type Client struct {
	cfg      Config
	clientID string

	mu        sync.Mutex
	access    string
	accessExp time.Time
	refresh   string
}

// New returns a Client, or an error if cfg is incomplete or the signer's
// key type is not supported.
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == "" || cfg.Signer == nil {
		return nil, errors.New("httpauth: BaseURL and Signer are required")
	}
	if err := wire.ValidateTenantID(cfg.Tenant); err != nil {
		return nil, fmt.Errorf("httpauth: %w", err)
	}
	if err := wire.ValidateDeviceID(cfg.Device); err != nil {
		return nil, fmt.Errorf("httpauth: %w", err)
	}
	if _, err := algorithm(cfg.Signer.Public()); err != nil {
		return nil, err
	}
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	if cfg.Audience == "" {
		cfg.Audience = cfg.BaseURL + wire.TokenPath
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Client{cfg: cfg, clientID: wire.DeviceClientID(cfg.Tenant, cfg.Device)}, nil
}

// algorithm returns the JWS alg for a public key type.
func algorithm(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ES256", nil
		case elliptic.P384():
			return "ES384", nil
		}
	case ed25519.PublicKey:
		return "EdDSA", nil
	case *rsa.PublicKey:
		return "PS256", nil
	}
	return "", fmt.Errorf("httpauth: unsupported key type %T", pub)
}

var b64 = base64.RawURLEncoding

// Assertion returns a fresh signed client assertion: a JWT whose iss and
// sub are the client ID, aud the token endpoint, and jti random.
func (c *Client) Assertion() (string, error) {
	return SignAssertion(c.cfg.Signer, c.clientID, c.cfg.Audience, c.cfg.Clock())
}

// SignAssertion makes a client assertion for clientID ("<tenant>/<device>")
// and audience, valid from now for [AssertionLifetime], signed by signer.
func SignAssertion(signer crypto.Signer, clientID, audience string, now time.Time) (string, error) {
	alg, err := algorithm(signer.Public())
	if err != nil {
		return "", err
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	h, _ := json.Marshal(map[string]string{"alg": alg, "typ": "JWT"})
	p, err := json.Marshal(map[string]any{
		"iss": clientID, "sub": clientID, "aud": audience,
		"iat": now.Unix(), "exp": now.Add(AssertionLifetime).Unix(),
		"jti": b64.EncodeToString(jti[:]),
	})
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(p)
	sig, err := sign(signer, alg, []byte(input))
	if err != nil {
		return "", fmt.Errorf("httpauth: signing the client assertion: %w", err)
	}
	return input + "." + b64.EncodeToString(sig), nil
}

func sign(signer crypto.Signer, alg string, input []byte) ([]byte, error) {
	switch alg {
	case "EdDSA":
		return signer.Sign(rand.Reader, input, crypto.Hash(0))
	case "PS256":
		d := sha256.Sum256(input)
		return signer.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	}
	var digest []byte
	var size int
	var h crypto.Hash
	if alg == "ES256" {
		d := sha256.Sum256(input)
		digest, size, h = d[:], 32, crypto.SHA256
	} else {
		d := sha512.Sum384(input)
		digest, size, h = d[:], 48, crypto.SHA384
	}
	der, err := signer.Sign(rand.Reader, digest, h)
	if err != nil {
		return nil, err
	}
	// JWS wants R and S as fixed-size big-endian integers (RFC 7518
	// §3.4), crypto.Signer gives ASN.1 DER.
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		return nil, errors.New("signer returned a malformed ECDSA signature")
	}
	if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 8*size || rs.S.BitLen() > 8*size {
		return nil, errors.New("signer returned an out-of-range ECDSA signature")
	}
	out := make([]byte, 2*size)
	rs.R.FillBytes(out[:size])
	rs.S.FillBytes(out[size:])
	return out, nil
}

// TokenError is an error response of the token endpoint (RFC 6749 §5.2).
type TokenError struct {
	Status      int
	Code        string // invalid_client, invalid_grant, ...
	Description string
}

func (e *TokenError) Error() string {
	return fmt.Sprintf("httpauth: token endpoint: %d %s: %s", e.Status, e.Code, e.Description)
}

// Token returns a valid access token, getting one if needed: by refreshing
// when the Client holds a refresh token, otherwise (or when the refresh is
// refused) with a new client assertion.
func (c *Client) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.access != "" && c.cfg.Clock().Add(renewMargin).Before(c.accessExp) {
		return c.access, nil
	}
	return c.renewLocked(ctx)
}

// Invalidate drops the access token, e.g. after the server refused it. The
// refresh token is kept.
func (c *Client) Invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.access = ""
}

func (c *Client) renewLocked(ctx context.Context) (string, error) {
	c.access = ""
	if rt := c.refresh; rt != "" {
		// A refresh token is sent once, whatever the outcome: resending
		// it after a lost response would look like theft and revoke the
		// family.
		c.refresh = ""
		err := c.exchangeLocked(ctx, url.Values{"grant_type": {wire.GrantRefreshToken}, "refresh_token": {rt}})
		if err == nil {
			return c.access, nil
		}
		var te *TokenError
		if !errors.As(err, &te) {
			return "", err
		}
		// Refused (expired, revoked, new certificate): start over.
	}
	a, err := c.Assertion()
	if err != nil {
		return "", err
	}
	err = c.exchangeLocked(ctx, url.Values{
		"grant_type":            {wire.GrantClientCredentials},
		"client_assertion_type": {wire.ClientAssertionType},
		"client_assertion":      {a},
	})
	if err != nil {
		return "", err
	}
	return c.access, nil
}

func (c *Client) exchangeLocked(ctx context.Context, form url.Values) error {
	now := c.cfg.Clock()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.BaseURL+wire.TokenPath, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("httpauth: token request: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseLen))
	if err != nil {
		return fmt.Errorf("httpauth: reading token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &e)
		return &TokenError{Status: resp.StatusCode, Code: e.Error, Description: e.Description}
	}
	var tr struct {
		AccessToken  string `json:"access_token"`
		TokenType    string `json:"token_type"`
		ExpiresIn    int64  `json:"expires_in"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(body, &tr); err != nil || tr.AccessToken == "" || !strings.EqualFold(tr.TokenType, "Bearer") || tr.ExpiresIn <= 0 {
		return errors.New("httpauth: the token endpoint's response is not a Bearer token response")
	}
	c.access, c.accessExp, c.refresh = tr.AccessToken, now.Add(time.Duration(tr.ExpiresIn)*time.Second), tr.RefreshToken
	return nil
}

// Do sends req with the access token. If the server answers 401 it gets a
// new token and sends the request once more; a request with a body must
// then have GetBody set (http.NewRequest sets it for bytes and strings
// readers), otherwise the 401 is returned.
func (c *Client) Do(req *http.Request) (*http.Response, error) {
	tok, err := c.Token(req.Context())
	if err != nil {
		return nil, err
	}
	r1 := req.Clone(req.Context())
	r1.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.cfg.HTTPClient.Do(r1)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseLen))
	resp.Body.Close()

	c.mu.Lock()
	if c.access == tok { // not already renewed by a concurrent request
		c.access = ""
	}
	c.mu.Unlock()
	if tok, err = c.Token(req.Context()); err != nil {
		return nil, err
	}
	r2 := req.Clone(req.Context())
	if req.GetBody != nil {
		if r2.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	r2.Header.Set("Authorization", "Bearer "+tok)
	return c.cfg.HTTPClient.Do(r2)
}

// StatusError is a device API refusal, with the problem+json detail the
// server gave.
type StatusError struct {
	Status int
	Title  string
	Detail string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("httpauth: server answered %d %s: %s", e.Status, e.Title, e.Detail)
}

// PostTelemetry posts one COSE envelope to the device's telemetry stream.
// It returns nil when the server accepted it (202), a *StatusError when it
// refused it.
func (c *Client) PostTelemetry(ctx context.Context, stream string, envelope []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.BaseURL+wire.DeviceTelemetryPrefix+url.PathEscape(stream), bytes.NewReader(envelope))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", wire.ContentTypeCOSE)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseLen))
	if resp.StatusCode == http.StatusAccepted {
		return nil
	}
	var p struct {
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	_ = json.Unmarshal(body, &p)
	return &StatusError{Status: resp.StatusCode, Title: p.Title, Detail: p.Detail}
}

package deviceauth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/agent/httpauth"
	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/internal/deviceauth/deviceauthtest"
	"github.com/wardiot/ward/wire"
)

const (
	tenant = "acme"
	device = "sensor-1"
	serial = "1a2b3c"
)

// clock is the injected clock: tests move it, never sleep.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeIngest records deliveries; reject makes it refuse them as the
// telemetry verifier would.
type fakeIngest struct {
	mu     sync.Mutex
	got    []delivery
	reject error
}

type delivery struct {
	id    deviceauth.Identity
	topic string
	raw   []byte
}

func (f *fakeIngest) Deliver(ctx context.Context, id deviceauth.Identity, topic string, raw []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reject != nil {
		return f.reject
	}
	f.got = append(f.got, delivery{id, topic, append([]byte(nil), raw...)})
	return nil
}

func (f *fakeIngest) deliveries() []delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]delivery(nil), f.got...)
}

type env struct {
	t      testing.TB
	clk    *clock
	store  *deviceauthtest.Store
	devs   *deviceauthtest.Devices
	rec    *deviceauthtest.Recorder
	ingest *fakeIngest
	srv    *deviceauth.Server
	ts     *httptest.Server
	key    *ecdsa.PrivateKey
	aud    string
}

func newEnv(t testing.TB, mod ...func(*deviceauth.Config)) *env {
	t.Helper()
	e := &env{
		t:      t,
		clk:    &clock{t: time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)},
		store:  deviceauthtest.NewStore(),
		devs:   deviceauthtest.NewDevices(),
		rec:    &deviceauthtest.Recorder{},
		ingest: &fakeIngest{},
	}
	mux := http.NewServeMux()
	e.ts = httptest.NewTLSServer(mux) // listens on 127.0.0.1:0
	t.Cleanup(e.ts.Close)
	e.aud = e.ts.URL + wire.TokenPath
	e.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.devs.Set(tenant, device, e.key.Public(), serial)
	cfg := deviceauth.Config{
		Audiences: []string{e.aud},
		Store:     e.store, Keys: e.devs, Status: e.devs, Events: e.rec, Auditor: e.rec, Ingest: e.ingest,
		Clock: e.clk.Now,
	}
	for _, m := range mod {
		m(&cfg)
	}
	srv, err := deviceauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	srv.Register(mux)
	return e
}

var b64 = base64.RawURLEncoding

// jwt builds a compact JWS from raw JSON header and claims, signed by
// sign (nil for an empty signature).
func jwt(header, claims string, sign func(input []byte) []byte) string {
	in := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(claims))
	var sig []byte
	if sign != nil {
		sig = sign([]byte(in))
	}
	return in + "." + b64.EncodeToString(sig)
}

func es256(k *ecdsa.PrivateKey) func([]byte) []byte {
	return func(in []byte) []byte {
		d := sha256.Sum256(in)
		r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
		if err != nil {
			panic(err)
		}
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out
	}
}

func eddsa(k ed25519.PrivateKey) func([]byte) []byte {
	return func(in []byte) []byte { return ed25519.Sign(k, in) }
}

var jtiCounter struct {
	sync.Mutex
	n int
}

func nextJTI() string {
	jtiCounter.Lock()
	defer jtiCounter.Unlock()
	jtiCounter.n++
	return fmt.Sprintf("jti-%d", jtiCounter.n)
}

// claims returns valid claims as JSON, with fields overridden by set
// (a nil value deletes the claim).
func (e *env) claims(set map[string]any) string {
	now := e.clk.Now().Unix()
	c := map[string]any{
		"iss": tenant + "/" + device, "sub": tenant + "/" + device, "aud": e.aud,
		"iat": now, "exp": now + 60, "jti": nextJTI(),
	}
	for k, v := range set {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// assertion is a valid ES256 assertion from the device key.
func (e *env) assertion() string {
	return jwt(`{"alg":"ES256","typ":"JWT"}`, e.claims(nil), es256(e.key))
}

type tokenReply struct {
	status       int
	header       http.Header
	Error        string `json:"error"`
	Description  string `json:"error_description"`
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
}

func (e *env) postForm(body string) tokenReply {
	e.t.Helper()
	resp, err := e.ts.Client().Post(e.aud, "application/x-www-form-urlencoded", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var r tokenReply
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &r); err != nil {
		e.t.Fatalf("token endpoint answered %d with a body that is not JSON: %q", resp.StatusCode, b)
	}
	r.status, r.header = resp.StatusCode, resp.Header
	return r
}

func (e *env) clientCredentials(assertion string) tokenReply {
	e.t.Helper()
	return e.postForm(url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {wire.ClientAssertionType},
		"client_assertion":      {assertion},
	}.Encode())
}

func (e *env) refresh(rt string) tokenReply {
	e.t.Helper()
	return e.postForm(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}.Encode())
}

// mustIssue gets a token pair with a fresh assertion.
func (e *env) mustIssue() tokenReply {
	e.t.Helper()
	r := e.clientCredentials(e.assertion())
	if r.status != 200 {
		e.t.Fatalf("client credentials: %d %s: %s", r.status, r.Error, r.Description)
	}
	return r
}

// bearer calls Authenticate with an access token.
func (e *env) bearer(at string) (deviceauth.Identity, error) {
	r := httptest.NewRequest(http.MethodPost, "/x", nil)
	r.Header.Set("Authorization", "Bearer "+at)
	return e.srv.Authenticate(r)
}

func (e *env) postTelemetry(at, stream, ctype string, body []byte) (*http.Response, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.ts.URL+wire.DeviceTelemetryPrefix+stream, strings.NewReader(string(body)))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if at != "" {
		req.Header.Set("Authorization", "Bearer "+at)
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (e *env) events(typ string) []deviceauth.Event {
	var out []deviceauth.Event
	for _, ev := range e.rec.Events() {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// countingSigner counts signatures, to tell refreshes from new assertions.
type countingSigner struct {
	crypto.Signer
	mu sync.Mutex
	n  int
}

func (c *countingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.Signer.Sign(r, d, o)
}

func (c *countingSigner) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func (e *env) client(s crypto.Signer, clk func() time.Time) *httpauth.Client {
	e.t.Helper()
	c, err := httpauth.New(httpauth.Config{BaseURL: e.ts.URL, Tenant: tenant, Device: device, Signer: s,
		HTTPClient: e.ts.Client(), Clock: clk})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// postTo calls a handler directly with a form body.
func postTo(h http.Handler, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, wire.TokenPath, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

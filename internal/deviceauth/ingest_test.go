package deviceauth_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent/httpauth"
	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/wire"
)

func problemOf(t *testing.T, resp *http.Response, body []byte, status int) string {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var p struct {
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(body, &p); err != nil || p.Status != status || p.Detail == "" {
		t.Fatalf("problem body %q", body)
	}
	return p.Detail
}

func TestTelemetryIngest(t *testing.T) {
	envelope := []byte{0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26} // bytes are the verifier's business
	tests := map[string]func(t *testing.T, e *env){
		"ok/accepted-with-valid-token": func(t *testing.T, e *env) {
			at := e.mustIssue().AccessToken
			resp, body := e.postTelemetry(at, "temperature", wire.ContentTypeCOSE, envelope)
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			got := e.ingest.deliveries()
			if len(got) != 1 || got[0].topic != "ward/v1/sensor-1/telemetry/temperature" ||
				!bytes.Equal(got[0].raw, envelope) || got[0].id.Tenant != tenant || got[0].id.Device != device || got[0].id.CertSerial != serial {
				t.Fatalf("deliveries %+v", got)
			}
		},
		"fail/refused-without-token": func(t *testing.T, e *env) {
			resp, body := e.postTelemetry("", "temperature", wire.ContentTypeCOSE, envelope)
			problemOf(t, resp, body, 401)
			if c := resp.Header.Get("WWW-Authenticate"); c != `Bearer realm="ward-device"` {
				t.Fatalf("challenge %q", c)
			}
			resp, body = e.postTelemetry("wardat_"+strings.Repeat("A", 43), "temperature", wire.ContentTypeCOSE, envelope)
			problemOf(t, resp, body, 401)
			if c := resp.Header.Get("WWW-Authenticate"); !strings.Contains(c, `error="invalid_token"`) {
				t.Fatalf("challenge %q", c)
			}
			if len(e.ingest.deliveries()) != 0 {
				t.Fatal("an unauthenticated message was delivered")
			}
		},
		"fail/refresh-token-as-bearer": func(t *testing.T, e *env) {
			resp, body := e.postTelemetry(e.mustIssue().RefreshToken, "temperature", wire.ContentTypeCOSE, envelope)
			problemOf(t, resp, body, 401)
		},
		"fail/oversized-body": func(t *testing.T, e *env) {
			at := e.mustIssue().AccessToken
			resp, body := e.postTelemetry(at, "temperature", wire.ContentTypeCOSE, make([]byte, wire.MaxEnvelopeSize+1))
			problemOf(t, resp, body, 413)
			resp, body = e.postTelemetry(at, "temperature", wire.ContentTypeCOSE, make([]byte, wire.MaxEnvelopeSize))
			if resp.StatusCode != 202 {
				t.Fatalf("an envelope of exactly the limit: %d %s", resp.StatusCode, body)
			}
		},
		"fail/rate-limited": func(t *testing.T, e *env) {
			at := e.mustIssue().AccessToken
			for i := range 3 {
				if resp, body := e.postTelemetry(at, "s", wire.ContentTypeCOSE, envelope); resp.StatusCode != 202 {
					t.Fatalf("message %d within the burst: %d %s", i, resp.StatusCode, body)
				}
			}
			for range 2 {
				resp, body := e.postTelemetry(at, "s", wire.ContentTypeCOSE, envelope)
				problemOf(t, resp, body, 429)
				if resp.Header.Get("Retry-After") != "1" {
					t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
				}
			}
			if n := len(e.events(deviceauth.EventRateLimited)); n != 1 {
				t.Fatalf("%d rate-limit events for one burst, want 1", n)
			}
			e.clk.Advance(time.Second)
			if resp, body := e.postTelemetry(at, "s", wire.ContentTypeCOSE, envelope); resp.StatusCode != 202 {
				t.Fatalf("after refill: %d %s", resp.StatusCode, body)
			}
		},
		"fail/rejected-by-verifier": func(t *testing.T, e *env) {
			e.ingest.reject = fmt.Errorf("%w: telemetry rejected: replay", deviceauth.ErrRejected)
			resp, body := e.postTelemetry(e.mustIssue().AccessToken, "s", wire.ContentTypeCOSE, envelope)
			if d := problemOf(t, resp, body, 400); !strings.Contains(d, "replay") {
				t.Fatalf("detail %q", d)
			}
		},
		"fail/ingest-infrastructure-error": func(t *testing.T, e *env) {
			e.ingest.reject = errors.New("nats: connection closed at /var/lib/secret/path")
			resp, body := e.postTelemetry(e.mustIssue().AccessToken, "s", wire.ContentTypeCOSE, envelope)
			if d := problemOf(t, resp, body, 503); strings.Contains(d, "nats") {
				t.Fatalf("internal error leaked: %q", d)
			}
		},
		"fail/wrong-content-type": func(t *testing.T, e *env) {
			resp, body := e.postTelemetry(e.mustIssue().AccessToken, "s", "application/json", []byte("{}"))
			problemOf(t, resp, body, 415)
		},
		"fail/bad-stream-name": func(t *testing.T, e *env) {
			at := e.mustIssue().AccessToken
			for _, s := range []string{"a.b", "%2B", "x%2Fy", strings.Repeat("a", 65)} {
				resp, body := e.postTelemetry(at, s, wire.ContentTypeCOSE, envelope)
				problemOf(t, resp, body, 400)
			}
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			test(t, newEnv(t, func(c *deviceauth.Config) { c.Rate = deviceauth.RateLimit{PerSecond: 1, Burst: 3} }))
		})
	}
}

func TestMiddleware(t *testing.T) {
	e := newEnv(t)
	var seen deviceauth.Identity
	h := e.srv.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, _ = deviceauth.IdentityFrom(r.Context())
		w.WriteHeader(204)
	}))
	at := e.mustIssue().AccessToken
	for name, tc := range map[string]struct {
		auth   []string
		status int
	}{
		"ok/bearer":                {[]string{"Bearer " + at}, 204},
		"ok/scheme-case":           {[]string{"bearer " + at}, 204},
		"fail/no-header":           {nil, 401},
		"fail/basic-scheme":        {[]string{"Basic " + at}, 400},
		"fail/two-headers":         {[]string{"Bearer " + at, "Bearer " + at}, 400},
		"fail/overlong-token":      {[]string{"Bearer " + at + strings.Repeat("A", 100)}, 401},
		"fail/token-one-char-off":  {[]string{"Bearer " + at[:len(at)-1] + "B"}, 401},
		"fail/token-in-query-only": {nil, 401},
	} {
		t.Run(name, func(t *testing.T) {
			seen = deviceauth.Identity{}
			r, _ := http.NewRequest("GET", "/x?access_token="+at, nil)
			for _, a := range tc.auth {
				r.Header.Add("Authorization", a)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if (tc.status == 204) != (seen.Device == device) {
				t.Fatalf("identity in context: %+v", seen)
			}
		})
	}
}

// TestClient runs the device-side helper against the handlers.
func TestClient(t *testing.T) {
	t.Run("ok/assertion-once-then-refresh", func(t *testing.T) {
		e := newEnv(t)
		s := &countingSigner{Signer: e.key}
		c := e.client(s, e.clk.Now)
		for i := range 4 {
			if err := c.PostTelemetry(t.Context(), "temperature", []byte{1}); err != nil {
				t.Fatalf("post %d: %v", i, err)
			}
			e.clk.Advance(9*time.Minute + 31*time.Second) // inside the renew margin each time
		}
		if s.count() != 1 {
			t.Fatalf("%d assertions signed, want 1 (refreshes after that)", s.count())
		}
		if len(e.ingest.deliveries()) != 4 {
			t.Fatalf("%d deliveries", len(e.ingest.deliveries()))
		}
	})
	t.Run("ok/retries-once-on-401", func(t *testing.T) {
		e := newEnv(t)
		s := &countingSigner{Signer: e.key}
		clientClock := &clock{t: e.clk.Now()}
		c := e.client(s, clientClock.Now)
		if err := c.PostTelemetry(t.Context(), "s", []byte{1}); err != nil {
			t.Fatal(err)
		}
		// The server's clock runs ahead: it sees the token expired while
		// the device thinks it fresh. The device refreshes and retries.
		e.clk.Advance(11 * time.Minute)
		if err := c.PostTelemetry(t.Context(), "s", []byte{2}); err != nil {
			t.Fatal(err)
		}
		if s.count() != 1 || len(e.ingest.deliveries()) != 2 {
			t.Fatalf("signatures %d, deliveries %d", s.count(), len(e.ingest.deliveries()))
		}
	})
	t.Run("ok/refused-refresh-falls-back-to-assertion", func(t *testing.T) {
		e := newEnv(t)
		s := &countingSigner{Signer: e.key}
		c := e.client(s, e.clk.Now)
		if err := c.PostTelemetry(t.Context(), "s", []byte{1}); err != nil {
			t.Fatal(err)
		}
		e.devs.Set(tenant, device, e.key.Public(), "renewed") // new certificate, same key
		e.clk.Advance(11 * time.Minute)
		if err := c.PostTelemetry(t.Context(), "s", []byte{2}); err != nil {
			t.Fatal(err)
		}
		if s.count() != 2 {
			t.Fatalf("%d assertions, want 2", s.count())
		}
		if got := e.ingest.deliveries()[1].id.CertSerial; got != "renewed" {
			t.Fatalf("second message under certificate %q", got)
		}
	})
	t.Run("fail/revoked-device-gets-status-error", func(t *testing.T) {
		e := newEnv(t)
		c := e.client(e.key, e.clk.Now)
		if err := c.PostTelemetry(t.Context(), "s", []byte{1}); err != nil {
			t.Fatal(err)
		}
		e.devs.Revoke(serial)
		err := c.PostTelemetry(t.Context(), "s", []byte{2})
		var te *httpauth.TokenError
		if !errors.As(err, &te) || te.Code != "invalid_client" {
			t.Fatalf("after revocation: %v", err)
		}
	})
	keys := map[string]func() crypto.Signer{
		"ok/es256": func() crypto.Signer { k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader); return k },
		"ok/es384": func() crypto.Signer { k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader); return k },
		"ok/eddsa": func() crypto.Signer { _, k, _ := ed25519.GenerateKey(rand.Reader); return k },
		"ok/ps256": func() crypto.Signer { k, _ := rsa.GenerateKey(rand.Reader, 2048); return k },
	}
	for name, mk := range keys {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			k := mk()
			e.devs.Set(tenant, device, k.Public(), "k")
			if err := e.client(k, e.clk.Now).PostTelemetry(t.Context(), "s", []byte{1}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

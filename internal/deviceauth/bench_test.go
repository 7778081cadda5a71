package deviceauth_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/wardiot/ward/wire"
)

// BenchmarkTokenEndpointES256 measures one client credentials grant
// through the handler: form parsing, ES256 assertion verification, replay
// checks and storing two token hashes (in memory). Assertions are signed
// before the timer starts.
func BenchmarkTokenEndpointES256(b *testing.B) {
	e := newEnv(b)
	h := e.srv.TokenHandler()
	bodies := make([]string, b.N)
	for i := range bodies {
		bodies[i] = url.Values{"grant_type": {"client_credentials"},
			"client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {e.assertion()}}.Encode()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := httptest.NewRequest(http.MethodPost, wire.TokenPath, strings.NewReader(bodies[i]))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// BenchmarkAuthenticateBearer measures checking one access token: hash,
// store lookup (in memory), constant-time compare, expiry and status.
func BenchmarkAuthenticateBearer(b *testing.B) {
	e := newEnv(b)
	at := e.mustIssue().AccessToken
	r := httptest.NewRequest(http.MethodPost, "/api/device/v1/telemetry/s", nil)
	r.Header.Set("Authorization", "Bearer "+at)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.srv.Authenticate(r); err != nil {
			b.Fatal(err)
		}
	}
}

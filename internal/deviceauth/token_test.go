package deviceauth_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/wire"
)

// refused checks an RFC 6749 §5.2 error response.
func refused(t *testing.T, r tokenReply, status int, code, descPart string) {
	t.Helper()
	if r.status != status || r.Error != code {
		t.Fatalf("got %d %s (%s), want %d %s", r.status, r.Error, r.Description, status, code)
	}
	if r.AccessToken != "" || r.RefreshToken != "" {
		t.Fatal("an error response carries tokens")
	}
	if !strings.Contains(r.Description, descPart) {
		t.Fatalf("error_description %q does not mention %q", r.Description, descPart)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Fatal("error response without Cache-Control: no-store")
	}
}

func TestTokenEndpoint(t *testing.T) {
	tests := map[string]func(t *testing.T, e *env){
		"ok/client-credentials": func(t *testing.T, e *env) {
			r := e.clientCredentials(e.assertion())
			if r.status != 200 || r.TokenType != "Bearer" || r.ExpiresIn != 600 || r.RefreshToken == "" {
				t.Fatalf("got %+v", r)
			}
			if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Content-Type") != "application/json" {
				t.Fatalf("headers %v", r.header)
			}
			// 256 random bits, base64url, behind the prefix.
			if raw, err := b64.DecodeString(strings.TrimPrefix(r.AccessToken, "wardat_")); err != nil || len(raw) != 32 {
				t.Fatalf("access token %q is not 32 random bytes", r.AccessToken)
			}
			id, err := e.bearer(r.AccessToken)
			if err != nil {
				t.Fatal(err)
			}
			if id != (deviceauth.Identity{Tenant: tenant, Device: device, CertSerial: serial}) {
				t.Fatalf("identity %+v", id)
			}
		},
		"ok/client-credentials-ed25519": func(t *testing.T, e *env) {
			pub, priv, _ := ed25519.GenerateKey(rand.Reader)
			e.devs.Set(tenant, device, pub, "77")
			r := e.clientCredentials(jwt(`{"alg":"EdDSA"}`, e.claims(nil), eddsa(priv)))
			if r.status != 200 {
				t.Fatalf("%d %s: %s", r.status, r.Error, r.Description)
			}
		},
		"ok/aud-array-and-client-id-param": func(t *testing.T, e *env) {
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"aud": []string{"https://other", e.aud}}), es256(e.key))
			r := e.postForm(url.Values{"grant_type": {"client_credentials"}, "client_id": {tenant + "/" + device},
				"client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {a}, "scope": {"ignored"}}.Encode())
			if r.status != 200 {
				t.Fatalf("%d %s: %s", r.status, r.Error, r.Description)
			}
		},
		"ok/refresh-rotates": func(t *testing.T, e *env) {
			first := e.mustIssue()
			e.clk.Advance(5 * time.Minute)
			second := e.refresh(first.RefreshToken)
			if second.status != 200 {
				t.Fatalf("%d %s: %s", second.status, second.Error, second.Description)
			}
			if second.RefreshToken == first.RefreshToken || second.AccessToken == first.AccessToken || second.RefreshToken == "" {
				t.Fatal("refresh did not rotate both tokens")
			}
			if _, err := e.bearer(second.AccessToken); err != nil {
				t.Fatal(err)
			}
			// The older access token lives out its lifetime.
			if _, err := e.bearer(first.AccessToken); err != nil {
				t.Fatalf("the previous access token was cut short: %v", err)
			}
			third := e.refresh(second.RefreshToken)
			if third.status != 200 {
				t.Fatalf("second rotation: %d %s: %s", third.status, third.Error, third.Description)
			}
		},
		"fail/refresh-reuse-revokes-family": func(t *testing.T, e *env) {
			first := e.mustIssue()
			second := e.refresh(first.RefreshToken)
			if second.status != 200 {
				t.Fatalf("%d %s", second.status, second.Error)
			}
			other := e.mustIssue() // another family of the same device
			refused(t, e.refresh(first.RefreshToken), 400, "invalid_grant", "already used")
			for name, at := range map[string]string{"first": first.AccessToken, "rotated": second.AccessToken} {
				if _, err := e.bearer(at); !errors.Is(err, deviceauth.ErrUnauthenticated) {
					t.Fatalf("%s access token of the revoked family: %v", name, err)
				}
			}
			refused(t, e.refresh(second.RefreshToken), 400, "invalid_grant", "unknown, expired or revoked")
			if _, err := e.bearer(other.AccessToken); err != nil {
				t.Fatalf("another family was revoked too: %v", err)
			}
			evs := e.events(deviceauth.EventRefreshReuse)
			if len(evs) != 1 || evs[0].Tenant != tenant || evs[0].Device != device || evs[0].Family == "" {
				t.Fatalf("reuse events: %+v", evs)
			}
			audits := e.rec.Audits()
			if len(audits) != 1 || audits[0].Action != "device_token.revoke_family" || audits[0].Result != "denied" ||
				audits[0].Target != "token-family:"+evs[0].Family || audits[0].Actor != "device:acme/sensor-1" {
				t.Fatalf("audit entries: %+v", audits)
			}
			for _, s := range []string{first.RefreshToken, second.RefreshToken, first.AccessToken} {
				if strings.Contains(evs[0].Detail+audits[0].Detail, s) {
					t.Fatal("a token leaked into an event or audit entry")
				}
			}
		},
		"ok/refresh-with-client-assertion": func(t *testing.T, e *env) {
			r := e.mustIssue()
			n := e.postForm(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {r.RefreshToken},
				"client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {e.assertion()}}.Encode())
			if n.status != 200 {
				t.Fatalf("%d %s: %s", n.status, n.Error, n.Description)
			}
		},
		"fail/refresh-by-another-device": func(t *testing.T, e *env) {
			r := e.mustIssue()
			k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			e.devs.Set(tenant, "sensor-2", k2.Public(), "2222")
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"iss": "acme/sensor-2", "sub": "acme/sensor-2"}), es256(k2))
			n := e.postForm(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {r.RefreshToken},
				"client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {a}}.Encode())
			refused(t, n, 400, "invalid_grant", "not issued to the authenticated client")
			if _, err := e.bearer(r.AccessToken); err == nil {
				t.Fatal("the family of a refresh token presented by another device survived")
			}
			if len(e.events(deviceauth.EventRefreshWrongClient)) != 1 || len(e.rec.Audits()) != 1 {
				t.Fatalf("events %+v audits %+v", e.rec.Events(), e.rec.Audits())
			}
			// A failed client assertion stops the refresh before the token is spent.
			bad := e.postForm(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {r.RefreshToken},
				"client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {"x.y.z"}}.Encode())
			refused(t, bad, 401, "invalid_client", "")
		},
		"fail/refresh-idle-expiry": func(t *testing.T, e *env) {
			r := e.mustIssue()
			e.clk.Advance(deviceauth.DefaultRefreshIdleLifetime)
			refused(t, e.refresh(r.RefreshToken), 400, "invalid_grant", "expired")
		},
		"fail/refresh-absolute-expiry": func(t *testing.T, e *env) {
			r := e.mustIssue()
			start := e.clk.Now()
			for {
				e.clk.Advance(23 * time.Hour)
				n := e.refresh(r.RefreshToken)
				if n.status != 200 {
					refused(t, n, 400, "invalid_grant", "expired")
					break
				}
				if got := e.clk.Now().Sub(start); got > deviceauth.DefaultRefreshAbsoluteLifetime {
					t.Fatalf("refresh still works %v after the grant", got)
				}
				r = n
			}
			if got := e.clk.Now().Sub(start); got < deviceauth.DefaultRefreshAbsoluteLifetime-23*time.Hour {
				t.Fatalf("family ended after %v", got)
			}
		},
		"fail/refresh-after-certificate-renewal": func(t *testing.T, e *env) {
			r := e.mustIssue()
			k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			e.devs.Set(tenant, device, k2.Public(), "ffff")
			refused(t, e.refresh(r.RefreshToken), 400, "invalid_grant", "new certificate")
		},
		"fail/refresh-token-garbage": func(t *testing.T, e *env) {
			refused(t, e.refresh("wardrt_"+strings.Repeat("A", 43)), 400, "invalid_grant", "unknown")
			refused(t, e.refresh("not-a-token"), 400, "invalid_grant", "unknown")
			r := e.mustIssue()
			refused(t, e.refresh(r.AccessToken), 400, "invalid_grant", "unknown")
		},
		"fail/expired-assertion": func(t *testing.T, e *env) {
			now := e.clk.Now().Unix()
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"iat": now - 300, "exp": now - 61}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "expired")
		},
		"fail/assertion-lifetime-too-long": func(t *testing.T, e *env) {
			now := e.clk.Now().Unix()
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"exp": now + 3600}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "longer than")
		},
		"fail/assertion-from-the-future": func(t *testing.T, e *env) {
			now := e.clk.Now().Unix()
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"iat": now + 120, "exp": now + 180}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "future")
		},
		"fail/assertion-replay": func(t *testing.T, e *env) {
			a := e.assertion()
			if r := e.clientCredentials(a); r.status != 200 {
				t.Fatalf("first use: %d %s", r.status, r.Error)
			}
			refused(t, e.clientCredentials(a), 401, "invalid_client", "already used")
			// Same jti in a newly signed assertion: still a replay.
			c := e.claims(map[string]any{"jti": "fixed"})
			if r := e.clientCredentials(jwt(`{"alg":"ES256"}`, c, es256(e.key))); r.status != 200 {
				t.Fatal(r.Description)
			}
			refused(t, e.clientCredentials(jwt(`{"alg":"ES256"}`, c, es256(e.key))), 401, "invalid_client", "already used")
			if n := len(e.events(deviceauth.EventAssertionReplay)); n != 2 {
				t.Fatalf("%d replay events, want 2", n)
			}
		},
		"fail/assertion-replay-to-another-node": func(t *testing.T, e *env) {
			// A second server sharing the store, as a second node would.
			node2, err := deviceauth.New(deviceauth.Config{Audiences: []string{e.aud}, Store: e.store, Keys: e.devs,
				Status: e.devs, Events: e.rec, Auditor: e.rec, Clock: e.clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			a := e.assertion()
			if r := e.clientCredentials(a); r.status != 200 {
				t.Fatal(r.Description)
			}
			w := postTo(node2.TokenHandler(), url.Values{"grant_type": {"client_credentials"},
				"client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {a}}.Encode())
			if w.Code != 401 || !strings.Contains(w.Body.String(), "already used") {
				t.Fatalf("replay to node 2: %d %s", w.Code, w.Body)
			}
		},
		"fail/wrong-audience": func(t *testing.T, e *env) {
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"aud": "https://evil.example/oauth/token"}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "aud")
		},
		"fail/alg-none": func(t *testing.T, e *env) {
			refused(t, e.clientCredentials(jwt(`{"alg":"none"}`, e.claims(nil), nil)), 401, "invalid_client", "unsigned")
			a := jwt(`{"alg":"none"}`, e.claims(nil), func([]byte) []byte { return []byte("x") })
			refused(t, e.clientCredentials(a), 401, "invalid_client", "alg none")
		},
		"fail/alg-mismatch": func(t *testing.T, e *env) {
			// The classic confusion: HS256 keyed with the public key, in
			// each encoding a naive verifier might use as "the key".
			der, _ := x509.MarshalPKIXPublicKey(e.key.Public())
			pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
			raw, _ := e.key.PublicKey.Bytes()
			for _, secret := range [][]byte{der, pemKey, raw} {
				a := jwt(`{"alg":"HS256","typ":"JWT"}`, e.claims(nil), func(in []byte) []byte {
					m := hmac.New(sha256.New, secret)
					m.Write(in)
					return m.Sum(nil)
				})
				refused(t, e.clientCredentials(a), 401, "invalid_client", "does not fit")
			}
			// An Ed25519 signature declared for the ECDSA key.
			_, priv, _ := ed25519.GenerateKey(rand.Reader)
			refused(t, e.clientCredentials(jwt(`{"alg":"EdDSA"}`, e.claims(nil), eddsa(priv))), 401, "invalid_client", "does not fit")
			refused(t, e.clientCredentials(jwt(`{"alg":"ES384"}`, e.claims(nil), es256(e.key))), 401, "invalid_client", "does not fit")
		},
		"fail/signed-by-other-device-key": func(t *testing.T, e *env) {
			k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			e.devs.Set(tenant, "sensor-2", k2.Public(), "2222")
			// sensor-2 claims to be sensor-1.
			refused(t, e.clientCredentials(jwt(`{"alg":"ES256"}`, e.claims(nil), es256(k2))), 401, "invalid_client", "does not verify")
			// Unknown devices get the same answer: no enumeration.
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"iss": "acme/ghost", "sub": "acme/ghost"}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "does not verify")
		},
		"fail/revoked-cert": func(t *testing.T, e *env) {
			r := e.mustIssue()
			e.devs.Revoke(serial)
			if _, err := e.bearer(r.AccessToken); !errors.Is(err, deviceauth.ErrUnauthenticated) {
				t.Fatalf("access token under a revoked certificate: %v", err)
			}
			refused(t, e.refresh(r.RefreshToken), 400, "invalid_grant", "revoked")
			refused(t, e.clientCredentials(e.assertion()), 401, "invalid_client", "does not verify")
			if len(e.events(deviceauth.EventRefused)) != 1 {
				t.Fatalf("events: %+v", e.rec.Events())
			}
		},
		"fail/disabled-device": func(t *testing.T, e *env) {
			e.devs.Disable(tenant, device)
			refused(t, e.clientCredentials(e.assertion()), 401, "invalid_client", "may not authenticate")
			evs := e.events(deviceauth.EventRefused)
			audits := e.rec.Audits()
			if len(evs) != 1 || len(audits) != 1 || audits[0].Result != "denied" {
				t.Fatalf("events %+v audits %+v", evs, audits)
			}
		},
		"fail/expired-access-token": func(t *testing.T, e *env) {
			r := e.mustIssue()
			e.clk.Advance(deviceauth.DefaultAccessTokenLifetime - time.Second)
			if _, err := e.bearer(r.AccessToken); err != nil {
				t.Fatalf("just before expiry: %v", err)
			}
			e.clk.Advance(time.Second)
			_, err := e.bearer(r.AccessToken)
			var ae *deviceauth.AuthError
			if !errors.As(err, &ae) || ae.Code != "invalid_token" || !strings.Contains(ae.Description, "expired") {
				t.Fatalf("expired access token: %v", err)
			}
		},
		"fail/oversized-body": func(t *testing.T, e *env) {
			body := "grant_type=client_credentials&client_assertion=" + strings.Repeat("A", deviceauth.MaxFormLen)
			r := e.postForm(body)
			if r.status != 413 || r.Error != "invalid_request" {
				t.Fatalf("got %d %s", r.status, r.Error)
			}
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"pad": strings.Repeat("x", deviceauth.MaxAssertionLen)}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "longer than")
		},
		"fail/header-jwk-not-trusted": func(t *testing.T, e *env) {
			// An attacker's own key, offered in the header.
			k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			x, y := k2.X.Bytes(), k2.Y.Bytes()
			h := `{"alg":"ES256","jwk":{"kty":"EC","crv":"P-256","x":"` + b64.EncodeToString(x) + `","y":"` + b64.EncodeToString(y) + `"}}`
			refused(t, e.clientCredentials(jwt(h, e.claims(nil), es256(k2))), 401, "invalid_client", "jwk")
			refused(t, e.clientCredentials(jwt(`{"alg":"ES256","jku":"https://evil/"}`, e.claims(nil), es256(e.key))), 401, "invalid_client", "jku")
			refused(t, e.clientCredentials(jwt(`{"alg":"ES256","crit":["exp"]}`, e.claims(nil), es256(e.key))), 401, "invalid_client", "crit")
		},
		"fail/duplicate-json-keys": func(t *testing.T, e *env) {
			c := e.claims(nil)
			c = strings.Replace(c, `"sub":`, `"sub":"acme/other","sub":`, 1)
			refused(t, e.clientCredentials(jwt(`{"alg":"ES256"}`, c, es256(e.key))), 401, "invalid_client", "duplicate")
			refused(t, e.clientCredentials(jwt(`{"alg":"HS256","alg":"ES256"}`, e.claims(nil), es256(e.key))), 401, "invalid_client", "duplicate")
		},
		"fail/padded-base64": func(t *testing.T, e *env) {
			a := e.assertion()
			parts := strings.Split(a, ".")
			parts[2] += "=="
			refused(t, e.clientCredentials(strings.Join(parts, ".")), 401, "invalid_client", "base64url")
			refused(t, e.clientCredentials(a+".x"), 401, "invalid_client", "compact")
		},
		"fail/iss-sub-mismatch": func(t *testing.T, e *env) {
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"iss": "acme/sensor-2"}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "iss and sub")
		},
		"fail/missing-jti": func(t *testing.T, e *env) {
			a := jwt(`{"alg":"ES256"}`, e.claims(map[string]any{"jti": nil}), es256(e.key))
			refused(t, e.clientCredentials(a), 401, "invalid_client", "jti")
		},
		"fail/missing-client-authentication": func(t *testing.T, e *env) {
			refused(t, e.postForm("grant_type=client_credentials"), 401, "invalid_client", "client authentication required")
			a := e.assertion()
			refused(t, e.postForm(url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {"urn:x"},
				"client_assertion": {a}}.Encode()), 401, "invalid_client", "client_assertion_type")
		},
		"fail/duplicate-form-parameter": func(t *testing.T, e *env) {
			refused(t, e.postForm("grant_type=client_credentials&grant_type=refresh_token"), 400, "invalid_request", "more than once")
		},
		"fail/unsupported-grant-type": func(t *testing.T, e *env) {
			refused(t, e.postForm("grant_type=password&username=a&password=b"), 400, "unsupported_grant_type", "password")
			refused(t, e.postForm("client_assertion=x"), 400, "invalid_request", "grant_type")
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) { test(t, newEnv(t)) })
	}
}

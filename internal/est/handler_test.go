package est_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/wire"
)

const label = "acme"

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrDER makes a CSR signed by key.
func csrDER(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// post builds an enrollment request the way RFC 7030 clients send it.
func post(op string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, wire.ESTPath(label, op), bytes.NewReader(body))
	r.Header.Set("Content-Type", wire.ESTContentTypePKCS10)
	return r
}

func bearer(r *http.Request, tok string) *http.Request {
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

// withPeer makes r look as if it came over TLS with a client chain.
func withPeer(r *http.Request, certs ...*x509.Certificate) *http.Request {
	r.TLS = &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: certs}
	return r
}

// brokenCA wraps the test CA to misbehave in the ways a real CA might.
type brokenCA struct {
	*esttest.CA
	enroll func(*est.Request) ([]*x509.Certificate, error)
}

func (b brokenCA) Enroll(_ context.Context, r *est.Request) ([]*x509.Certificate, error) {
	return b.enroll(r)
}

func TestHandler(t *testing.T) {
	goodCSR := csrDER(t, newKey(t), nil)
	badSig := bytes.Clone(goodCSR)
	badSig[len(badSig)-1] ^= 0x01

	type want struct {
		status  int
		headers map[string]string // header -> substring of its joined values
		body    string            // substring
		caCalls int
	}
	type setup func(t *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option)
	plain := func(r *http.Request) setup {
		return func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) { return nil, r, nil }
	}
	tests := map[string]struct {
		setup setup
		want  want
	}{
		"ok/cacerts": {plain(httptest.NewRequest(http.MethodGet, wire.ESTPath(label, wire.ESTCACerts), nil)),
			want{status: 200, headers: map[string]string{"Content-Type": "smime-type=certs-only", "Content-Transfer-Encoding": "base64"}}},
		"ok/simpleenroll-bearer": {plain(bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1")),
			want{status: 200, headers: map[string]string{"Content-Type": wire.ESTContentTypeCertsOnly, "Content-Transfer-Encoding": "base64"}, caCalls: 1}},
		"ok/simpleenroll-basic": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			r := post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR))
			r.SetBasicAuth("dev-1", "tok-1")
			return nil, r, nil
		}, want{status: 200, caCalls: 1}},
		"ok/simpleenroll-cte-header-one-line": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			r := bearer(post(wire.ESTSimpleEnroll, bytes.ReplaceAll(wire.EncodeBase64Body(goodCSR), []byte("\n"), nil)), "tok-1")
			r.Header.Set("Content-Transfer-Encoding", "BASE64")
			return nil, r, nil
		}, want{status: 200, caCalls: 1}},
		"ok/default-label": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			return nil, httptest.NewRequest(http.MethodGet, wire.ESTPrefix+wire.ESTCACerts, nil), []est.Option{est.WithDefaultLabel(label)}
		}, want{status: 200}},
		"ok/csrattrs-empty": {plain(httptest.NewRequest(http.MethodGet, wire.ESTPath(label, wire.ESTCSRAttrs), nil)),
			want{status: 204}},
		"ok/csrattrs": {func(t *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option) {
			ca.Attrs = mustASN1(t, []asn1.ObjectIdentifier{{1, 2, 840, 10045, 2, 1}})
			return nil, httptest.NewRequest(http.MethodGet, wire.ESTPath(label, wire.ESTCSRAttrs), nil), nil
		}, want{status: 200, headers: map[string]string{"Content-Type": wire.ESTContentTypeCSRAttrs, "Content-Transfer-Encoding": "base64"}}},

		"fail/no-credentials": {plain(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR))),
			want{status: 401, headers: map[string]string{"Www-Authenticate": `Basic realm="ward-est", Bearer realm="ward-est"`}}},
		"fail/token-unknown": {plain(bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "nope")),
			want{status: 403, body: "not valid", caCalls: 1}},
		"fail/basic-user-mismatch": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			r := post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR))
			r.SetBasicAuth("dev-2", "tok-1")
			return nil, r, nil
		}, want{status: 403, caCalls: 1}},
		"fail/method-get-simpleenroll": {plain(bearer(httptest.NewRequest(http.MethodGet, wire.ESTPath(label, wire.ESTSimpleEnroll), nil), "tok-1")),
			want{status: 405, headers: map[string]string{"Allow": "POST"}}},
		"fail/method-post-cacerts": {plain(httptest.NewRequest(http.MethodPost, wire.ESTPath(label, wire.ESTCACerts), nil)),
			want{status: 405, headers: map[string]string{"Allow": "GET"}}},
		"fail/body-too-large": {plain(bearer(post(wire.ESTSimpleEnroll, bytes.Repeat([]byte("A"), est.MaxRequestBodySize+4)), "tok-1")),
			want{status: 413}},
		"fail/body-too-large-chunked": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			r := bearer(post(wire.ESTSimpleEnroll, nil), "tok-1")
			r.Body = io.NopCloser(io.LimitReader(zeros{}, est.MaxRequestBodySize+1))
			r.ContentLength = -1
			return nil, r, nil
		}, want{status: 413}},
		"fail/bad-base64": {plain(bearer(post(wire.ESTSimpleEnroll, []byte("MIIB*not base64*")), "tok-1")),
			want{status: 400, body: "base64"}},
		"fail/empty-body": {plain(bearer(post(wire.ESTSimpleEnroll, nil), "tok-1")),
			want{status: 400}},
		"fail/not-a-csr": {plain(bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body([]byte{0x30, 0x03, 0x02, 0x01, 0x00})), "tok-1")),
			want{status: 400, body: "not a valid PKCS#10"}},
		"fail/bad-csr-signature": {plain(bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(badSig)), "tok-1")),
			want{status: 400, body: "proof of possession"}},
		"fail/der-not-base64": {plain(bearer(post(wire.ESTSimpleEnroll, goodCSR), "tok-1")),
			want{status: 400}},
		"fail/wrong-content-type": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			r := bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1")
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return nil, r, nil
		}, want{status: 415}},
		"fail/wrong-transfer-encoding": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			r := bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1")
			r.Header.Set("Content-Transfer-Encoding", "binary")
			return nil, r, nil
		}, want{status: 415}},
		"fail/pending": {func(_ *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option) {
			ca.SetPending(90 * time.Second)
			return nil, bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1"), nil
		}, want{status: 202, headers: map[string]string{"Retry-After": "90"}, caCalls: 1}},
		"fail/pending-default-retry": {func(_ *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option) {
			b := brokenCA{CA: ca, enroll: func(*est.Request) ([]*x509.Certificate, error) {
				return nil, fmt.Errorf("queued for approval: %w", &est.Error{Status: 202, Message: "awaiting operator approval"})
			}}
			return b, bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1"), nil
		}, want{status: 202, headers: map[string]string{"Retry-After": "60"}, body: "awaiting operator approval"}},
		"fail/unknown-label-cacerts": {plain(httptest.NewRequest(http.MethodGet, wire.ESTPath("other", wire.ESTCACerts), nil)),
			want{status: 404}},
		"fail/unknown-label-enroll": {func(*testing.T, *esttest.CA) (est.CA, *http.Request, []est.Option) {
			r := bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1")
			r.URL.Path = wire.ESTPath("other", wire.ESTSimpleEnroll)
			return nil, r, nil
		}, want{status: 404, caCalls: 1}},
		"fail/invalid-label": {plain(httptest.NewRequest(http.MethodGet, "/.well-known/est/Bad_Label/cacerts", nil)),
			want{status: 404}},
		"fail/label-traversal": {plain(httptest.NewRequest(http.MethodGet, "/.well-known/est/acme/x/cacerts", nil)),
			want{status: 404}},
		"fail/no-label-without-default": {plain(httptest.NewRequest(http.MethodGet, wire.ESTPrefix+wire.ESTCACerts, nil)),
			want{status: 404, body: "needs an EST label"}},
		"fail/unknown-operation": {plain(httptest.NewRequest(http.MethodGet, wire.ESTPath(label, "fullcmc"), nil)),
			want{status: 404}},
		"fail/serverkeygen-disabled": {plain(bearer(post(wire.ESTServerKeyGen, wire.EncodeBase64Body(goodCSR)), "tok-1")),
			want{status: 404, body: "not enabled"}},
		"fail/reenroll-without-client-cert": {plain(bearer(post(wire.ESTSimpleReenroll, wire.EncodeBase64Body(goodCSR)), "tok-1")),
			want{status: 403, body: "TLS client certificate"}},
		"fail/reenroll-identity-changed": {func(t *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option) {
			leaf := enrollDirect(t, ca, "dev-1")
			csr := csrDER(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"},
				URIs: []*url.URL{mustURL(t, wire.DeviceURI(label, "someone-else"))}})
			return nil, withPeer(post(wire.ESTSimpleReenroll, wire.EncodeBase64Body(csr)), leaf), nil
		}, want{status: 400, body: "subjectAltName"}},
		"fail/reenroll-foreign-cert": {func(t *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option) {
			other := esttest.NewCA(t, label)
			other.AddToken("tok-x", "dev-1")
			leaf := enrollDirect(t, other, "dev-1")
			key := newKey(t)
			csr := csrDER(t, key, &x509.CertificateRequest{RawSubject: leaf.RawSubject, URIs: leaf.URIs})
			return nil, withPeer(post(wire.ESTSimpleReenroll, wire.EncodeBase64Body(csr)), leaf), nil
		}, want{status: 403, body: "not one this CA issued", caCalls: 1}},
		"fail/ca-internal-error": {func(_ *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option) {
			b := brokenCA{CA: ca, enroll: func(*est.Request) ([]*x509.Certificate, error) {
				return nil, errors.New("database at /var/lib/ward/secret.db is locked")
			}}
			return b, bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1"), nil
		}, want{status: 500, body: "Internal Server Error"}},
		"fail/ca-issues-for-other-key": {func(t *testing.T, ca *esttest.CA) (est.CA, *http.Request, []est.Option) {
			other := enrollDirect(t, ca, "dev-1")
			b := brokenCA{CA: ca, enroll: func(*est.Request) ([]*x509.Certificate, error) {
				return []*x509.Certificate{other}, nil
			}}
			return b, bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(goodCSR)), "tok-1"), nil
		}, want{status: 500, body: "Internal Server Error"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ca := esttest.NewCA(t, label)
			ca.AddToken("tok-1", "dev-1")
			override, req, opts := tc.setup(t, ca)
			callsBefore := ca.Calls()
			var backend est.CA = ca
			if override != nil {
				backend = override
			}
			var events []est.Event
			opts = append(opts, est.WithObserver(func(e est.Event) { events = append(events, e) }))
			rec := httptest.NewRecorder()
			mustNew(t, backend, opts...).ServeHTTP(rec, req)

			if rec.Code != tc.want.status {
				t.Fatalf("status %d, want %d; body %q", rec.Code, tc.want.status, rec.Body.String())
			}
			for h, sub := range tc.want.headers {
				if got := strings.Join(rec.Header().Values(h), ", "); !strings.Contains(got, sub) {
					t.Errorf("%s: %q, want it to contain %q", h, got, sub)
				}
			}
			if !strings.Contains(rec.Body.String(), tc.want.body) {
				t.Errorf("body %q, want it to contain %q", rec.Body.String(), tc.want.body)
			}
			if got := ca.Calls() - callsBefore; got != tc.want.caCalls {
				t.Errorf("CA called %d times, want %d", got, tc.want.caCalls)
			}
			if len(events) != 1 || events[0].Status != rec.Code {
				t.Fatalf("observer saw %+v, want one event with status %d", events, rec.Code)
			}
			if rec.Code >= 400 && events[0].Err == nil {
				t.Errorf("observer event for a failure has no error")
			}
			// Credentials never leak into responses or events.
			for _, secret := range []string{"tok-1", "nope"} {
				if strings.Contains(rec.Body.String(), secret) || strings.Contains(fmt.Sprintf("%+v %v", events[0], events[0].Err), secret) {
					t.Errorf("secret %q leaked into the response or the event", secret)
				}
			}
			if rec.Code == 500 && strings.Contains(rec.Body.String(), "/var/lib") {
				t.Errorf("internal error detail leaked: %q", rec.Body.String())
			}
			if rec.Code == 200 && strings.HasPrefix(rec.Header().Get("Content-Type"), "application/pkcs7-mime") {
				certs := decodeCerts(t, rec.Body.Bytes())
				if strings.Contains(name, "enroll") && len(certs) != 1 {
					t.Errorf("enroll answered %d certificates, want only the issued one", len(certs))
				}
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'A'
	}
	return len(p), nil
}

func mustASN1(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func decodeCerts(t testing.TB, body []byte) []*x509.Certificate {
	t.Helper()
	der, err := wire.DecodeBase64Body(body)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := wire.DecodeCertsOnly(der)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// enrollDirect enrolls device with ca through the handler and returns the
// certificate, using a fresh token.
func enrollDirect(t *testing.T, ca *esttest.CA, device string) *x509.Certificate {
	t.Helper()
	tok := "direct-" + device + "-" + fmt.Sprint(ca.Calls())
	ca.AddToken(tok, device)
	rec := httptest.NewRecorder()
	mustNew(t, ca).ServeHTTP(rec, bearer(post(wire.ESTSimpleEnroll, wire.EncodeBase64Body(csrDER(t, newKey(t), nil))), tok))
	if rec.Code != 200 {
		t.Fatalf("enrolling %s: %d %s", device, rec.Code, rec.Body)
	}
	return decodeCerts(t, rec.Body.Bytes())[0]
}

var (
	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSHA256WithECDSA = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
)

func mustNew(t testing.TB, ca est.CA, opts ...est.Option) *est.Handler {
	t.Helper()
	h, err := est.New(ca, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := est.New(nil); err == nil {
		t.Error("New(nil) succeeded")
	}
	if _, err := est.New(esttest.NewCA(t, label), est.WithDefaultLabel("Not/A/Label")); err == nil {
		t.Error("an invalid default label was accepted")
	}
}

func TestConfigureTLS(t *testing.T) {
	cfg := &tls.Config{}
	est.ConfigureTLS(cfg)
	if cfg.ClientAuth != tls.RequestClientCert || cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("got ClientAuth %v, MinVersion %x", cfg.ClientAuth, cfg.MinVersion)
	}
	// A server that already verifies client certificates keeps doing so.
	cfg = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13}
	est.ConfigureTLS(cfg)
	if cfg.ClientAuth != tls.VerifyClientCertIfGiven || cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("got ClientAuth %v, MinVersion %x", cfg.ClientAuth, cfg.MinVersion)
	}
}

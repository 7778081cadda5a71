package provision_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
)

// hookEnv is an env whose x509 group calls an httptest TLS hook.
type hookEnv struct {
	*env
	maker  *ca
	secret []byte
}

func newHookEnv(t *testing.T, timeout time.Duration, h func(e *hookEnv, w http.ResponseWriter, r *http.Request)) *hookEnv {
	t.Helper()
	he := &hookEnv{secret: provision.NewWebhookSecret()}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h(he, w, r) }))
	t.Cleanup(srv.Close)
	he.env = newEnv(t, func(c *provision.Config) { c.HTTPClient = srv.Client(); c.WebhookTimeout = timeout })
	he.maker = newCA(t, "Maker")
	g := x509Group("acme", "sensors", he.maker)
	g.ID = provision.NewGroupID()
	sealed, err := he.sealer(t, "acme").Seal(he.secret, provision.WebhookSecretAAD(g.ID))
	if err != nil {
		t.Fatal(err)
	}
	g.Webhook = &provision.Webhook{URL: srv.URL + "/hook", SealedSecret: sealed}
	he.putGroup(t, g)
	return he
}

func (he *hookEnv) enroll(t *testing.T, dev string) (*provision.Enrollment, error) {
	leaf, _ := he.maker.leaf(t, dev)
	return he.p.Enroll(context.Background(), "acme.sensors", &provision.Request{CSR: csr(t, newKey(t), dev), PeerCertificates: []*x509.Certificate{leaf}})
}

// verified reads and authenticates a hook call as a hook author would.
func (he *hookEnv) verified(t *testing.T, r *http.Request) *provision.WebhookRequest {
	body, _ := io.ReadAll(r.Body)
	if err := provision.VerifyWebhook(he.secret, r.Header, body, he.clock.Now()); err != nil {
		t.Errorf("hook: %v", err)
		return nil
	}
	var req provision.WebhookRequest
	if err := json.Unmarshal(body, &req); err != nil {
		t.Errorf("hook body: %v", err)
		return nil
	}
	return &req
}

func TestWebhookApprovesWithOverrides(t *testing.T) {
	he := newHookEnv(t, time.Second, func(he *hookEnv, w http.ResponseWriter, r *http.Request) {
		req := he.verified(t, r)
		if req == nil || req.DeviceID != "dev-1" || req.Tenant != "acme" || req.Group != "sensors" || *req.Template.Profile != "device" {
			t.Errorf("hook got %+v", req)
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"allow":true,"template":{"profile":"short","lifetime_seconds":3600,"tags":{"site":"berlin"},"twin":{"mode":"eco"}}}`)
	})
	en, err := he.enroll(t, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	tm := en.Template
	if tm.Profile != "short" || tm.Lifetime != time.Hour || tm.Tags["site"] != "berlin" || tm.Policy != "sensor" || string(tm.Twin) != `{"mode":"eco"}` {
		t.Fatalf("template %+v", tm)
	}
	// The group's own template is untouched.
	g, _ := he.store.GetGroup(context.Background(), "acme", "sensors")
	if g.Template.Profile != "device" || g.Template.Tags["site"] != "" {
		t.Fatalf("group template changed: %+v", g.Template)
	}
}

func TestWebhookDenied(t *testing.T) {
	he := newHookEnv(t, time.Second, func(he *hookEnv, w http.ResponseWriter, r *http.Request) {
		he.verified(t, r)
		io.WriteString(w, `{"allow":false,"reason":"not in inventory"}`)
	})
	en, err := he.enroll(t, "dev-1")
	he.assertRefused(t, en, err, provision.ReasonWebhookDenied)
	if _, err := he.store.GetDevice(context.Background(), "acme", "dev-1"); !errors.Is(err, provision.ErrNotFound) {
		t.Fatal("denied device registered")
	}
}

func TestWebhookTimeout(t *testing.T) {
	release := make(chan struct{})
	he := newHookEnv(t, 50*time.Millisecond, func(he *hookEnv, w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body) // so the server notices the client hanging up
		select {           // hang until the client gives up
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	en, err := he.enroll(t, "dev-1")
	he.assertRefused(t, en, err, provision.ReasonWebhookTimeout)
}

func TestWebhookFailsClosed(t *testing.T) {
	for name, answer := range map[string]func(w http.ResponseWriter){
		"fail/500":      func(w http.ResponseWriter) { w.WriteHeader(500) },
		"fail/no-allow": func(w http.ResponseWriter) { io.WriteString(w, `{"reason":"x"}`) },
		"fail/not-json": func(w http.ResponseWriter) { io.WriteString(w, `yes`) },
		"fail/redirect": func(w http.ResponseWriter) {
			w.Header().Set("Location", "https://example.invalid/")
			w.WriteHeader(307)
		},
		"fail/bad-template": func(w http.ResponseWriter) { io.WriteString(w, `{"allow":true,"template":{"twin":[1,2]}}`) },
	} {
		t.Run(name, func(t *testing.T) {
			he := newHookEnv(t, time.Second, func(he *hookEnv, w http.ResponseWriter, r *http.Request) { answer(w) })
			en, err := he.enroll(t, "dev-1")
			he.assertRefused(t, en, err, provision.ReasonWebhookFailed)
		})
	}
}

func TestVerifyWebhook(t *testing.T) {
	secret := provision.NewWebhookSecret()
	body := []byte(`{"version":1}`)
	now := t0
	signed := func() http.Header {
		h := http.Header{}
		provision.SignWebhook(h, secret, body, now)
		return h
	}
	if err := provision.VerifyWebhook(secret, signed(), body, now.Add(time.Minute)); err != nil {
		t.Fatalf("ok: %v", err)
	}
	for name, tc := range map[string]struct {
		h    func() http.Header
		body []byte
		at   time.Time
		key  []byte
	}{
		"fail/tampered-body": {h: signed, body: []byte(`{"version":2}`), at: now, key: secret},
		"fail/wrong-secret":  {h: signed, body: body, at: now, key: provision.NewWebhookSecret()},
		"fail/stale":         {h: signed, body: body, at: now.Add(provision.MaxWebhookSkew + time.Second), key: secret},
		"fail/future":        {h: signed, body: body, at: now.Add(-provision.MaxWebhookSkew - time.Second), key: secret},
		"fail/no-signature": {h: func() http.Header {
			h := signed()
			h.Del(provision.HeaderWebhookSignature)
			return h
		}, body: body, at: now, key: secret},
		"fail/timestamp-swapped": {h: func() http.Header {
			h := signed()
			h.Set(provision.HeaderWebhookTimestamp, "1780315201")
			return h
		}, body: body, at: now, key: secret},
	} {
		t.Run(name, func(t *testing.T) {
			if err := provision.VerifyWebhook(tc.key, tc.h(), tc.body, tc.at); !errors.Is(err, provision.ErrWebhookSignature) {
				t.Fatalf("got %v, want ErrWebhookSignature", err)
			}
		})
	}
	// Rotation: a second signature by the new secret is accepted.
	h := signed()
	other := http.Header{}
	newSecret := provision.NewWebhookSecret()
	provision.SignWebhook(other, newSecret, body, now)
	h.Set(provision.HeaderWebhookSignature, h.Get(provision.HeaderWebhookSignature)+","+other.Get(provision.HeaderWebhookSignature))
	if err := provision.VerifyWebhook(newSecret, h, body, now); err != nil {
		t.Fatalf("rotation: %v", err)
	}
}

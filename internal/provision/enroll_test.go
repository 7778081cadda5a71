package provision_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
)

func TestEnrollRefusesBeforeAuthenticating(t *testing.T) {
	maker := newCA(t, "Maker")
	leaf, _ := maker.leaf(t, "dev-1")
	for name, tc := range map[string]struct {
		label string
		req   func(t *testing.T) *provision.Request
		want  provision.Reason
	}{
		"fail/no-credential": {"acme.sensors", func(t *testing.T) *provision.Request {
			return &provision.Request{CSR: csr(t, newKey(t), "dev-1")}
		}, provision.ReasonNoCredential},
		"fail/unknown-bearer": {"acme.sensors", func(t *testing.T) *provision.Request {
			return &provision.Request{CSR: csr(t, newKey(t), "dev-1"), BearerToken: "wardapi_x"}
		}, provision.ReasonNoCredential},
		"fail/bad-label": {"ACME/..", func(t *testing.T) *provision.Request {
			return &provision.Request{CSR: csr(t, newKey(t), "dev-1"), PeerCertificates: []*x509.Certificate{leaf}}
		}, provision.ReasonUnknownGroup},
		"fail/unknown-group": {"acme.nope", func(t *testing.T) *provision.Request {
			return &provision.Request{CSR: csr(t, newKey(t), "dev-1"), PeerCertificates: []*x509.Certificate{leaf}}
		}, provision.ReasonUnknownGroup},
		"fail/mechanism-of-another-group": {"acme.sensors", func(t *testing.T) *provision.Request {
			return &provision.Request{CSR: csr(t, newKey(t), "dev-1"), BearerToken: "wardgrp_0011223344556677_x"}
		}, provision.ReasonWrongGroup},
		"fail/two-uris-in-csr": {"acme.sensors", func(t *testing.T) *provision.Request {
			return &provision.Request{CSR: csr(t, newKey(t), "dev-1", "urn:ward:acme:device:dev-1", "urn:ward:acme:device:dev-2"), PeerCertificates: []*x509.Certificate{leaf}}
		}, provision.ReasonCSRMismatch},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.putGroup(t, x509Group("acme", "sensors", maker))
			en, err := e.p.Enroll(context.Background(), tc.label, tc.req(t))
			e.assertRefused(t, en, err, tc.want)
		})
	}
}

func TestValidateGroup(t *testing.T) {
	maker := newCA(t, "Maker")
	for name, mod := range map[string]func(g *provision.Group){
		"fail/two-configs":   func(g *provision.Group) { g.Token = &provision.TokenConfig{} },
		"fail/mismatch":      func(g *provision.Group) { g.Mechanism = provision.MechanismTPM },
		"fail/http-webhook":  func(g *provision.Group) { g.Webhook = &provision.Webhook{URL: "http://hook.example/"} },
		"fail/bad-name":      func(g *provision.Group) { g.Name = "Sensors" },
		"fail/twin-array":    func(g *provision.Group) { g.Template.Twin = []byte(`[1]`) },
		"fail/long-lifetime": func(g *provision.Group) { g.Template.Lifetime = provision.MaxLifetime + time.Hour },
	} {
		t.Run(name, func(t *testing.T) {
			g := x509Group("acme", "sensors", maker)
			g.ID = provision.NewGroupID()
			mod(g)
			if err := provision.ValidateGroup(g); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// ExampleVerifyWebhook shows a pre-provisioning hook that approves
// devices whose ID starts with "lab-" and gives them a short lifetime.
func ExampleVerifyWebhook() {
	secret := []byte("the group's webhook secret, 32 b")
	hook := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil || provision.VerifyWebhook(secret, r.Header, body, time.Now()) != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		if strings.Contains(string(body), `"device_id":"lab-`) {
			io.WriteString(w, `{"allow":true,"template":{"lifetime_seconds":86400}}`)
			return
		}
		io.WriteString(w, `{"allow":false,"reason":"not a lab device"}`)
	})
	srv := httptest.NewServer(hook)
	defer srv.Close()

	body := []byte(`{"version":1,"device_id":"lab-7"}`)
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(string(body)))
	provision.SignWebhook(req.Header, secret, body, time.Now())
	resp, _ := http.DefaultClient.Do(req)
	answer, _ := io.ReadAll(resp.Body)
	r, _ := provision.ParseWebhookResponse(answer)
	fmt.Println(*r.Allow, *r.Template.LifetimeSeconds)
	// Output: true 86400
}

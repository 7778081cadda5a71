package provision_test

import (
	"context"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/jointoken"
)

func tokenGroup(t testing.TB, e *env, tenant, name string) *provision.Group {
	return e.putGroup(t, &provision.Group{Tenant: tenant, Name: name, Mechanism: provision.MechanismToken,
		Token: &provision.TokenConfig{MaxTTL: 24 * time.Hour}, Template: provision.Template{Profile: "device"}})
}

func TestTokenEndToEnd(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := tokenGroup(t, e, "acme", "gateways")
	tok, rec, err := jointoken.Mint(ctx, e.store, e.clock.Now(), g, "gw-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Device != "gw-1" || len(rec.Hash) != 32 {
		t.Fatalf("record %+v", rec)
	}
	en := e.mustEnroll(t, "acme.gateways", &provision.Request{CSR: csr(t, newKey(t), "gw-1"), BearerToken: tok})
	if en.DeviceID != "gw-1" || en.Mechanism != provision.MechanismToken {
		t.Fatalf("%+v", en)
	}
	if _, _, err := jointoken.Mint(ctx, e.store, e.clock.Now(), g, "gw-2", 48*time.Hour); err == nil {
		t.Fatal("minted a token over the group's MaxTTL")
	}
}

func TestTokenRefusals(t *testing.T) {
	ctx := context.Background()
	t.Run("fail/reused", func(t *testing.T) {
		e := newEnv(t)
		g := tokenGroup(t, e, "acme", "gateways")
		g.Reprovision = true // so that only single use refuses
		e.store.PutGroup(ctx, g)
		tok, _, _ := jointoken.Mint(ctx, e.store, e.clock.Now(), g, "gw-1", time.Hour)
		e.mustEnroll(t, "acme.gateways", &provision.Request{CSR: csr(t, newKey(t), "gw-1"), BearerToken: tok})
		en, err := e.p.Enroll(ctx, "acme.gateways", &provision.Request{CSR: csr(t, newKey(t), "gw-1"), BearerToken: tok})
		e.assertRefused(t, en, err, provision.ReasonTokenUsed)
	})
	t.Run("fail/expired", func(t *testing.T) {
		e := newEnv(t)
		g := tokenGroup(t, e, "acme", "gateways")
		tok, _, _ := jointoken.Mint(ctx, e.store, e.clock.Now(), g, "gw-1", time.Hour)
		e.clock.Advance(time.Hour)
		en, err := e.p.Enroll(ctx, "acme.gateways", &provision.Request{CSR: csr(t, newKey(t), "gw-1"), BearerToken: tok})
		e.assertRefused(t, en, err, provision.ReasonExpired)
	})
	t.Run("fail/wrong-secret", func(t *testing.T) {
		e := newEnv(t)
		g := tokenGroup(t, e, "acme", "gateways")
		tok, _, _ := jointoken.Mint(ctx, e.store, e.clock.Now(), g, "gw-1", time.Hour)
		bad := tok[:len(tok)-4] + "AAAA"
		en, err := e.p.Enroll(ctx, "acme.gateways", &provision.Request{CSR: csr(t, newKey(t), "gw-1"), BearerToken: bad})
		e.assertRefused(t, en, err, provision.ReasonBadToken)
		// The right token still works: a wrong guess consumes nothing.
		e.mustEnroll(t, "acme.gateways", &provision.Request{CSR: csr(t, newKey(t), "gw-1"), BearerToken: tok})
	})
	t.Run("fail/other-group", func(t *testing.T) {
		e := newEnv(t)
		g := tokenGroup(t, e, "acme", "gateways")
		tokenGroup(t, e, "acme", "cameras")
		tok, _, _ := jointoken.Mint(ctx, e.store, e.clock.Now(), g, "gw-1", time.Hour)
		en, err := e.p.Enroll(ctx, "acme.cameras", &provision.Request{CSR: csr(t, newKey(t), "gw-1"), BearerToken: tok})
		e.assertRefused(t, en, err, provision.ReasonWrongGroup)
	})
	t.Run("fail/csr-names-another-device", func(t *testing.T) {
		e := newEnv(t)
		g := tokenGroup(t, e, "acme", "gateways")
		tok, _, _ := jointoken.Mint(ctx, e.store, e.clock.Now(), g, "gw-1", time.Hour)
		en, err := e.p.Enroll(ctx, "acme.gateways", &provision.Request{CSR: csr(t, newKey(t), "gw-2"), BearerToken: tok})
		e.assertRefused(t, en, err, provision.ReasonCSRMismatch)
	})
}

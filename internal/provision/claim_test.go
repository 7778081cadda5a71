package provision_test

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
)

func TestClaimMovesDevice(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	maker := newCA(t, "Maker")
	e.putGroup(t, x509Group("maker-pool", "factory", maker))
	claimedTmpl := &provision.Group{Tenant: "acme", Name: provision.DefaultClaimGroup, Mechanism: provision.MechanismToken,
		Token: &provision.TokenConfig{}, Template: provision.Template{Policy: "acme-default", Profile: "acme-device"}}
	e.putGroup(t, claimedTmpl)

	code, err := e.p.RegisterClaimable(ctx, "system", "maker-pool", "factory", "dev-9")
	if err != nil {
		t.Fatal(err)
	}
	if len(strings.ReplaceAll(code, "-", "")) != 32 {
		t.Fatalf("code %q", code)
	}
	d, _ := e.store.GetDevice(ctx, "maker-pool", "dev-9")
	if strings.Contains(string(d.ClaimHash), code) || d.ClaimID == "" || len(d.ClaimHash) != 32 || len(d.ClaimSalt) != 16 {
		t.Fatalf("claim stored badly: %+v", d)
	}

	// Before the claim the device enrolls in the pool and stays claimable.
	leaf, _ := maker.leaf(t, "dev-9")
	req := func() *provision.Request {
		return &provision.Request{CSR: csr(t, newKey(t), "dev-9"), PeerCertificates: []*x509.Certificate{leaf}}
	}
	en := e.mustEnroll(t, "maker-pool.factory", req())
	if en.Tenant != "maker-pool" {
		t.Fatalf("pool enrollment %+v", en)
	}

	// The operator types the code from the label, in lower case with spaces.
	moved, err := e.p.Claim(ctx, "token:op1", "acme", strings.ToLower(strings.ReplaceAll(code, "-", " ")))
	if err != nil {
		t.Fatal(err)
	}
	if moved.State != provision.StateClaimed || moved.Owner != "acme" || moved.ClaimID != "" {
		t.Fatalf("after claim %+v", moved)
	}
	// Claiming twice fails: the code is gone.
	if _, err := e.p.Claim(ctx, "token:op1", "other", code); provision.ReasonOf(err) != provision.ReasonBadClaimCode {
		t.Fatalf("second claim: %v", err)
	}

	// Next contact: the device re-enrolls with its bootstrap credential
	// and gets a certificate under acme, with acme's claim template.
	en = e.mustEnroll(t, "maker-pool.factory", req())
	if en.Tenant != "acme" || !en.Transferred || en.Template.Profile != "acme-device" || en.Template.Policy != "acme-default" {
		t.Fatalf("transfer enrollment %+v", en)
	}
	if d, _ := e.store.GetDevice(ctx, "acme", "dev-9"); d == nil || d.State != provision.StateProvisioned {
		t.Fatalf("owner record %+v", d)
	}
	// The pool credential cannot enroll again anywhere.
	en, err = e.p.Enroll(ctx, "maker-pool.factory", req())
	e.assertRefused(t, en, err, provision.ReasonAlreadyProvisioned)
}

func TestClaimWrongCodesRateLimited(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, func(c *provision.Config) {
		c.ClaimLimits = provision.ClaimLimits{
			PerOperator: provision.Rate{Burst: 3, Every: time.Minute},
			PerTenant:   provision.Rate{Burst: 5, Every: time.Minute},
		}
	})
	code, err := e.p.RegisterClaimable(ctx, "system", "maker-pool", "factory", "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	wrong := "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA"
	for i := 0; i < 3; i++ {
		if _, err := e.p.Claim(ctx, "token:op1", "acme", wrong); provision.ReasonOf(err) != provision.ReasonBadClaimCode {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	// The operator's budget is spent: even the right code is refused.
	if _, err := e.p.Claim(ctx, "token:op1", "acme", code); provision.ReasonOf(err) != provision.ReasonRateLimited {
		t.Fatalf("after budget: %v", err)
	}
	evs := e.events.All()
	if last := evs[len(evs)-1]; last.Reason != provision.ReasonRateLimited || last.Actor != "token:op1" || last.Kind != "provision.claim_refused" {
		t.Fatalf("event %+v", last)
	}
	ents := e.auditor.All()
	if last := ents[len(ents)-1]; last.Result != "denied" || last.Action != "device.claim" {
		t.Fatalf("audit %+v", last)
	}
	// Another operator of the same tenant has two wrong guesses left
	// before the tenant's budget (5) is spent too.
	for i := 0; i < 2; i++ {
		if _, err := e.p.Claim(ctx, "token:op2", "acme", wrong); provision.ReasonOf(err) != provision.ReasonBadClaimCode {
			t.Fatalf("op2 attempt %d: %v", i, err)
		}
	}
	if _, err := e.p.Claim(ctx, "token:op3", "acme", code); provision.ReasonOf(err) != provision.ReasonRateLimited {
		t.Fatalf("tenant budget: %v", err)
	}
	// Time refills the buckets (one token a minute): the right code works.
	e.clock.Advance(time.Minute)
	if _, err := e.p.Claim(ctx, "token:op1", "acme", code); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

package provision_test

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/symkey"
	"github.com/wardiot/ward/wire"
)

// symGroup makes a symmetric group and returns the group key (what the
// operator hands to the factory).
func symGroup(t testing.TB, e *env, tenant, name string) (*provision.Group, []byte) {
	t.Helper()
	g := &provision.Group{ID: provision.NewGroupID(), Tenant: tenant, Name: name, Mechanism: provision.MechanismSymmetric,
		Template: provision.Template{Profile: "device"}}
	key, sealed, err := symkey.NewGroupKey(e.sealer(t, tenant), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	g.Symmetric = &provision.SymmetricConfig{SealedKey: sealed}
	return e.putGroup(t, g), key
}

func symToken(t testing.TB, devKey []byte, tenant, group, dev string, exp time.Time) string {
	t.Helper()
	nonce := make([]byte, wire.SymKeyNonceSize)
	rand.Read(nonce)
	tok, err := wire.NewSymKeyToken(devKey, tenant, group, dev, exp, nonce)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestSymmetricEndToEnd(t *testing.T) {
	e := newEnv(t)
	_, gk := symGroup(t, e, "acme", "meters")
	devKey := symkey.DeriveDeviceKey(gk, "meter-7") // the factory line
	tok := symToken(t, devKey, "acme", "meters", "meter-7", t0.Add(5*time.Minute))
	en := e.mustEnroll(t, "acme.meters", &provision.Request{CSR: csr(t, newKey(t), "meter-7"), BearerToken: tok})
	if en.DeviceID != "meter-7" || en.Tenant != "acme" || en.Mechanism != provision.MechanismSymmetric {
		t.Fatalf("%+v", en)
	}
	// A tenant-only label finds the group too.
	tok2 := symToken(t, symkey.DeriveDeviceKey(gk, "meter-8"), "acme", "meters", "meter-8", t0.Add(5*time.Minute))
	e.mustEnroll(t, "acme", &provision.Request{CSR: csr(t, newKey(t), "meter-8"), BearerToken: tok2})
}

func TestSymmetricRefusals(t *testing.T) {
	ctx := context.Background()
	for name, tc := range map[string]struct {
		token func(t *testing.T, gk []byte) string
		want  provision.Reason
	}{
		"fail/wrong-key": {func(t *testing.T, gk []byte) string {
			other := make([]byte, 32)
			rand.Read(other)
			return symToken(t, symkey.DeriveDeviceKey(other, "m1"), "acme", "meters", "m1", t0.Add(time.Minute))
		}, provision.ReasonBadMAC},
		"fail/other-device-key": {func(t *testing.T, gk []byte) string {
			return symToken(t, symkey.DeriveDeviceKey(gk, "m2"), "acme", "meters", "m1", t0.Add(time.Minute))
		}, provision.ReasonBadMAC},
		"fail/other-group": {func(t *testing.T, gk []byte) string {
			return symToken(t, symkey.DeriveDeviceKey(gk, "m1"), "acme", "valves", "m1", t0.Add(time.Minute))
		}, provision.ReasonBadMAC},
		"fail/expired": {func(t *testing.T, gk []byte) string {
			return symToken(t, symkey.DeriveDeviceKey(gk, "m1"), "acme", "meters", "m1", t0.Add(-time.Second))
		}, provision.ReasonExpired},
		"fail/too-long-lived": {func(t *testing.T, gk []byte) string {
			return symToken(t, symkey.DeriveDeviceKey(gk, "m1"), "acme", "meters", "m1", t0.Add(wire.SymKeyMaxLifetime+time.Minute))
		}, provision.ReasonExpired},
		"fail/garbage": {func(t *testing.T, gk []byte) string { return wire.SymKeyTokenPrefix + "v1.m1.x.y.z" }, provision.ReasonMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			_, gk := symGroup(t, e, "acme", "meters")
			en, err := e.p.Enroll(ctx, "acme.meters", &provision.Request{CSR: csr(t, newKey(t), "m1"), BearerToken: tc.token(t, gk)})
			e.assertRefused(t, en, err, tc.want)
		})
	}
}

// A token is accepted once: on the same node (memory) and on another node
// sharing the store.
func TestSymmetricReplayRefused(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g, gk := symGroup(t, e, "acme", "meters")
	g.Reprovision = true // so only the replay check can refuse
	e.store.PutGroup(ctx, g)
	tok := symToken(t, symkey.DeriveDeviceKey(gk, "m1"), "acme", "meters", "m1", t0.Add(5*time.Minute))
	e.mustEnroll(t, "acme.meters", &provision.Request{CSR: csr(t, newKey(t), "m1"), BearerToken: tok})
	en, err := e.p.Enroll(ctx, "acme.meters", &provision.Request{CSR: csr(t, newKey(t), "m1"), BearerToken: tok})
	e.assertRefused(t, en, err, provision.ReasonReplay)

	// Node two: a fresh authenticator (empty memory) over the same store.
	node2 := symkey.New(e.store, e.sealers, e.clock.Now)
	if _, err := node2.Authenticate(ctx, g, &provision.Request{CSR: csr(t, newKey(t), "m1"), BearerToken: tok}); provision.ReasonOf(err) != provision.ReasonReplay {
		t.Fatalf("replay on another node: %v", err)
	}
}

func BenchmarkSymmetricAuthenticate(b *testing.B) {
	e := newEnv(b)
	g, gk := symGroup(b, e, "acme", "meters")
	a := symkey.New(e.store, e.sealers, e.clock.Now)
	devKey := symkey.DeriveDeviceKey(gk, "m1")
	toks := make([]string, b.N)
	for i := range toks {
		toks[i] = symToken(b, devKey, "acme", "meters", "m1", t0.Add(5*time.Minute))
	}
	ctx := context.Background()
	req := &provision.Request{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.BearerToken = toks[i]
		if _, err := a.Authenticate(ctx, g, req); err != nil {
			b.Fatal(err)
		}
	}
}

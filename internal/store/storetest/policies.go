package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
)

func init() { extra["policies/assign"] = testPolicies }

func testPolicies(t *testing.T, s store.Store) {
	now := time.Now().UTC()
	mustTx(t, s, func(tx store.Tx) error {
		if err := tx.PutPolicy(ctx, &store.PolicyDoc{Tenant: "acme", Name: "ro", Doc: []byte(`{"v":1}`), UpdatedAt: now}); err != nil {
			return err
		}
		if err := tx.PutPolicy(ctx, &store.PolicyDoc{Tenant: "acme", Name: "ro", Doc: []byte(`{"v":2}`), UpdatedAt: now}); err != nil {
			return err
		}
		if err := tx.AssignPolicy(ctx, &store.PolicyAssignment{Tenant: "acme", Kind: "device", Target: "d1", Policy: "ro"}); err != nil {
			return err
		}
		return tx.AssignPolicy(ctx, &store.PolicyAssignment{Tenant: "acme", Kind: "group", Target: "g1", Policy: "ro"})
	})
	ps, _ := s.ListPolicies(ctx, "acme")
	if len(ps) != 1 || string(ps[0].Doc) != `{"v":2}` {
		t.Fatalf("policies %v", ps)
	}
	if as, _ := s.ListPolicyAssignments(ctx, "acme"); len(as) != 2 {
		t.Fatalf("assignments %v", as)
	}
	mustTx(t, s, func(tx store.Tx) error {
		return tx.AssignPolicy(ctx, &store.PolicyAssignment{Tenant: "acme", Kind: "group", Target: "g1", Policy: ""})
	})
	if as, _ := s.ListPolicyAssignments(ctx, "acme"); len(as) != 1 || as[0].Kind != "device" {
		t.Fatalf("after unassign %v", as)
	}
	mustTx(t, s, func(tx store.Tx) error { return tx.DeletePolicy(ctx, "acme", "ro") })
	if as, _ := s.ListPolicyAssignments(ctx, "acme"); len(as) != 0 {
		t.Fatalf("assignments of a deleted policy survive: %v", as)
	}
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.DeletePolicy(ctx, "acme", "ro") }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
}

package provisiontest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/provision"
)

// RunStoreTests is the conformance suite of provision.Store. Every
// implementation (SQLite, PostgreSQL, the in-memory Store) must pass it;
// newStore returns an empty store for each subtest.
func RunStoreTests(t *testing.T, newStore func(t *testing.T) provision.Store) {
	ctx := context.Background()
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	group := func(tenant, name string) *provision.Group {
		return &provision.Group{ID: provision.NewGroupID(), Tenant: tenant, Name: name, Mechanism: provision.MechanismToken,
			Token: &provision.TokenConfig{MaxTTL: time.Hour}, Enabled: true, CreatedAt: now,
			Template: provision.Template{Policy: "p", Tags: map[string]string{"a": "b"}, Twin: []byte(`{"x":1}`), Profile: "d", Lifetime: time.Hour}}
	}

	t.Run("groups", func(t *testing.T) {
		s := newStore(t)
		g := group("acme", "b")
		if err := s.PutGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
		s.PutGroup(ctx, group("acme", "a"))
		s.PutGroup(ctx, group("zeta", "a"))
		got, err := s.GetGroup(ctx, "acme", "b")
		if err != nil || got.ID != g.ID || got.Template.Tags["a"] != "b" || string(got.Template.Twin) != `{"x":1}` ||
			got.Token == nil || got.Token.MaxTTL != time.Hour || !got.Enabled || !got.CreatedAt.Equal(now) {
			t.Fatalf("GetGroup = %+v, %v", got, err)
		}
		got.Template.Tags["a"] = "changed" // returned records are copies
		if again, _ := s.GetGroup(ctx, "acme", "b"); again.Template.Tags["a"] != "b" {
			t.Fatal("store aliased a returned record")
		}
		g.Enabled = false
		if err := s.PutGroup(ctx, g); err != nil {
			t.Fatalf("replace: %v", err)
		}
		if again, _ := s.GetGroup(ctx, "acme", "b"); again.Enabled {
			t.Fatal("replace did not replace")
		}
		if err := s.PutGroup(ctx, group("acme", "b")); !errors.Is(err, provision.ErrConflict) {
			t.Fatalf("replace with another ID: %v, want ErrConflict", err)
		}
		list, _ := s.ListGroups(ctx, "acme")
		if len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" {
			t.Fatalf("ListGroups(acme) = %v", list)
		}
		all, _ := s.ListGroups(ctx, "")
		if len(all) != 3 || all[2].Tenant != "zeta" {
			t.Fatalf("ListGroups(\"\") = %v", all)
		}
		if _, err := s.GetGroup(ctx, "acme", "nope"); !errors.Is(err, provision.ErrNotFound) {
			t.Fatalf("missing group: %v", err)
		}
		s.PutGroupToken(ctx, &provision.GroupToken{ID: "0011223344556677", Tenant: "acme", Group: "b", Device: "d", Hash: []byte{1}, ExpiresAt: now})
		if err := s.DeleteGroup(ctx, "acme", "b"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetGroupToken(ctx, "0011223344556677"); !errors.Is(err, provision.ErrNotFound) {
			t.Fatal("DeleteGroup left the group's tokens")
		}
		if err := s.DeleteGroup(ctx, "acme", "b"); !errors.Is(err, provision.ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
	})

	t.Run("devices", func(t *testing.T) {
		s := newStore(t)
		d := &provision.Device{Tenant: "pool", ID: "d1", Group: "g", State: provision.StateClaimable, ClaimID: "ABCDEFGH",
			ClaimSalt: []byte{1, 2}, ClaimHash: []byte{3, 4}, AKPublic: []byte{5}}
		if err := s.CreateDevice(ctx, d); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateDevice(ctx, d); !errors.Is(err, provision.ErrConflict) {
			t.Fatalf("duplicate create: %v", err)
		}
		got, err := s.DeviceByClaimID(ctx, "ABCDEFGH")
		if err != nil || got.ID != "d1" || string(got.ClaimHash) != "\x03\x04" {
			t.Fatalf("DeviceByClaimID = %+v, %v", got, err)
		}
		if _, err := s.DeviceByClaimID(ctx, "ZZZZZZZZ"); !errors.Is(err, provision.ErrNotFound) {
			t.Fatalf("unknown claim: %v", err)
		}
		moved := *got
		moved.State, moved.Owner, moved.ClaimID = provision.StateClaimed, "acme", ""
		if err := s.ReplaceDevice(ctx, &moved, provision.StateProvisioned); !errors.Is(err, provision.ErrConflict) {
			t.Fatalf("CAS with wrong state: %v", err)
		}
		if err := s.ReplaceDevice(ctx, &moved, provision.StateClaimable); err != nil {
			t.Fatal(err)
		}
		if _, err := s.DeviceByClaimID(ctx, "ABCDEFGH"); !errors.Is(err, provision.ErrNotFound) {
			t.Fatal("cleared claim ID still found")
		}
		got, _ = s.GetDevice(ctx, "pool", "d1")
		if got.State != provision.StateClaimed || got.Owner != "acme" {
			t.Fatalf("after replace %+v", got)
		}
		if err := s.ReplaceDevice(ctx, &provision.Device{Tenant: "pool", ID: "nope"}, ""); !errors.Is(err, provision.ErrNotFound) {
			t.Fatalf("replace missing: %v", err)
		}
		if _, err := s.GetDevice(ctx, "other", "d1"); !errors.Is(err, provision.ErrNotFound) {
			t.Fatal("devices not scoped by tenant")
		}
	})

	t.Run("concurrent-first-enrollment", func(t *testing.T) {
		s := newStore(t)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if s.CreateDevice(ctx, &provision.Device{Tenant: "acme", ID: "race", State: provision.StateProvisioned}) == nil {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d creates won, want 1", wins.Load())
		}
	})

	t.Run("group-tokens", func(t *testing.T) {
		s := newStore(t)
		tk := &provision.GroupToken{ID: "00112233aabbccdd", Tenant: "acme", Group: "g", Device: "d", Hash: []byte{9}, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := s.PutGroupToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
		if err := s.PutGroupToken(ctx, tk); !errors.Is(err, provision.ErrConflict) {
			t.Fatalf("duplicate token: %v", err)
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if s.UseGroupToken(ctx, tk.ID, now) == nil {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("token used %d times, want 1", wins.Load())
		}
		got, _ := s.GetGroupToken(ctx, tk.ID)
		if !got.UsedAt.Equal(now) || !got.ExpiresAt.Equal(now.Add(time.Hour)) {
			t.Fatalf("token %+v", got)
		}
		if err := s.UseGroupToken(ctx, "ffffffffffffffff", now); !errors.Is(err, provision.ErrNotFound) {
			t.Fatalf("unknown token: %v", err)
		}
	})

	t.Run("nonces", func(t *testing.T) {
		s := newStore(t)
		if err := s.ConsumeNonce(ctx, "k", now.Add(time.Minute), now); err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeNonce(ctx, "k", now.Add(time.Minute), now.Add(59*time.Second)); !errors.Is(err, provision.ErrConflict) {
			t.Fatalf("replay: %v", err)
		}
		if err := s.ConsumeNonce(ctx, "k", now.Add(2*time.Minute), now.Add(time.Minute)); err != nil {
			t.Fatalf("expired record not replaced: %v", err)
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if s.ConsumeNonce(ctx, "race", now.Add(time.Minute), now) == nil {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("nonce consumed %d times, want 1", wins.Load())
		}
	})
}

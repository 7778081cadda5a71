package fleet_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/fleet"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/storetest"
)

func TestRegistry(t *testing.T) {
	ctx := context.Background()
	s := storetest.SQLite(t)
	r := fleet.New(s, time.Now)
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	r.Subscribe(func(tn, d, st string) { mu.Lock(); seen = append(seen, d+"="+st); mu.Unlock() })
	var commit func()
	err := s.InTx(ctx, func(tx store.Tx) error {
		var err error
		commit, err = r.RegisterTx(ctx, tx, fleet.Registration{Tenant: "acme", Device: "d1"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.State("acme", "d1"); ok {
		t.Fatal("cache updated before commit")
	}
	commit()
	if st, ok := r.State("acme", "d1"); !ok || st != store.DeviceActive {
		t.Fatalf("state %q %v", st, ok)
	}
	if err := r.SetState(ctx, "test", "acme", "d1", store.DeviceDisabled, "stolen"); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.State("acme", "d1"); st != store.DeviceDisabled {
		t.Fatalf("state %q", st)
	}
	if err := r.SetState(ctx, "test", "acme", "d1", store.DeviceDecommissioned, ""); err != nil {
		t.Fatal(err)
	}
	if err := r.SetState(ctx, "test", "acme", "d1", store.DeviceActive, ""); !errors.Is(err, fleet.ErrTransition) {
		t.Fatalf("left decommissioned: %v", err)
	}
	if err := r.SetState(ctx, "test", "acme", "nope", store.DeviceDisabled, ""); !errors.Is(err, fleet.ErrNoDevice) {
		t.Fatalf("missing: %v", err)
	}
	// A fresh registry loads the same states.
	r2 := fleet.New(s, time.Now)
	r2.Load(ctx)
	if st, _ := r2.State("acme", "d1"); st != store.DeviceDecommissioned {
		t.Fatalf("reloaded state %q", st)
	}
	if len(seen) != 3 {
		t.Fatalf("notifications %v", seen)
	}
}

package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
)

func init() { extra["devices/registry"] = testDevices }

func testDevices(t *testing.T, s store.Store) {
	now := time.Now().UTC()
	mustTx(t, s, func(tx store.Tx) error {
		for i := 0; i < 5; i++ {
			if err := tx.CreateDevice(ctx, &store.Device{Tenant: "acme", ID: fmt.Sprintf("d%d", i), State: store.DeviceActive,
				Group: "g1", Tags: map[string]string{"tz": "Europe/Berlin"}, CreatedAt: now}); err != nil {
				return err
			}
		}
		return tx.CreateDevice(ctx, &store.Device{Tenant: "globex", ID: "d0", State: store.DeviceActive, CreatedAt: now})
	})
	err := s.InTx(ctx, func(tx store.Tx) error {
		return tx.CreateDevice(ctx, &store.Device{Tenant: "acme", ID: "d1", State: store.DeviceActive, CreatedAt: now})
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate device: %v", err)
	}
	d, err := s.GetDevice(ctx, "acme", "d3")
	if err != nil || d.Tags["tz"] != "Europe/Berlin" || d.Group != "g1" || d.State != store.DeviceActive {
		t.Fatalf("get: %+v %v", d, err)
	}
	mustTx(t, s, func(tx store.Tx) error { return tx.SetDeviceState(ctx, "acme", "d3", store.DeviceDisabled, now) })
	if l, _ := s.ListDevices(ctx, store.DeviceFilter{Tenant: "acme", State: store.DeviceDisabled}); len(l) != 1 || l[0].ID != "d3" {
		t.Fatalf("state filter: %v", l)
	}
	if l, _ := s.ListDevices(ctx, store.DeviceFilter{Tenant: "acme", After: "d2", Limit: 2}); len(l) != 2 || l[0].ID != "d3" {
		t.Fatalf("pagination: %v", l)
	}
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.SetDeviceState(ctx, "acme", "nope", store.DeviceDisabled, now) }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing device: %v", err)
	}
	n := 0
	if err := s.ForEachDevice(ctx, func(*store.Device) error { n++; return nil }); err != nil || n != 6 {
		t.Fatalf("for each: %d %v", n, err)
	}
	if _, err := s.GetDevice(ctx, "globex", "d3"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("tenant isolation: %v", err)
	}
}

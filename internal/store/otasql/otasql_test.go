package otasql_test

import (
	"context"
	"errors"
	"testing"

	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/otatest"
	"github.com/wardiot/ward/internal/ota/rollout"
	"github.com/wardiot/ward/internal/ota/tufrepo"
	"github.com/wardiot/ward/internal/store/otasql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/internal/store/storetest"
)

type engine struct {
	name string
	open func(testing.TB) *sqlstore.DB
}

// engines: the PostgreSQL runs skip unless WARD_TEST_POSTGRES is set.
var engines = []engine{{"SQLite", storetest.SQLite}, {"Postgres", storetest.Postgres}}

func TestMetadata(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			otatest.RunMetadataStoreTests(t, func(t *testing.T) tufrepo.Store {
				db := e.open(t)
				return otasql.NewMetadata(db.SQL(), db.SQLDialect(), "t1")
			})
		})
	}
}

func TestRollouts(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			otatest.RunRolloutStoreTests(t, func(t *testing.T) rollout.Store {
				db := e.open(t)
				return otasql.NewRollouts(db.SQL(), db.SQLDialect(), "t1")
			})
		})
	}
}

func TestFloors(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			otatest.RunFloorsTests(t, func(t *testing.T) ota.Floors {
				db := e.open(t)
				return otasql.NewFloors(db.SQL(), db.SQLDialect(), "t1")
			})
		})
	}
}

// TestTenantMinimum: the tenant minimum only goes up, is per tenant and
// is not any device's floor.
func TestTenantMinimum(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := context.Background()
		x, d := db.SQL(), db.SQLDialect()
		f := otasql.NewFloors(x, d, "t1")
		if v, err := f.TenantMinimum(ctx); err != nil || v != 0 {
			t.Fatalf("fresh tenant minimum %d, %v", v, err)
		}
		for _, c := range []struct{ raise, want uint64 }{{3, 3}, {2, 3}, {3, 3}, {1 << 63, 1 << 63}, {7, 1 << 63}} {
			if v, err := f.RaiseTenantMinimum(ctx, c.raise); err != nil || v != c.want {
				t.Fatalf("raise to %d: %d, %v (want %d)", c.raise, v, err, c.want)
			}
		}
		if v, err := otasql.NewFloors(x, d, "t2").TenantMinimum(ctx); err != nil || v != 0 {
			t.Fatalf("t2 sees t1's minimum: %d, %v", v, err)
		}
		if err := f.SetFloor(ctx, "d1", 5); err != nil {
			t.Fatal(err)
		}
		if v, ok, err := f.LastFloor(ctx, "d1"); err != nil || !ok || v != 5 {
			t.Fatalf("device floor %d %v %v", v, ok, err)
		}
		if err := otasql.DeleteTenant(ctx, x, d, "t1"); err != nil {
			t.Fatal(err)
		}
		if v, err := f.TenantMinimum(ctx); err != nil || v != 0 {
			t.Fatalf("deleted tenant's minimum %d, %v", v, err)
		}
	})
}

// TestTenantIsolation: stores of two tenants on one database share
// tables but nothing else, and DeleteTenant empties one tenant only.
func TestTenantIsolation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := context.Background()
		x, d := db.SQL(), db.SQLDialect()
		for _, tenant := range []string{"t1", "t2"} {
			if err := otasql.NewMetadata(x, d, tenant).Put(ctx, "image/root.json", []byte(tenant)); err != nil {
				t.Fatal(err)
			}
			if err := otasql.NewRollouts(x, d, tenant).Save(ctx, otatest.Snapshot("r-"+tenant)); err != nil {
				t.Fatal(err)
			}
		}
		if err := otasql.NewFloors(x, d, "t1").SetFloor(ctx, "d1", 9); err != nil {
			t.Fatal(err)
		}
		if b, err := otasql.NewMetadata(x, d, "t2").Get(ctx, "image/root.json"); err != nil || string(b) != "t2" {
			t.Fatalf("t2 metadata: %q, %v", b, err)
		}
		if ids, err := otasql.NewRollouts(x, d, "t2").List(ctx); err != nil || len(ids) != 1 || ids[0] != "r-t2" {
			t.Fatalf("t2 rollouts: %v, %v", ids, err)
		}
		if _, ok, err := otasql.NewFloors(x, d, "t2").LastFloor(ctx, "d1"); ok || err != nil {
			t.Fatalf("t2 sees t1's floor (err %v)", err)
		}
		if err := otasql.DeleteTenant(ctx, x, d, "t1"); err != nil {
			t.Fatal(err)
		}
		if _, err := otasql.NewMetadata(x, d, "t1").Get(ctx, "image/root.json"); !errors.Is(err, tufrepo.ErrNotFound) {
			t.Fatalf("deleted tenant's metadata: %v", err)
		}
		if _, err := otasql.NewRollouts(x, d, "t1").Load(ctx, "r-t1"); !errors.Is(err, rollout.ErrNotFound) {
			t.Fatalf("deleted tenant's rollout: %v", err)
		}
		if _, ok, _ := otasql.NewFloors(x, d, "t1").LastFloor(ctx, "d1"); ok {
			t.Fatal("deleted tenant's floor remains")
		}
		if _, err := otasql.NewMetadata(x, d, "t2").Get(ctx, "image/root.json"); err != nil {
			t.Fatalf("other tenant's metadata: %v", err)
		}
	})
}

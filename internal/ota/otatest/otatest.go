// Package otatest holds conformance suites for the stores package ota and
// its subpackages consume (tufrepo.Store, rollout.Store, ota.Floors), run
// against the in-memory stores here and against the SQL stores in
// package otasql.
package otatest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/rollout"
	"github.com/wardiot/ward/internal/ota/tufrepo"
)

// parallel runs fn(i) for i in [0, n) at once and waits.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

// RunMetadataStoreTests checks the tufrepo.Store contract on fresh stores
// from open: missing names, replacement, binary data, and that readers
// racing writers see whole documents only. Stores from one open call
// with the same scope must be independent of those from another open.
func RunMetadataStoreTests(t *testing.T, open func(t *testing.T) tufrepo.Store) {
	t.Run("GetPut", func(t *testing.T) {
		s, ctx := open(t), context.Background()
		if _, err := s.Get(ctx, "image/root.json"); !errors.Is(err, tufrepo.ErrNotFound) {
			t.Fatalf("empty store: got %v, want ErrNotFound", err)
		}
		docs := map[string][]byte{
			"image/1.root.json":      []byte(`{"signed":{"_type":"root"}}`),
			"image/timestamp.json":   []byte(`{"signed":{"_type":"timestamp"}}`),
			"keys/timestamp.sealed":  {0, 1, 2, 0xff, 0xfe, 0},
			"director/dev-1/targets": []byte(`{}`),
		}
		for n, d := range docs {
			if err := s.Put(ctx, n, d); err != nil {
				t.Fatalf("put %s: %v", n, err)
			}
		}
		for n, d := range docs {
			got, err := s.Get(ctx, n)
			if err != nil {
				t.Fatalf("get %s: %v", n, err)
			}
			if !bytes.Equal(got, d) {
				t.Fatalf("get %s: %q, want %q", n, got, d)
			}
		}
		if err := s.Put(ctx, "image/timestamp.json", []byte(`{"v":2}`)); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, "image/timestamp.json")
		if err != nil || string(got) != `{"v":2}` {
			t.Fatalf("after replace: %q, %v", got, err)
		}
		if _, err := s.Get(ctx, "image/2.root.json"); !errors.Is(err, tufrepo.ErrNotFound) {
			t.Fatalf("missing name: got %v, want ErrNotFound", err)
		}
		// A destroyed online key is gone; other names stay.
		if err := tufrepo.DestroyOnlineKey(ctx, s, "timestamp"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "keys/timestamp.sealed"); !errors.Is(err, tufrepo.ErrNotFound) {
			t.Fatalf("destroyed key: got %v, want ErrNotFound", err)
		}
		if err := tufrepo.DestroyOnlineKey(ctx, s, "timestamp"); err != nil {
			t.Fatalf("destroying twice: %v", err)
		}
		if _, err := s.Get(ctx, "image/1.root.json"); err != nil {
			t.Fatalf("another name after a delete: %v", err)
		}
	})
	t.Run("ReadersSeeWholeDocuments", func(t *testing.T) {
		s, ctx := open(t), context.Background()
		const name = "image/snapshot.json"
		// Each version is one repeated byte, so a mixed read shows.
		version := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, 64<<10) }
		if err := s.Put(ctx, name, version(0)); err != nil {
			t.Fatal(err)
		}
		const writers = 8
		var mu sync.Mutex
		var errs []error
		parallel(2*writers, func(i int) {
			var err error
			if i < writers {
				err = s.Put(ctx, name, version(i))
			} else {
				var b []byte
				b, err = s.Get(ctx, name)
				if err == nil && (len(b) != 64<<10 || !bytes.Equal(b, bytes.Repeat(b[:1], len(b)))) {
					err = fmt.Errorf("read a mixed or truncated document (%d bytes)", len(b))
				}
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		b, err := s.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 64<<10 || b[0] < 'a' || b[0] >= 'a'+writers || !bytes.Equal(b, bytes.Repeat(b[:1], len(b))) {
			t.Fatal("final document is none of the versions written")
		}
	})
}

// Snapshot returns a rollout snapshot using every field, with UTC times,
// for round-trip tests.
func Snapshot(id string) *rollout.Snapshot {
	t0 := time.Date(2030, 5, 6, 7, 8, 9, 10, time.UTC)
	return &rollout.Snapshot{
		ID: id, Creator: "alice", Approver: "bob", State: "running", Reason: "stage 1 soaking",
		Phase: 1, PhaseDoneAt: t0, RunningSince: t0.Add(-time.Hour),
		Starts: []time.Time{t0.Add(-time.Minute), t0}, ResumeExecuted: 3,
		ResumeOutcomes: map[string]int{rollout.DeviceSucceeded: 2, rollout.DeviceFailed: 1}, PhaseAccepted: true,
		Spec: rollout.Spec{
			Release: "fw@1.1.0", Target: "gw-100/fw-1.1.0.img",
			Selector: rollout.Selector{Tags: map[string]string{"site": "lyon"}, Hardware: "gw-100"},
			Canary:   rollout.Canary{Percent: 10, Soak: time.Hour},
			Stages:   []rollout.Stage{{Percent: 50, Soak: time.Hour}, {Percent: 100}},
			Rate:     rollout.Rate{MaxPerMinute: 100, Initial: 2, Factor: 2, Every: time.Minute},
			Success:  rollout.Success{MinPercent: 95},
			Abort:    []rollout.Abort{{On: []string{rollout.OutcomeFailed}, ThresholdPercent: 5, MinExecuted: 10, Action: "pause"}},
			Timeout:  2 * time.Hour, Retries: 1,
			Maintenance: &rollout.Maintenance{Windows: []rollout.Window{{Days: []string{"mon"}, Start: "22:00", End: "04:00"}},
				ZoneTag: "tz", DefaultZone: "Europe/Paris"},
			Approval:     rollout.Approval{Required: true},
			HealthWindow: 10 * time.Minute,
		},
		Devices: []rollout.DeviceSnapshot{
			{Device: rollout.Device{ID: "d1", HardwareID: "gw-100", Tags: map[string]string{"tz": "UTC"}, Release: "fw@1.0.0"},
				State: "succeeded", Attempts: 1, Started: t0, Deadline: t0.Add(2 * time.Hour)},
			{Device: rollout.Device{ID: "d2", HardwareID: "gw-100", Release: "fw@1.0.0"}, State: "pending"},
		},
	}
}

// RunRolloutStoreTests checks the rollout.Store contract on fresh stores
// from open: a snapshot reads back equal, Save replaces, List names every
// saved rollout once.
func RunRolloutStoreTests(t *testing.T, open func(t *testing.T) rollout.Store) {
	t.Run("SaveLoadList", func(t *testing.T) {
		s, ctx := open(t), context.Background()
		if _, err := s.Load(ctx, "r1"); !errors.Is(err, rollout.ErrNotFound) {
			t.Fatalf("empty store: got %v, want ErrNotFound", err)
		}
		ids, err := s.List(ctx)
		if err != nil || len(ids) != 0 {
			t.Fatalf("empty store lists %v, %v", ids, err)
		}
		a, b := Snapshot("r1"), Snapshot("r2")
		b.State, b.Devices = "paused", b.Devices[:1]
		for _, x := range []*rollout.Snapshot{a, b} {
			if err := s.Save(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		for _, want := range []*rollout.Snapshot{a, b} {
			got, err := s.Load(ctx, want.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("load %s:\n got %+v\nwant %+v", want.ID, got, want)
			}
		}
		// The store keeps its own copy: changing a saved or loaded
		// snapshot changes nothing stored.
		a.State = "mutated"
		got, err := s.Load(ctx, "r1")
		if err != nil || got.State != "running" {
			t.Fatalf("stored snapshot follows the caller's changes: %q, %v", got.State, err)
		}
		got.Devices[0].State = "mutated"
		again, err := s.Load(ctx, "r1")
		if err != nil || again.Devices[0].State != "succeeded" {
			t.Fatalf("stored snapshot follows a loaded copy's changes: %v", err)
		}
		// Save replaces.
		c := Snapshot("r1")
		c.State, c.Phase = "completed", 2
		if err := s.Save(ctx, c); err != nil {
			t.Fatal(err)
		}
		got, err = s.Load(ctx, "r1")
		if err != nil || !reflect.DeepEqual(got, c) {
			t.Fatalf("after replace: %+v, %v", got, err)
		}
		ids, err = s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"r1", "r2"}) {
			t.Fatalf("list: %v, want [r1 r2]", ids)
		}
	})
	t.Run("ConcurrentSaves", func(t *testing.T) {
		s, ctx := open(t), context.Background()
		const n = 16
		var mu sync.Mutex
		var errs []error
		parallel(n, func(i int) {
			x := Snapshot(fmt.Sprint("r", i%4))
			x.ResumeExecuted = i
			if err := s.Save(ctx, x); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		ids, err := s.List(ctx)
		if err != nil || len(ids) != 4 {
			t.Fatalf("list: %v, %v; want 4 rollouts", ids, err)
		}
		for _, id := range ids {
			got, err := s.Load(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint("r", got.ResumeExecuted%4) != id {
				t.Fatalf("%s holds the snapshot saved for %d", id, got.ResumeExecuted)
			}
		}
	})
}

// RunFloorsTests checks the ota.Floors contract on fresh stores from
// open: a floor is per device, never goes down, covers all of uint64,
// and concurrent reports keep the highest.
func RunFloorsTests(t *testing.T, open func(t *testing.T) ota.Floors) {
	last := func(t *testing.T, f ota.Floors, device string) (uint64, bool) {
		t.Helper()
		v, ok, err := f.LastFloor(context.Background(), device)
		if err != nil {
			t.Fatal(err)
		}
		return v, ok
	}
	set := func(t *testing.T, f ota.Floors, device string, v uint64) {
		t.Helper()
		if err := f.SetFloor(context.Background(), device, v); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("NeverLowers", func(t *testing.T) {
		f := open(t)
		if _, ok := last(t, f, "d1"); ok {
			t.Fatal("empty store reports a floor")
		}
		set(t, f, "d1", 0)
		if v, ok := last(t, f, "d1"); !ok || v != 0 {
			t.Fatalf("floor 0: got %d, %v", v, ok)
		}
		for _, step := range []struct{ set, want uint64 }{
			{5, 5}, {3, 5}, {5, 5}, {6, 6}, {0, 6}, {255, 255}, {256, 256},
			{math.MaxInt64, math.MaxInt64}, {math.MaxInt64 + 1, math.MaxInt64 + 1}, {1, math.MaxInt64 + 1},
			{math.MaxUint64, math.MaxUint64}, {0, math.MaxUint64},
		} {
			set(t, f, "d1", step.set)
			if v, _ := last(t, f, "d1"); v != step.want {
				t.Fatalf("after SetFloor(%d): floor %d, want %d", step.set, v, step.want)
			}
		}
		if _, ok := last(t, f, "d2"); ok {
			t.Fatal("another device's floor leaks")
		}
		set(t, f, "d2", 1)
		if v, _ := last(t, f, "d2"); v != 1 {
			t.Fatalf("d2 floor %d, want 1", v)
		}
	})
	t.Run("ConcurrentKeepHighest", func(t *testing.T) {
		f := open(t)
		const n = 32
		vals := rand.Perm(n)
		var mu sync.Mutex
		var errs []error
		parallel(n, func(i int) {
			if err := f.SetFloor(context.Background(), "d1", uint64(vals[i])); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		if v, _ := last(t, f, "d1"); v != n-1 {
			t.Fatalf("floor %d after concurrent reports, want the highest %d", v, n-1)
		}
	})
}

package deviceauth

import (
	"testing"
	"time"
)

func TestReplayCache(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	t.Run("fail/second-add-within-expiry", func(t *testing.T) {
		c := newReplayCache(8)
		if !c.add(Hash{1}, now.Add(time.Minute), now) {
			t.Fatal("first add refused")
		}
		if c.add(Hash{1}, now.Add(time.Minute), now.Add(59*time.Second)) {
			t.Fatal("replay within expiry accepted")
		}
	})
	t.Run("ok/add-after-expiry", func(t *testing.T) {
		c := newReplayCache(8)
		c.add(Hash{1}, now.Add(time.Minute), now)
		if !c.add(Hash{1}, now.Add(2*time.Minute), now.Add(time.Minute)) {
			t.Fatal("re-add after expiry refused")
		}
		// The re-added key outlives its first, expired queue entry.
		for i := 2; i < 6; i++ {
			c.add(Hash{byte(i)}, now.Add(3*time.Minute), now.Add(time.Minute))
		}
		if c.add(Hash{1}, now.Add(2*time.Minute), now.Add(90*time.Second)) {
			t.Fatal("re-added key forgotten when its old entry was dropped")
		}
	})
	t.Run("ok/bounded", func(t *testing.T) {
		c := newReplayCache(100)
		for i := range 10000 {
			c.add(Hash{byte(i), byte(i >> 8)}, now.Add(time.Hour), now)
			if c.len() > 100 {
				t.Fatalf("cache holds %d entries, bound 100", c.len())
			}
		}
		if len(c.order)-c.head > 100 || len(c.order) > 4*100+2048 {
			t.Fatalf("queue grew to %d (head %d)", len(c.order), c.head)
		}
	})
}

func TestLimiter(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLimiter(RateLimit{PerSecond: 2, Burst: 2, MaxDevices: 2}, func() time.Time { return now })
	for i := range 2 {
		if ok, _, _ := l.allow("a"); !ok {
			t.Fatalf("request %d within burst refused", i)
		}
	}
	ok, wait, first := l.allow("a")
	if ok || wait != 500*time.Millisecond || !first {
		t.Fatalf("over burst: ok=%v wait=%v first=%v", ok, wait, first)
	}
	if _, _, first = l.allow("a"); first {
		t.Fatal("second refusal reported as first")
	}
	now = now.Add(500 * time.Millisecond)
	if ok, _, _ := l.allow("a"); !ok {
		t.Fatal("refilled token refused")
	}
	l.allow("b")
	l.allow("c")
	if len(l.buckets) > 2 {
		t.Fatalf("%d buckets, bound 2", len(l.buckets))
	}
}

package broker

import (
	"sync"
	"time"
)

// bucket is a token bucket. A nil bucket, or one with rate 0, allows
// everything.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate, burst float64, now time.Time) *bucket {
	if rate <= 0 {
		return nil
	}
	if burst < 1 {
		burst = 1
	}
	return &bucket{rate: rate, burst: burst, tokens: burst, last: now}
}

// take removes n tokens if available and reports whether it did.
func (b *bucket) take(n float64, now time.Time) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(now)
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

func (b *bucket) refill(now time.Time) {
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(b.burst, b.tokens+el.Seconds()*b.rate)
		b.last = now
	}
}

// full reports whether the bucket has refilled completely, i.e. forgetting
// it loses nothing.
func (b *bucket) full(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(now)
	return b.tokens >= b.burst
}

// limiter holds the buckets that outlive a session: connect attempts per
// identity and every per-tenant rate.
type limiter struct {
	dev, ten Limits
	clock    func() time.Time

	mu       sync.Mutex
	connects map[string]*bucket // tenant/kind/device
	tenants  map[string]*tenantBuckets
}

type tenantBuckets struct {
	msgs, bytes, connects *bucket
}

func newLimiter(dev, ten Limits, clock func() time.Time) *limiter {
	return &limiter{dev: dev, ten: ten, clock: clock,
		connects: make(map[string]*bucket), tenants: make(map[string]*tenantBuckets)}
}

func (l *limiter) tenant(t string, now time.Time) *tenantBuckets {
	l.mu.Lock()
	defer l.mu.Unlock()
	tb := l.tenants[t]
	if tb == nil {
		tb = &tenantBuckets{
			msgs:     newBucket(l.ten.MessagesPerSecond, l.ten.MessagesPerSecond, now),
			bytes:    newBucket(l.ten.BytesPerSecond, l.ten.BytesPerSecond, now),
			connects: newBucket(l.ten.ConnectsPerMinute/60, l.ten.ConnectsPerMinute, now),
		}
		l.tenants[t] = tb
	}
	return tb
}

// allowConnect charges one connect attempt to the identity and its tenant.
func (l *limiter) allowConnect(id Identity) (ok bool, scope string) {
	now := l.clock()
	key := id.Tenant + "/" + id.Kind + "/" + id.Device
	l.mu.Lock()
	b := l.connects[key]
	if b == nil && l.dev.ConnectsPerMinute > 0 {
		if len(l.connects) >= maxTrackedIdentities {
			l.sweepLocked(now)
		}
		b = newBucket(l.dev.ConnectsPerMinute/60, l.dev.ConnectsPerMinute, now)
		l.connects[key] = b
	}
	l.mu.Unlock()
	if !b.take(1, now) {
		return false, "device connects per minute"
	}
	if !l.tenant(id.Tenant, now).connects.take(1, now) {
		return false, "tenant connects per minute"
	}
	return true, ""
}

// sweepLocked forgets buckets that have refilled; if every bucket is busy
// it forgets them all rather than grow without bound.
func (l *limiter) sweepLocked(now time.Time) {
	for k, b := range l.connects {
		if b.full(now) {
			delete(l.connects, k)
		}
	}
	if len(l.connects) >= maxTrackedIdentities {
		clear(l.connects)
	}
}

// allowMessage charges one message of n bytes to the session and its tenant.
func (l *limiter) allowMessage(s *session, n int) (ok bool, scope string) {
	now := l.clock()
	if !s.msgs.take(1, now) {
		return false, "device messages per second"
	}
	if !s.bytes.take(float64(n), now) {
		return false, "device bytes per second"
	}
	tb := l.tenant(s.id.Tenant, now)
	if !tb.msgs.take(1, now) {
		return false, "tenant messages per second"
	}
	if !tb.bytes.take(float64(n), now) {
		return false, "tenant bytes per second"
	}
	return true, ""
}

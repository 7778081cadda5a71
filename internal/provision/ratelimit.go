package provision

import (
	"sync"
	"time"
)

// Rate is a token bucket: Burst tokens, refilled at one per Every.
type Rate struct {
	Burst int
	Every time.Duration
}

// ClaimLimits bound wrong claim codes. A claim code has 120 bits of
// secret, so guessing is hopeless anyway; the limits make a brute-force
// attempt visible early and keep it from loading the store.
type ClaimLimits struct {
	// PerOperator: wrong codes one operator (API token) may enter.
	PerOperator Rate
	// PerTenant: wrong codes all operators of a tenant together may enter,
	// so many stolen tokens of one tenant cannot multiply the budget.
	PerTenant Rate
}

// DefaultClaimLimits: 5 wrong codes in a row per operator then one a
// minute (a person mistyping a label does not need more); 20 per tenant
// then one every 15 s.
var DefaultClaimLimits = ClaimLimits{
	PerOperator: Rate{Burst: 5, Every: time.Minute},
	PerTenant:   Rate{Burst: 20, Every: 15 * time.Second},
}

// MaxLimiterKeys bounds the memory of a Limiter; when full, buckets that
// have refilled completely (they carry no information) are dropped, and if
// none has, the oldest half is.
const MaxLimiterKeys = 10000

// Limiter is a set of token buckets keyed by string, on an injected
// clock. It is in memory: each server node limits on its own, which
// multiplies the budget by the number of nodes, a bounded factor.
type Limiter struct {
	rate Rate
	now  func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// NewLimiter returns a Limiter of rate on clock now.
func NewLimiter(rate Rate, now func() time.Time) *Limiter {
	return &Limiter{rate: rate, now: now, buckets: map[string]*bucket{}}
}

// refill brings b up to date and returns it.
func (l *Limiter) refill(key string) *bucket {
	now := l.now()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= MaxLimiterKeys {
			l.evict()
		}
		b = &bucket{tokens: float64(l.rate.Burst), at: now}
		l.buckets[key] = b
		return b
	}
	if el := now.Sub(b.at); el > 0 && l.rate.Every > 0 {
		b.tokens += float64(el) / float64(l.rate.Every)
		if b.tokens > float64(l.rate.Burst) {
			b.tokens = float64(l.rate.Burst)
		}
	}
	b.at = now
	return b
}

func (l *Limiter) evict() {
	for k, b := range l.buckets {
		if b.tokens+float64(l.now().Sub(b.at))/float64(max(l.rate.Every, 1)) >= float64(l.rate.Burst) {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) < MaxLimiterKeys {
		return
	}
	n := 0
	for k := range l.buckets {
		delete(l.buckets, k)
		if n++; n >= MaxLimiterKeys/2 {
			break
		}
	}
}

// Allow reports whether key has at least one token, without taking it.
func (l *Limiter) Allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refill(key).tokens >= 1
}

// Take removes one token from key's bucket (down to zero).
func (l *Limiter) Take(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(key)
	if b.tokens >= 1 {
		b.tokens--
	} else {
		b.tokens = 0
	}
}

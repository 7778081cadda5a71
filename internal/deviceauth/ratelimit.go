package deviceauth

import (
	"sync"
	"time"
)

// Rate limit defaults for the device API.
const (
	// DefaultRatePerSecond is a device's sustained request rate. Telemetry
	// over HTTPS is for low-rate devices; fast publishers belong on MQTT.
	DefaultRatePerSecond = 5
	// DefaultRateBurst lets a device flush a small backlog after being
	// off-line without tripping the limit.
	DefaultRateBurst = 50
	// DefaultRateMaxDevices bounds the buckets kept in memory. Past it an
	// arbitrary bucket is forgotten, giving that device a full bucket: a
	// small leniency that only a holder of that many valid tokens can cause.
	DefaultRateMaxDevices = 256 << 10
)

// RateLimit configures the per-device token bucket.
type RateLimit struct {
	PerSecond  float64
	Burst      int
	MaxDevices int
}

func (r *RateLimit) setDefaults() {
	if r.PerSecond <= 0 {
		r.PerSecond = DefaultRatePerSecond
	}
	if r.Burst <= 0 {
		r.Burst = DefaultRateBurst
	}
	if r.MaxDevices <= 0 {
		r.MaxDevices = DefaultRateMaxDevices
	}
}

type bucket struct {
	tokens  float64
	last    time.Time
	limited bool // the last request was refused
}

// limiter is a token bucket per device, driven by the injected clock.
type limiter struct {
	mu      sync.Mutex
	cfg     RateLimit
	clock   func() time.Time
	buckets map[string]*bucket
}

func newLimiter(cfg RateLimit, clock func() time.Time) *limiter {
	return &limiter{cfg: cfg, clock: clock, buckets: make(map[string]*bucket)}
}

// allow takes one token from key's bucket. When it refuses it also returns
// how long until a token is available, and whether this is the first
// refusal since the device was last allowed (so that a flood raises one
// security event, not one per request).
func (l *limiter) allow(key string) (ok bool, wait time.Duration, first bool) {
	now := l.clock()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.cfg.MaxDevices {
			for k := range l.buckets {
				delete(l.buckets, k)
				break
			}
		}
		b = &bucket{tokens: float64(l.cfg.Burst), last: now}
		l.buckets[key] = b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(float64(l.cfg.Burst), b.tokens+el.Seconds()*l.cfg.PerSecond)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		b.limited = false
		return true, 0, false
	}
	first = !b.limited
	b.limited = true
	return false, time.Duration((1 - b.tokens) / l.cfg.PerSecond * float64(time.Second)), first
}

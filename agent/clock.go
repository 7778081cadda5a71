package agent

import "time"

// Clock is the agent's source of time. Renewal schedules, certificate
// validity checks and backoff all read it, so tests can move time forward
// instead of waiting for it.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After returns a channel that receives once d has passed on this
	// clock. A d of zero or less fires at once.
	After(d time.Duration) <-chan time.Time
}

// systemClock is the real wall clock.
type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

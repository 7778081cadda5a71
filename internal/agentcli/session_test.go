package agentcli

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeSession struct {
	id        int
	connected atomic.Bool
	closed    atomic.Bool
	mu        sync.Mutex
	published []string
	failPub   bool
}

func (f *fakeSession) Subscribe(string, func(string, []byte)) error { return nil }
func (f *fakeSession) Publish(suffix string, _ []byte, _ byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failPub {
		return errors.New("publish failed")
	}
	f.published = append(f.published, suffix)
	return nil
}
func (f *fakeSession) Connected() bool { return f.connected.Load() }
func (f *fakeSession) Close()          { f.closed.Store(true); f.connected.Store(false) }

func (f *fakeSession) topics() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.published...)
}

// loopHarness drives a sessionLoop with fake sessions and a fake clock
// that records every backoff wait and fires at once.
type loopHarness struct {
	l *sessionLoop

	mu       sync.Mutex
	waits    []time.Duration
	sessions []*fakeSession
	dialErrs int // dials that fail before one succeeds
	setups   int
	flushes  []int // session ids flushed
	gen      atomic.Uint64
}

const testPoll = 3 * time.Millisecond

func newLoopHarness(failFirst int) *loopHarness {
	h := &loopHarness{dialErrs: failFirst}
	l := newSessionLoop(slog.New(slog.NewTextHandler(io.Discard, nil)))
	l.poll = testPoll
	l.after = func(d time.Duration) <-chan time.Time {
		if d == testPoll {
			return time.After(d)
		}
		h.mu.Lock()
		h.waits = append(h.waits, d)
		h.mu.Unlock()
		c := make(chan time.Time, 1)
		c <- time.Now()
		return c
	}
	l.dial = func(context.Context) (mqttSession, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.dialErrs > 0 {
			h.dialErrs--
			return nil, errors.New("connection refused")
		}
		s := &fakeSession{id: len(h.sessions) + 1}
		s.connected.Store(true)
		h.sessions = append(h.sessions, s)
		return s, nil
	}
	l.setup = func(context.Context, mqttSession) error {
		h.mu.Lock()
		h.setups++
		h.mu.Unlock()
		return nil
	}
	l.flush = func(s mqttSession) {
		h.mu.Lock()
		h.flushes = append(h.flushes, s.(*fakeSession).id)
		h.mu.Unlock()
	}
	l.credential = h.gen.Load
	h.l = l
	return h
}

func (h *loopHarness) state() (setups int, waits []time.Duration, sessions []*fakeSession, flushes []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.setups, append([]time.Duration(nil), h.waits...), append([]*fakeSession(nil), h.sessions...), append([]int(nil), h.flushes...)
}

func (h *loopHarness) waitSetups(t *testing.T, n int) {
	t.Helper()
	waitFor(t, func() bool { s, _, _, _ := h.state(); return s >= n })
}

func TestSessionLoopReconnectsWithBackoff(t *testing.T) {
	h := newLoopHarness(2)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { h.l.run(ctx); close(done) }()

	// Two refused dials, then a session: two growing, jittered waits.
	h.waitSetups(t, 1)
	_, waits, sessions, _ := h.state()
	if len(waits) != 2 || waits[0] < reconnectMin/2 || waits[0] > reconnectMin || waits[1] < reconnectMin || waits[1] > 2*reconnectMin {
		t.Fatalf("waits after two refusals: %v", waits)
	}
	if !h.l.connected() || h.l.current() != sessions[0] {
		t.Fatal("the session is not current")
	}

	// The session drops (it lasted less than sessionStable): a third,
	// longer wait, then a new session, set up again.
	sessions[0].connected.Store(false)
	h.waitSetups(t, 2)
	_, waits, sessions, _ = h.state()
	if len(waits) != 3 || waits[2] < 2*reconnectMin || waits[2] > 4*reconnectMin {
		t.Fatalf("waits after the drop: %v", waits)
	}
	if !sessions[0].closed.Load() {
		t.Fatal("the dropped session was not closed")
	}

	// A renewal: the session is reopened at once, without waiting, so
	// the gateway sees the new certificate.
	h.gen.Add(1)
	h.waitSetups(t, 3)
	_, waits, sessions, _ = h.state()
	if len(waits) != 3 || !sessions[1].closed.Load() || len(sessions) != 3 {
		t.Fatalf("after renewal: waits %v, %d sessions", waits, len(sessions))
	}

	// signal flushes on the current session.
	h.l.signal()
	waitFor(t, func() bool {
		_, _, _, f := h.state()
		return len(f) > 0 && f[len(f)-1] == 3
	})

	cancel()
	<-done
	if !sessions[2].closed.Load() || h.l.connected() {
		t.Fatal("the session outlived the loop")
	}
}

func TestSessionLoopBackoffIsCapped(t *testing.T) {
	l := newSessionLoop(slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, r := range []uint64{0, 1, 1 << 62, ^uint64(0)} {
		l.rand = func() uint64 { return r }
		for n := 1; n < 100; n++ {
			d := l.backoff(n)
			if d > reconnectMax || d < reconnectMin/2 {
				t.Fatalf("backoff(%d) = %v with rand %d", n, d, r)
			}
			if n >= 10 && d < reconnectMax/2 {
				t.Fatalf("backoff(%d) = %v fell below half the cap", n, d)
			}
		}
	}
}

func TestSessionLoopSetupFailureRetries(t *testing.T) {
	h := newLoopHarness(0)
	var fails atomic.Int32
	setup := h.l.setup
	h.l.setup = func(ctx context.Context, s mqttSession) error {
		if fails.Add(1) == 1 {
			return errors.New("subscribe refused")
		}
		return setup(ctx, s)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go h.l.run(ctx)
	h.waitSetups(t, 1)
	_, waits, sessions, _ := h.state()
	if len(waits) != 1 || len(sessions) != 2 || !sessions[0].closed.Load() {
		t.Fatalf("after a failed setup: waits %v, %d sessions", waits, len(sessions))
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

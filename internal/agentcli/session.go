package agentcli

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"log/slog"
	"sync"
	"time"
)

// Reconnection schedule of the MQTT session. A gateway restart drops a
// whole fleet at once; the jitter spreads the reconnections, the cap keeps
// a device from staying away for long after the gateway is back.
const (
	// reconnectMin is the first retry delay.
	reconnectMin = time.Second
	// reconnectMax caps the retry delay.
	reconnectMax = 2 * time.Minute
	// sessionStable is how long a session must have lasted for the next
	// failure to start the backoff again from reconnectMin: a gateway
	// that accepts and then drops the device at once must not be
	// hammered every second.
	sessionStable = time.Minute
	// sessionPoll is how often the loop checks that the session is up
	// and that the certificate has not been renewed.
	sessionPoll = time.Second
)

// mqttSession is what the daemon needs of an MQTT session; *agent.Conn
// implements it.
type mqttSession interface {
	Subscribe(suffix string, fn func(topic string, payload []byte)) error
	Publish(suffix string, payload []byte, qos byte) error
	Connected() bool
	Close()
}

// sessionLoop holds one MQTT session at a time: it dials, sets the
// session up (subscriptions, first reports), notices when it drops or
// when the certificate was renewed, and dials again with capped, jittered
// exponential backoff.
type sessionLoop struct {
	// dial opens a session.
	dial func(ctx context.Context) (mqttSession, error)
	// setup subscribes and reports on a new session; an error closes it
	// and counts as a failed attempt.
	setup func(ctx context.Context, s mqttSession) error
	// flush sends what is queued for the server; it is called after
	// setup and whenever kick is signalled.
	flush func(s mqttSession)
	// credential identifies the current certificate (its generation);
	// when it changes the session is reopened so that the gateway sees
	// the new certificate. Nil to never reopen.
	credential func() uint64
	log        *slog.Logger

	// Schedule and clock, injectable for tests.
	min, max, stable, poll time.Duration
	now                    func() time.Time
	after                  func(time.Duration) <-chan time.Time
	rand                   func() uint64

	kick chan struct{}

	mu  sync.Mutex
	cur mqttSession
}

func newSessionLoop(log *slog.Logger) *sessionLoop {
	return &sessionLoop{
		log: log, min: reconnectMin, max: reconnectMax, stable: sessionStable, poll: sessionPoll,
		now: time.Now, after: time.After, rand: randUint64,
		kick: make(chan struct{}, 1),
	}
}

func randUint64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

// current returns the session if it is up.
func (l *sessionLoop) current() mqttSession {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur != nil && l.cur.Connected() {
		return l.cur
	}
	return nil
}

// connected reports whether a session is up.
func (l *sessionLoop) connected() bool { return l.current() != nil }

// signal asks the loop to call flush soon.
func (l *sessionLoop) signal() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// backoff is the wait before retry n (n >= 1): exponential from min,
// capped at max, with equal jitter (half fixed, half random).
func (l *sessionLoop) backoff(n int) time.Duration {
	d := l.max
	if n < 30 {
		d = min(l.min<<(n-1), l.max)
	}
	half := d / 2
	return half + time.Duration(l.rand()%uint64(half+1))
}

// run holds the session until ctx ends.
func (l *sessionLoop) run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		start := l.now()
		err := l.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == errCredentialChanged {
			failures = 0
			l.log.Info("certificate renewed; reconnecting with the new one")
			continue
		}
		if l.now().Sub(start) >= l.stable {
			failures = 0
		}
		failures++
		wait := l.backoff(failures)
		if err != nil {
			l.log.Warn("MQTT session failed", "err", err, "attempt", failures, "retry_in", wait.Round(time.Millisecond))
		} else {
			l.log.Warn("MQTT session lost", "attempt", failures, "retry_in", wait.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-l.after(wait):
		}
	}
}

type sessionError string

func (e sessionError) Error() string { return string(e) }

const errCredentialChanged = sessionError("certificate renewed")

// once opens one session and holds it until it drops, the credential
// changes or ctx ends. It returns nil when an established session dropped.
func (l *sessionLoop) once(ctx context.Context) error {
	var gen uint64
	if l.credential != nil {
		gen = l.credential()
	}
	s, err := l.dial(ctx)
	if err != nil {
		return err
	}
	defer func() {
		l.mu.Lock()
		l.cur = nil
		l.mu.Unlock()
		s.Close()
	}()
	if err := l.setup(ctx, s); err != nil {
		return err
	}
	l.mu.Lock()
	l.cur = s
	l.mu.Unlock()
	l.log.Info("MQTT session up")
	if l.flush != nil {
		l.flush(s)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.kick:
			if l.flush != nil && s.Connected() {
				l.flush(s)
			}
		case <-l.after(l.poll):
		}
		if !s.Connected() {
			return nil
		}
		if l.credential != nil && l.credential() != gen {
			return errCredentialChanged
		}
	}
}

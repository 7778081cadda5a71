package broker

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/wardiot/ward/internal/policy"
)

// Internal topic namespaces. Every topic a client names is prefixed with
// its tenant's namespace for its kind, and the prefix is stripped again on
// delivery, so a client cannot name another tenant's topics, and devices
// and services never share a topic tree.
const (
	nsDevice  = "d"
	nsService = "s"
	// nsDenied prefixes filters refused by policy, so that the refusal can
	// never be confused with a filter that happens to look namespaced.
	nsDenied = "x/"
	// refusedTopic replaces publish topics that are refused before policy,
	// so mochi takes its ordinary not-authorized path.
	refusedTopic = "x/refused"
)

func namespace(kind, tenant string) string { return kind + "/" + tenant + "/" }

// clientKey is the session key mochi sees instead of the client ID, so
// that equal device IDs in two tenants never take over each other.
func clientKey(kind, tenant, device string) string {
	k := nsDevice
	if kind == KindService {
		k = nsService
	}
	return k + "/" + tenant + "/" + device
}

// session is the gateway's state for one authenticated connection.
type session struct {
	id     Identity
	remote string
	ns     string
	rules  *policy.Bound
	msgs   *bucket // per device
	bytes  *bucket
	events *bucket // bounds the events one session can cause

	cl      atomic.Pointer[mqtt.Client]
	cut     atomic.Bool // set by Disconnect; checked when the session is established
	subs    int         // touched only by the connection's read goroutine
	limited bool        // the publish being processed exceeded a rate limit
	refused bool        // the publish being processed names a topic no policy may grant
}

func newSession(b *Broker, id Identity, remote string) *session {
	kind := nsDevice
	if id.Kind == KindService {
		kind = nsService
	}
	now := b.cfg.Clock()
	dl := b.cfg.DeviceLimits
	return &session{
		id:     id,
		remote: remote,
		ns:     namespace(kind, id.Tenant),
		msgs:   newBucket(dl.MessagesPerSecond, dl.MessagesPerSecond, now),
		bytes:  newBucket(dl.BytesPerSecond, max(dl.BytesPerSecond, float64(b.cfg.MaxPacketSize)), now),
		events: newBucket(eventsPerSecond, eventsBurst, now),
	}
}

// Event budget per session: enough to see what a misbehaving device does,
// not enough to flood the security event stream.
const (
	eventsPerSecond = 1
	eventsBurst     = 10
)

func (s *session) client() *mqtt.Client { return s.cl.Load() }

func (s *session) remoteIP() string {
	host, _, err := net.SplitHostPort(s.remote)
	if err != nil {
		return s.remote
	}
	return host
}

func sessionOf(cl *mqtt.Client) *session {
	if cl == nil || cl.Net.Inline {
		return nil
	}
	if c, ok := cl.Net.Conn.(*conn); ok {
		return c.sess
	}
	return nil
}

func (s *session) strip(topic string) (string, bool) {
	return strings.CutPrefix(topic, s.ns)
}

// registry indexes live sessions by certificate and serial.
type registry struct {
	mu     sync.Mutex
	byCert map[[32]byte]map[*session]struct{}
	bySer  map[string]map[*session]struct{}
	byDev  map[string]map[*session]struct{}
	counts map[string]int
	devs   int
	svcs   int
}

func newRegistry() *registry {
	return &registry{
		byCert: make(map[[32]byte]map[*session]struct{}),
		bySer:  make(map[string]map[*session]struct{}),
		byDev:  make(map[string]map[*session]struct{}),
		counts: make(map[string]int),
	}
}

// admit registers s unless a live session with the same certificate comes
// from another address; then it returns those sessions and does not
// register s. The check and the insert are one step so two clones racing
// in cannot both pass.
func (r *registry) admit(s *session) (clones []*session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for o := range r.byCert[s.id.CertSHA256] {
		if cl := o.client(); cl != nil && cl.Closed() {
			continue
		}
		if o.remoteIP() != s.remoteIP() {
			clones = append(clones, o)
		}
	}
	if len(clones) > 0 {
		return clones
	}
	add := func(m map[*session]struct{}) map[*session]struct{} {
		if m == nil {
			m = make(map[*session]struct{})
		}
		m[s] = struct{}{}
		return m
	}
	r.byCert[s.id.CertSHA256] = add(r.byCert[s.id.CertSHA256])
	sk := s.id.Tenant + "/" + s.id.Serial
	r.bySer[sk] = add(r.bySer[sk])
	dk := s.id.Tenant + "/" + s.id.Device
	r.byDev[dk] = add(r.byDev[dk])
	r.counts[s.id.Tenant]++
	if s.id.Kind == KindService {
		r.svcs++
	} else {
		r.devs++
	}
	return nil
}

// remove unregisters s; it is safe to call for a session never admitted.
func (r *registry) remove(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.byCert[s.id.CertSHA256]
	if _, ok := m[s]; !ok {
		return
	}
	delete(m, s)
	if len(m) == 0 {
		delete(r.byCert, s.id.CertSHA256)
	}
	sk := s.id.Tenant + "/" + s.id.Serial
	delete(r.bySer[sk], s)
	if len(r.bySer[sk]) == 0 {
		delete(r.bySer, sk)
	}
	dk := s.id.Tenant + "/" + s.id.Device
	delete(r.byDev[dk], s)
	if len(r.byDev[dk]) == 0 {
		delete(r.byDev, dk)
	}
	if r.counts[s.id.Tenant]--; r.counts[s.id.Tenant] == 0 {
		delete(r.counts, s.id.Tenant)
	}
	if s.id.Kind == KindService {
		r.svcs--
	} else {
		r.devs--
	}
}

func (r *registry) bySerial(tenant, serial string) []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*session
	for s := range r.bySer[tenant+"/"+strings.ToLower(serial)] {
		out = append(out, s)
	}
	return out
}

func (r *registry) byDevice(tenant, device string) []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*session
	for s := range r.byDev[tenant+"/"+device] {
		out = append(out, s)
	}
	return out
}

func (r *registry) stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{Devices: r.devs, Services: r.svcs, ByTenant: make(map[string]int, len(r.counts))}
	for t, n := range r.counts {
		st.ByTenant[t] = n
	}
	return st
}

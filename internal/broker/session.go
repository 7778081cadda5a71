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

// registry indexes live sessions by certificate, serial and device. An
// index entry is almost always a single session, so the values are small
// slices rather than sets (this saves about 1 KB per connection).
type registry struct {
	mu     sync.Mutex
	byCert map[[32]byte][]*session
	bySer  map[string][]*session
	byDev  map[string][]*session
	counts map[string]int
	devs   int
	svcs   int
}

func newRegistry() *registry {
	return &registry{
		byCert: make(map[[32]byte][]*session),
		bySer:  make(map[string][]*session),
		byDev:  make(map[string][]*session),
		counts: make(map[string]int),
	}
}

func serKey(s *session) string { return s.id.Tenant + "/" + s.id.Serial }
func devKey(s *session) string { return s.id.Tenant + "/" + s.id.Kind + "/" + s.id.Device }

// admit registers s unless a live session with the same certificate comes
// from another address; then it returns those sessions and does not
// register s. The check and the insert are one step so two clones racing
// in cannot both pass.
func (r *registry) admit(s *session) (clones []*session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.byCert[s.id.CertSHA256] {
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
	r.byCert[s.id.CertSHA256] = append(r.byCert[s.id.CertSHA256], s)
	r.bySer[serKey(s)] = append(r.bySer[serKey(s)], s)
	r.byDev[devKey(s)] = append(r.byDev[devKey(s)], s)
	r.counts[s.id.Tenant]++
	if s.id.Kind == KindService {
		r.svcs++
	} else {
		r.devs++
	}
	return nil
}

// drop removes s from list, reporting whether it was there.
func drop(list []*session, s *session) ([]*session, bool) {
	for i, o := range list {
		if o == s {
			list[i] = list[len(list)-1]
			list[len(list)-1] = nil
			return list[:len(list)-1], true
		}
	}
	return list, false
}

// remove unregisters s; it is safe to call for a session never admitted.
func (r *registry) remove(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	list, ok := drop(r.byCert[s.id.CertSHA256], s)
	if !ok {
		return
	}
	if len(list) == 0 {
		delete(r.byCert, s.id.CertSHA256)
	} else {
		r.byCert[s.id.CertSHA256] = list
	}
	for _, idx := range []struct {
		m map[string][]*session
		k string
	}{{r.bySer, serKey(s)}, {r.byDev, devKey(s)}} {
		if list, _ := drop(idx.m[idx.k], s); len(list) == 0 {
			delete(idx.m, idx.k)
		} else {
			idx.m[idx.k] = list
		}
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
	return append([]*session(nil), r.bySer[tenant+"/"+strings.ToLower(serial)]...)
}

// byDevice returns the sessions of a device or service name in a tenant.
func (r *registry) byDevice(tenant, device string) []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]*session(nil), r.byDev[tenant+"/"+KindDevice+"/"+device]...)
	return append(out, r.byDev[tenant+"/"+KindService+"/"+device]...)
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

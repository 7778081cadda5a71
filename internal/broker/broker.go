// Package broker is Ward's device gateway: MQTT 3.1.1 and 5 over mutual TLS.
//
// The client certificate is the only identity. The tenant comes from the
// issuing CA that verified the chain, the device from the certificate's URI
// SAN (wire.DeviceURI), and the MQTT client ID must equal the device ID.
// Every tenant lives in its own topic namespace, so two tenants may each
// have a device "d1" and neither can name the other's topics. Device
// publishes go to Ward's ingest pipeline, never straight to other clients;
// Ward pushes to devices with [Broker.Publish], and backend services with a
// service certificate receive what Ward forwards with
// [Broker.PublishToServices].
//
// The MQTT session layer is github.com/mochi-mqtt/server/v2, kept behind
// this package's API: no mochi type appears in it.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/wardiot/ward/internal/policy"
	"github.com/wardiot/ward/wire"
)

// Identity is what a verified client certificate proves.
type Identity struct {
	Tenant string
	// Device is the device ID for Kind "device" and the service name for
	// Kind "service".
	Device string
	// Serial is the certificate serial number in lower-case hex without
	// leading zeros (big.Int.Text(16)).
	Serial      string
	Kind        string
	CertSHA256  [32]byte
	Quarantined bool
}

// Identity kinds.
const (
	KindDevice  = "device"
	KindService = "service"
)

// Trust supplies the issuing CAs the gateway accepts client certificates
// from. The server implements it from internal/pki; the set may change at
// any time (tenants are created and deleted), so the gateway asks on every
// handshake and implementations must be cheap and safe for concurrent use.
type Trust interface {
	// IssuerPool returns the pool of every tenant's issuing CAs. The
	// gateway treats them as trust anchors and never modifies the pool.
	// Return the same *x509.CertPool until the set changes and a new one
	// after: the gateway caches verified chains per pool.
	IssuerPool() *x509.CertPool
	// TenantForIssuer maps the CA that issued a verified client certificate
	// to its tenant.
	TenantForIssuer(cert *x509.Certificate) (tenant string, ok bool)
}

// Gate holds revocation and device state in memory. Check runs on every
// handshake, so it must not make a store round trip.
type Gate interface {
	// Check returns an error wrapping ErrRevoked, ErrDisabled,
	// ErrDecommissioned or ErrUnknownIdentity to refuse the identity, and
	// quarantined=true to admit it under the quarantine policy.
	Check(id Identity) (quarantined bool, err error)
}

// Ingest receives every publish a device is allowed to make. Deliver runs
// on the device's connection goroutine before a QoS 1 PUBACK is sent, so a
// nil return means Ward has taken responsibility for the message; an error
// wrapping ErrOverloaded is answered with Quota exceeded, any other error
// with Unspecified error. Deliver must not retain payload after returning
// unless it copies it.
type Ingest interface {
	Deliver(ctx context.Context, id Identity, topic string, payload []byte, qos byte) error
}

// Events receives security events. Emit is called on connection goroutines:
// it must not block (drop or queue instead).
type Events interface {
	Emit(ev Event)
}

// Policies chooses the topic policy of an identity. For returning nil means
// the built-in default for its kind (policy.Default or
// policy.ServiceReadOnly). Quarantined devices always get
// policy.Quarantine, whatever For returns.
type Policies interface {
	For(id Identity) *policy.Policy
}

// Errors a Gate wraps to refuse an identity.
var (
	ErrRevoked         = errors.New("certificate revoked")
	ErrDisabled        = errors.New("device disabled")
	ErrDecommissioned  = errors.New("device decommissioned")
	ErrUnknownIdentity = errors.New("unknown device or service")
)

// ErrOverloaded is wrapped by Ingest errors that mean "try again later".
var ErrOverloaded = errors.New("ingest overloaded")

// ErrClosed is returned by Serve and ListenAndServe after Close.
var ErrClosed = errors.New("broker: closed")

// Deps are the collaborators the gateway needs. Trust, Gate and Ingest are
// required; Events and Policies are optional.
type Deps struct {
	Trust    Trust
	Gate     Gate
	Ingest   Ingest
	Events   Events
	Policies Policies
}

// Broker is the device gateway. Create it with New.
type Broker struct {
	cfg    Config
	deps   Deps
	srv    *mqtt.Server
	tlsCfg *tls.Config
	reg    *registry
	lim    *limiter
	slots  chan struct{} // bounds concurrent TLS handshakes
	// verified hands identities from VerifyConnection to the connection
	// goroutine, keyed by *x509.Certificate; entries live for one handshake.
	verified sync.Map
	chains   *chainCache

	mu      sync.Mutex
	started bool
	closed  bool
	nextID  int
	lns     []net.Listener
	done    chan struct{}
}

// New validates cfg and builds a gateway. It does not listen until Serve or
// ListenAndServe is called.
func New(cfg Config, deps Deps) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Trust == nil || deps.Gate == nil || deps.Ingest == nil {
		return nil, errors.New("broker: Trust, Gate and Ingest are required")
	}
	b := &Broker{
		cfg:    cfg,
		deps:   deps,
		reg:    newRegistry(),
		lim:    newLimiter(cfg.DeviceLimits, cfg.TenantLimits, cfg.Clock),
		slots:  make(chan struct{}, cfg.MaxPendingHandshakes),
		done:   make(chan struct{}),
		chains: newChainCache(),
	}
	b.tlsCfg = b.baseTLSConfig()

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = int64(cfg.MaxSessions)
	caps.MaximumPacketSize = cfg.MaxPacketSize
	caps.MaximumInflight = cfg.MaxInflight
	caps.ReceiveMaximum = cfg.ReceiveMaximum
	caps.MaximumClientWritesPending = cfg.MaxPendingWrites
	caps.MaximumSessionExpiryInterval = uint32(cfg.MaxSessionExpiry / time.Second)
	caps.MaximumMessageExpiryInterval = int64(cfg.MaxSessionExpiry / time.Second)
	caps.MaximumQos = 1             // QoS 2 buys nothing for ingest and doubles the round trips
	caps.TopicAliasMaximum = 0      // aliases would let a topic skip the policy check
	caps.SharedSubAvailable = 0     // $share would cross device boundaries
	caps.RetainAvailable = 0        // devices never publish to each other
	caps.SubIDAvailable = 0         // not needed, less state
	caps.MinimumProtocolVersion = 4 // MQTT 3.1.1 and 5 only
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		InlineClient:             true,                          // Broker.Publish pushes through it
		Logger:                   slog.New(slog.DiscardHandler), // mochi logs whole packets, payloads included
		SysTopicResendInterval:   sysTopicInterval,
		ClientNetReadBufferSize:  netBufferSize,
		ClientNetWriteBufferSize: netBufferSize,
	})
	if err := b.srv.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return b, nil
}

// ListenAndServe listens on cfg.Addr and serves until Close.
func (b *Broker) ListenAndServe() error {
	ln, err := net.Listen("tcp", b.cfg.Addr)
	if err != nil {
		return fmt.Errorf("broker: listen: %w", err)
	}
	return b.Serve(ln)
}

// Serve accepts TCP connections on ln, runs the TLS handshake itself and
// serves MQTT on them until Close. It always returns a non-nil error, ErrClosed
// after Close. There is no plaintext mode.
func (b *Broker) Serve(ln net.Listener) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	b.nextID++
	l := &tlsListener{b: b, ln: ln, id: fmt.Sprintf("mqtts-%d", b.nextID)}
	if err := b.srv.AddListener(l); err != nil {
		b.mu.Unlock()
		return fmt.Errorf("broker: %w", err)
	}
	b.lns = append(b.lns, ln)
	if !b.started {
		b.started = true
		if err := b.srv.Serve(); err != nil {
			b.mu.Unlock()
			return fmt.Errorf("broker: %w", err)
		}
	} else {
		b.srv.Listeners.Serve(l.id, b.srv.EstablishConnection)
	}
	b.mu.Unlock()
	<-b.done
	return ErrClosed
}

// Close stops every listener and cuts every session.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var err error
	if b.started {
		err = b.srv.Close()
	}
	for _, ln := range b.lns {
		ln.Close()
	}
	close(b.done)
	return err
}

// Disconnect cuts the live session of a device (or service) at once, for
// example when its certificate is revoked or it is disabled. It reports
// whether a session was cut. Pair it with a Gate update so the device
// cannot reconnect.
func (b *Broker) Disconnect(tenant, device, reason string) bool {
	cut := false
	for _, kind := range []string{KindDevice, KindService} {
		if cl, ok := b.srv.Clients.Get(clientKey(kind, tenant, device)); ok && !cl.Closed() {
			b.cut(cl, reason)
			cut = true
		}
	}
	// Sessions still between handshake and CONNACK are not in mochi's
	// client list yet: mark them so they are cut as soon as they are.
	for _, s := range b.reg.byDevice(tenant, device) {
		if b.cutSession(s, reason) {
			cut = true
		}
	}
	return cut
}

// cutSession marks s as cut and disconnects it if it is established; if it
// is not, OnSessionEstablished sees the mark.
func (b *Broker) cutSession(s *session, reason string) bool {
	s.cut.Store(true)
	if cl := s.client(); cl != nil && !cl.Closed() {
		b.cut(cl, reason)
		return true
	}
	return false
}

// DisconnectSerial cuts every live session that presented the certificate
// with this serial (lower-case hex, as in Identity.Serial) from tenant's
// CAs, and returns how many were cut.
func (b *Broker) DisconnectSerial(tenant, serial, reason string) int {
	n := 0
	for _, s := range b.reg.bySerial(tenant, serial) {
		if b.cutSession(s, reason) {
			n++
		}
	}
	return n
}

func (b *Broker) cut(cl *mqtt.Client, reason string) {
	if s := sessionOf(cl); s != nil {
		b.emit(EventDisconnected, s, reason)
	}
	_ = b.srv.DisconnectClient(cl, packets.ErrAdministrativeAction)
}

// Publish pushes a message from Ward to a device on
// ward/v1/<device>/<suffix> in the device's tenant namespace, for example a
// twin delta or an attestation challenge. Only the device's own sessions
// can receive it, and only if its policy allows the topic.
func (b *Broker) Publish(tenant, device, suffix string, payload []byte, qos byte) error {
	return b.inject(nsDevice, tenant, device, suffix, payload, qos)
}

// PublishToServices forwards verified data about a device (telemetry after
// signature and replay checks) to backend services of the tenant subscribed
// to ward/v1/<device>/<suffix>. Devices never receive it.
func (b *Broker) PublishToServices(tenant, device, suffix string, payload []byte, qos byte) error {
	return b.inject(nsService, tenant, device, suffix, payload, qos)
}

func (b *Broker) inject(ns, tenant, device, suffix string, payload []byte, qos byte) error {
	if err := wire.ValidateTenantID(tenant); err != nil {
		return fmt.Errorf("broker: publish: %w", err)
	}
	if err := wire.ValidateDeviceID(device); err != nil {
		return fmt.Errorf("broker: publish: %w", err)
	}
	topic := wire.DeviceTopic(device, suffix)
	if err := policy.ValidateTopic(topic); err != nil {
		return fmt.Errorf("broker: publish: %w", err)
	}
	if qos > 1 {
		return errors.New("broker: publish: qos must be 0 or 1")
	}
	if int64(len(payload)) > int64(b.cfg.MaxPacketSize) {
		return fmt.Errorf("broker: publish: payload larger than %d bytes", b.cfg.MaxPacketSize)
	}
	b.mu.Lock()
	started, closed := b.started, b.closed
	b.mu.Unlock()
	if !started || closed {
		return errors.New("broker: publish: not serving")
	}
	return b.srv.Publish(namespace(ns, tenant)+topic, payload, false, qos)
}

// Stats counts live sessions.
type Stats struct {
	Devices  int
	Services int
	// ByTenant counts devices and services per tenant.
	ByTenant map[string]int
}

// Sessions returns the live session counts.
func (b *Broker) Sessions() Stats {
	return b.reg.stats()
}

func (b *Broker) emit(typ string, s *session, reason string) {
	if b.deps.Events == nil {
		return
	}
	ev := Event{Type: typ, Reason: reason, Time: b.cfg.Clock()}
	if s != nil {
		ev.Tenant, ev.Device, ev.Remote = s.id.Tenant, s.id.Device, s.remote
	}
	b.deps.Events.Emit(ev)
}

var _ io.Closer = (*Broker)(nil)

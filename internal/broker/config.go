package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// Security and resource limits. Each bounds what one client, or one tenant,
// can make the gateway spend.
const (
	// DefaultHandshakeTimeout bounds how long an unauthenticated peer may
	// hold a connection and a handshake slot.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultConnectTimeout bounds the time between the TLS handshake and
	// the MQTT CONNECT packet.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxPendingHandshakes bounds concurrent TLS handshakes so a
	// connection flood cannot exhaust goroutines and CPU; extra connections
	// are closed at once.
	DefaultMaxPendingHandshakes = 1024
	// DefaultMaxPacketSize bounds every MQTT packet (and so every payload).
	// Device messages are small signed envelopes; firmware travels over
	// HTTPS, not MQTT.
	DefaultMaxPacketSize = 256 << 10
	// DefaultMaxSessions bounds live sessions per gateway process.
	DefaultMaxSessions = 1_000_000
	// DefaultMaxInflight bounds the QoS 1 messages stored for one client.
	DefaultMaxInflight = 64
	// DefaultReceiveMaximum bounds the QoS 1 publishes a client may have
	// unacknowledged towards the gateway.
	DefaultReceiveMaximum = 32
	// DefaultMaxPendingWrites bounds the outbound queue of one client;
	// mochi's default (8192) costs 64 KiB per idle connection.
	DefaultMaxPendingWrites = 64
	// DefaultMaxKeepalive is imposed on clients asking for no keepalive or
	// a longer one, so dead connections are found within 1.5x of it.
	DefaultMaxKeepalive = 20 * time.Minute
	// DefaultMaxSessionExpiry bounds how long a disconnected persistent
	// session (and its queued messages) is kept in memory.
	DefaultMaxSessionExpiry = time.Hour
	// MaxSubscriptionsPerSession bounds the subscriptions one session may
	// hold; a device needs a handful.
	MaxSubscriptionsPerSession = 32
	// MaxClientChain bounds the certificates a client may present.
	MaxClientChain = 4
	// sysTopicInterval is how often mochi refreshes $SYS topics, which no
	// client can subscribe to here; rarely, since it stops the world to read
	// memory statistics.
	sysTopicInterval = 3600
	// netBufferSize is mochi's per-connection read buffer (and the write
	// batching threshold). tls.Conn already buffers a whole record, so this
	// only needs to hold a few small packets.
	netBufferSize = 512
	// maxTrackedIdentities bounds the connect-attempt buckets remembered for
	// identities without a live session.
	maxTrackedIdentities = 100_000
)

// Limits are rates for one device or one tenant. Zero means unlimited.
type Limits struct {
	MessagesPerSecond float64
	BytesPerSecond    float64
	ConnectsPerMinute float64
}

// SharedCertAction says what to do when a certificate already in use by a
// live session is presented from another address.
type SharedCertAction int

const (
	// RefuseNewcomer keeps the established session and refuses the new one.
	RefuseNewcomer SharedCertAction = iota
	// CutBoth refuses the new session and cuts the established one: the key
	// has leaked and neither copy can be trusted.
	CutBoth
)

// Config configures the gateway. The zero value of every field but
// GetCertificate has a usable default.
type Config struct {
	// Addr is the listen address for ListenAndServe, e.g. ":8883".
	Addr string
	// GetCertificate returns the gateway's own TLS certificate.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)

	// Limits; zero means the Default... constant of the same name.
	HandshakeTimeout     time.Duration
	ConnectTimeout       time.Duration
	MaxPendingHandshakes int
	MaxPacketSize        uint32
	MaxSessions          int
	MaxInflight          uint16
	ReceiveMaximum       uint16
	MaxPendingWrites     int32
	MaxKeepalive         time.Duration
	MaxSessionExpiry     time.Duration

	// DeviceLimits apply to each device (or service) identity; the zero
	// value means DefaultDeviceLimits.
	DeviceLimits Limits
	// TenantLimits apply to all identities of a tenant together; zero
	// rates are unlimited.
	TenantLimits Limits
	// SharedCert decides, per tenant, what a cloned certificate triggers.
	// Nil means RefuseNewcomer for every tenant.
	SharedCert func(tenant string) SharedCertAction

	// Clock is the time source for certificate validity and rate limits.
	Clock func() time.Time
}

// DefaultDeviceLimits are conservative rates for one device: telemetry a
// few times a second, reconnects a few times a minute.
var DefaultDeviceLimits = Limits{MessagesPerSecond: 50, BytesPerSecond: 256 << 10, ConnectsPerMinute: 10}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.ConnectTimeout, DefaultConnectTimeout)
	def(&c.MaxKeepalive, DefaultMaxKeepalive)
	def(&c.MaxSessionExpiry, DefaultMaxSessionExpiry)
	if c.MaxPendingHandshakes == 0 {
		c.MaxPendingHandshakes = DefaultMaxPendingHandshakes
	}
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = DefaultMaxPacketSize
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.ReceiveMaximum == 0 {
		c.ReceiveMaximum = DefaultReceiveMaximum
	}
	if c.MaxPendingWrites == 0 {
		c.MaxPendingWrites = DefaultMaxPendingWrites
	}
	if c.DeviceLimits == (Limits{}) {
		c.DeviceLimits = DefaultDeviceLimits
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
}

// Validate reports every problem with the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.GetCertificate == nil {
		errs = append(errs, errors.New("GetCertificate is required: the gateway only speaks TLS"))
	}
	if c.MaxKeepalive > 65535*time.Second {
		errs = append(errs, fmt.Errorf("MaxKeepalive %v exceeds MQTT's 65535 s", c.MaxKeepalive))
	}
	if c.MaxPacketSize < 1024 {
		errs = append(errs, fmt.Errorf("MaxPacketSize %d is below 1024 bytes", c.MaxPacketSize))
	}
	for name, l := range map[string]Limits{"DeviceLimits": c.DeviceLimits, "TenantLimits": c.TenantLimits} {
		if l.MessagesPerSecond < 0 || l.BytesPerSecond < 0 || l.ConnectsPerMinute < 0 {
			errs = append(errs, fmt.Errorf("%s: rates must not be negative", name))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("broker: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

package deviceauth

import (
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Token lifetimes and limits. Each is a security trade-off named here so
// that changing one is a visible decision.
const (
	// MaxAssertionLifetime bounds exp - iat of a client assertion (and how
	// far in the future exp may be). A short life keeps the replay caches
	// small and a stolen assertion nearly worthless.
	MaxAssertionLifetime = 5 * time.Minute
	// ClockSkew is tolerated between device and server clocks when
	// judging exp, iat and nbf. Devices without RTC sync drift; more than a
	// minute of tolerance would lengthen what a stolen assertion is good for.
	ClockSkew = time.Minute
	// DefaultAccessTokenLifetime: access tokens are bearer secrets checked
	// against revocation on every use, so their lifetime only bounds what a
	// token copied off a device is worth once the device stops refreshing.
	DefaultAccessTokenLifetime = 10 * time.Minute
	// MaxAccessTokenLifetime caps the configurable lifetime.
	MaxAccessTokenLifetime = time.Hour
	// DefaultRefreshIdleLifetime: a refresh token not used for a day
	// expires; a device off-line longer authenticates again with its key.
	DefaultRefreshIdleLifetime = 24 * time.Hour
	// DefaultRefreshAbsoluteLifetime: a refresh token family ends 30 days
	// after the client credentials grant that began it, however often it
	// was rotated, so possession of the device key is proven regularly.
	DefaultRefreshAbsoluteLifetime = 30 * 24 * time.Hour
	// DefaultMaxReplayEntries bounds the in-process jti cache. The store
	// check is authoritative; the cache only spares it replay floods.
	DefaultMaxReplayEntries = 64 << 10
)

// Identity is an authenticated device: who it is and under which
// certificate it proved it.
type Identity struct {
	Tenant string
	Device string
	// CertSerial is the serial of the certificate whose key signed the
	// client assertion that began the token family, as [DeviceKeys]
	// returned it.
	CertSerial string
}

// DeviceKeys finds the key a device authenticates with.
type DeviceKeys interface {
	// CurrentKey returns the public key of the device's current
	// certificate (the newest one issued to it that is neither expired nor
	// revoked) and that certificate's serial in a canonical text form (Ward
	// uses lower-case hex without leading zeros, as big.Int.Text(16)). The
	// serial is stored with tokens and compared for equality only.
	//
	// It returns an error wrapping [ErrUnknownDevice] if the tenant or
	// device does not exist or has no current certificate; the caller then
	// answers exactly as for a bad signature. Any other error is an
	// infrastructure failure (HTTP 500/503, nothing is issued).
	CurrentKey(ctx context.Context, tenant, device string) (key crypto.PublicKey, certSerial string, err error)
}

// DeviceStatus says whether a device may hold tokens.
type DeviceStatus interface {
	// Usable returns nil if the device may be issued or use tokens bound
	// to the certificate certSerial. It returns an error wrapping
	// [ErrRefused] if that certificate is revoked or the device is
	// disabled, quarantined or decommissioned; its text may be shown to the
	// device. Any other error is an infrastructure failure.
	//
	// It is called on every bearer-authenticated request, so it must be
	// cheap: an in-memory revocation set and a cached device state, not a
	// database round trip.
	Usable(ctx context.Context, tenant, device, certSerial string) error
}

// Hash is the SHA-256 of a token or assertion-ID key. Only hashes reach the
// store: a copy of the token table opens no device API.
type Hash [sha256.Size]byte

// Kind tells access and refresh tokens apart.
type Kind uint8

// Token kinds. The numeric values are stored.
const (
	KindAccess  Kind = 1
	KindRefresh Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindAccess:
		return "access"
	case KindRefresh:
		return "refresh"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Token is the stored record of an issued token. The token itself is never
// stored.
type Token struct {
	Hash Hash
	Kind Kind
	// Family is the random ID shared by every token that descends from one
	// client credentials grant. Revoking it revokes them all.
	Family     string
	Tenant     string
	Device     string
	CertSerial string
	IssuedAt   time.Time
	// ExpiresAt ends the token. For a refresh token it is already the
	// earlier of the idle and the family's absolute deadline.
	ExpiresAt time.Time
	// FamilyExpiresAt is the family's absolute deadline, inherited by
	// every refresh token rotated from it.
	FamilyExpiresAt time.Time
}

// Store keeps token hashes. It is implemented in SQL by the server
// (SQLite and PostgreSQL); deviceauthtest.Store is the in-memory reference
// and deviceauthtest.RunStoreTests the conformance suite every
// implementation must pass. All methods must be safe for concurrent use
// from several processes sharing the database.
type Store interface {
	// PutTokens inserts toks atomically: all or none. A hash that already
	// exists is an error (it would mean a broken random source).
	PutTokens(ctx context.Context, toks []Token) error

	// AccessToken returns the access token with hash h. It returns an error
	// wrapping [ErrNotFound] if there is none, if the token with that hash
	// is a refresh token, or if its family was revoked. It does not judge
	// expiry; the caller does.
	AccessToken(ctx context.Context, h Hash) (*Token, error)

	// UseRefreshToken marks the refresh token with hash h used, as one
	// atomic conditional update (UPDATE ... SET used_at = $now WHERE
	// hash = $h AND kind = refresh AND used_at IS NULL AND NOT revoked), so
	// that of two concurrent calls exactly one succeeds.
	//
	//  - First use: returns the token and nil.
	//  - Used before (whether or not its family has since been revoked):
	//    returns the token and an error wrapping [ErrReused]. The caller
	//    revokes the family.
	//  - No refresh token with that hash, or an unused one of a revoked
	//    family: returns nil and an error wrapping [ErrNotFound].
	//
	// It does not judge expiry. A store may delete tokens once ExpiresAt is
	// past; a used refresh token must be kept until then so that its reuse
	// is recognised.
	UseRefreshToken(ctx context.Context, h Hash, now time.Time) (*Token, error)

	// RevokeFamily revokes every token of family, present and future
	// (PutTokens into a revoked family must fail or be revoked at once).
	// Revoking an unknown or revoked family is not an error. After it
	// returns, AccessToken and UseRefreshToken on any node refuse the
	// family's tokens.
	RevokeFamily(ctx context.Context, family string) error

	// UseAssertionID records the client assertion key k (hash of client ID
	// and jti) until expiresAt. If k is already recorded and its expiresAt
	// has not passed it returns an error wrapping [ErrReused] and changes
	// nothing. It must be one atomic insert (INSERT ... ON CONFLICT DO
	// UPDATE ... WHERE expires_at <= $now), so a replay sent to two nodes at
	// once succeeds on at most one. Expired keys may be deleted.
	UseAssertionID(ctx context.Context, k Hash, expiresAt, now time.Time) error
}

// Events receives security events. Implementations must not block the
// request for long; failures are theirs to log.
type Events interface {
	SecurityEvent(ctx context.Context, ev Event)
}

// Security event types. They are stable strings used as event types and
// metric labels.
const (
	EventRefreshReuse       = "device_token.refresh_reuse"        // a used refresh token came back: family revoked
	EventRefreshWrongClient = "device_token.refresh_wrong_client" // a device presented another device's refresh token: family revoked
	EventAssertionReplay    = "device_token.assertion_replay"     // a validly signed assertion was presented twice
	EventRefused            = "device_token.refused"              // a revoked certificate or disabled device tried to authenticate
	EventRateLimited        = "device_api.rate_limited"           // a device exceeded its request rate
)

// Event is a security event. Detail never holds a token or key.
type Event struct {
	Type       string
	Time       time.Time
	Tenant     string
	Device     string
	Family     string // token family, when one is involved
	RemoteAddr string
	Detail     string
}

// Auditor appends to the audit log. Its fields mirror audit.Entry.
type Auditor interface {
	Audit(ctx context.Context, e AuditEntry) error
}

// AuditEntry is one audit record. Actor is "device:<tenant>/<device>".
type AuditEntry struct {
	Actor  string
	Action string // "device_token.issue", "device_token.refresh", "device_token.revoke_family"
	Target string // "token-family:<id>"
	Tenant string
	Result string // "ok" or "denied"
	Detail string
}

// Ingest receives telemetry posted over HTTPS.
type Ingest interface {
	// Deliver handles one envelope from an authenticated device, exactly as
	// an MQTT publish to topic (ward/v1/<device>/telemetry/<stream>). It
	// returns an error wrapping [ErrRejected] when the message itself is
	// refused (signature, replay, schema...): its text is shown to the
	// device with HTTP 400. Any other error is an infrastructure failure
	// (HTTP 503).
	Deliver(ctx context.Context, id Identity, topic string, raw []byte) error
}

// Sentinel errors of the interfaces above.
var (
	ErrUnknownDevice = errors.New("deviceauth: unknown device")
	ErrRefused       = errors.New("deviceauth: device may not authenticate")
	ErrNotFound      = errors.New("deviceauth: token not found")
	ErrReused        = errors.New("deviceauth: already used")
	ErrRejected      = errors.New("deviceauth: message rejected")
)

// Config configures a [Server]. Store, Keys, Status, Events, Auditor and
// Audiences are required; zero durations take the defaults.
type Config struct {
	// Audiences are the aud values a client assertion may carry: the
	// token endpoint's full URL as devices reach it
	// (https://ward.example.com/oauth/token), and optionally the issuer
	// URL. Compared exactly.
	Audiences []string

	Store   Store
	Keys    DeviceKeys
	Status  DeviceStatus
	Events  Events
	Auditor Auditor
	// Ingest receives posted telemetry; required only for
	// [Server.TelemetryHandler].
	Ingest Ingest

	Clock  func() time.Time
	Logger *slog.Logger

	AccessTokenLifetime     time.Duration
	RefreshIdleLifetime     time.Duration
	RefreshAbsoluteLifetime time.Duration
	MaxReplayEntries        int

	// Rate limits posted telemetry per device; zero takes the defaults.
	Rate RateLimit
}

func (c *Config) setDefaults() error {
	var errs []error
	if len(c.Audiences) == 0 {
		errs = append(errs, errors.New("Audiences: give the token endpoint URL devices use"))
	}
	for _, a := range c.Audiences {
		if a == "" {
			errs = append(errs, errors.New("Audiences: empty value"))
		}
	}
	if c.Store == nil {
		errs = append(errs, errors.New("Store is required"))
	}
	if c.Keys == nil {
		errs = append(errs, errors.New("Keys is required"))
	}
	if c.Status == nil {
		errs = append(errs, errors.New("Status is required"))
	}
	if c.Events == nil {
		errs = append(errs, errors.New("Events is required"))
	}
	if c.Auditor == nil {
		errs = append(errs, errors.New("Auditor is required"))
	}
	if c.AccessTokenLifetime > MaxAccessTokenLifetime || c.AccessTokenLifetime < 0 {
		errs = append(errs, fmt.Errorf("AccessTokenLifetime must be at most %v", MaxAccessTokenLifetime))
	}
	if c.RefreshIdleLifetime < 0 || c.RefreshAbsoluteLifetime < 0 {
		errs = append(errs, errors.New("refresh lifetimes must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deviceauth: invalid config: %w", err)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.AccessTokenLifetime == 0 {
		c.AccessTokenLifetime = DefaultAccessTokenLifetime
	}
	if c.RefreshIdleLifetime == 0 {
		c.RefreshIdleLifetime = DefaultRefreshIdleLifetime
	}
	if c.RefreshAbsoluteLifetime == 0 {
		c.RefreshAbsoluteLifetime = DefaultRefreshAbsoluteLifetime
	}
	if c.MaxReplayEntries <= 0 {
		c.MaxReplayEntries = DefaultMaxReplayEntries
	}
	c.Rate.setDefaults()
	return nil
}

// Server issues device tokens and authenticates requests that carry them.
// It is safe for concurrent use.
type Server struct {
	cfg     Config
	replay  *replayCache
	limiter *limiter
}

// New returns a Server, or an error listing every problem with cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Server{
		cfg:     cfg,
		replay:  newReplayCache(cfg.MaxReplayEntries),
		limiter: newLimiter(cfg.Rate, cfg.Clock),
	}, nil
}

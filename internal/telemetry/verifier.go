package telemetry

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/wardiot/ward/internal/strictjson"
	"strings"
	"time"

	"github.com/wardiot/ward/wire"
)

// Defaults for [Options]. Each is a security limit: widening it widens what
// an attacker holding an old message or a skewed clock can do.
const (
	// DefaultMaxAge is how old a message's timestamp may be. It covers
	// store-and-forward on devices that were briefly offline; the replay
	// window, not the age, is what stops duplicates.
	DefaultMaxAge = time.Hour
	// DefaultMaxFuture tolerates device clocks running ahead.
	DefaultMaxFuture = 2 * time.Minute
	// DefaultEpochGrace is how long after an epoch rotation messages MACed
	// with the previous epoch key are still accepted (in-flight messages).
	DefaultEpochGrace = 10 * time.Minute
	// MaxStreamLen bounds the stream name taken from the topic.
	MaxStreamLen = 64
)

// Identity is the authenticated identity of the connection a message came
// from: the tenant from the issuing CA, the device from the certificate.
type Identity struct {
	Tenant string
	Device string
}

// PublicKey is a device signing key accepted for COSE_Sign1 envelopes.
type PublicKey struct {
	ID  []byte
	Key crypto.PublicKey
	// NotAfter ends acceptance of a key being rotated out. Zero means the
	// device's current key.
	NotAfter time.Time
}

// EpochKeys are a device's MAC keys: the current epoch's and, for a grace
// period after rotation, the previous one's.
type EpochKeys struct {
	Current    uint64
	CurrentKey []byte
	// Since is when the current epoch began; the previous key is
	// accepted until Since plus the grace period.
	Since       time.Time
	PreviousKey []byte // key of epoch Current-1; nil if none
}

// Keys looks up device keys. It is implemented by the store (or a cache in
// front of it). Errors are treated as infrastructure failures, not as
// rejections; a device with no key of the kind asked returns (nil, nil).
type Keys interface {
	SigningKeys(ctx context.Context, tenant, device string) ([]PublicKey, error)
	EpochKeys(ctx context.Context, tenant, device string) (*EpochKeys, error)
}

// Schemas finds registered schemas; [*Registry] implements it.
type Schemas interface {
	Lookup(tenant, id string, version uint32) (*Schema, bool)
}

// Options tune a [Verifier]. Zero values take the defaults.
type Options struct {
	Clock            func() time.Time
	MaxAge           time.Duration
	MaxFuture        time.Duration
	EpochGrace       time.Duration
	MaxReplayDevices int
	// ReplayFloor: a device with no replay state in this process is
	// accepted only for messages timestamped after it. The default, the
	// verifier's start, refuses messages a previous process may already
	// have accepted, at the price of refusing data buffered across a server
	// restart. Set it earlier only where the replay state is restored or a
	// replay within MaxAge after a restart is acceptable.
	ReplayFloor time.Time
}

// Verifier checks telemetry envelopes at ingest. It is safe for concurrent
// use.
type Verifier struct {
	keys    Keys
	schemas Schemas
	opts    Options
	replay  *replayGuard
}

// NewVerifier returns a verifier. Replay state starts empty, so by default
// messages timestamped before the verifier was created are refused as
// stale (see [Options.ReplayFloor]).
func NewVerifier(keys Keys, schemas Schemas, opts Options) *Verifier {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MaxFuture <= 0 {
		opts.MaxFuture = DefaultMaxFuture
	}
	if opts.EpochGrace <= 0 {
		opts.EpochGrace = DefaultEpochGrace
	}
	if opts.MaxReplayDevices <= 0 {
		opts.MaxReplayDevices = DefaultMaxReplayDevices
	}
	if opts.ReplayFloor.IsZero() {
		opts.ReplayFloor = opts.Clock()
	}
	return &Verifier{keys: keys, schemas: schemas, opts: opts, replay: newReplayGuard(opts.MaxReplayDevices, opts.ReplayFloor)}
}

// Message is a verified telemetry message.
type Message struct {
	Tenant        string
	Device        string
	Stream        string
	Seq           uint64
	Time          time.Time
	SchemaID      string
	SchemaVersion uint32
	Kind          wire.Kind
	KeyID         []byte // Sign1
	Epoch         uint64 // Mac0
	Received      time.Time
	// Payload is the verified JSON payload, including confidential fields:
	// log [Message.Redacted] instead.
	Payload json.RawMessage

	value  any
	schema *Schema
}

// Redacted returns the payload without confidential fields, for logs and
// for sinks that must not see them.
//
// A Message that did not come from [Verifier.Verify] has no schema, so its
// classifications are unknown and Redacted returns JSON null.
func (m *Message) Redacted() json.RawMessage {
	if m.schema == nil {
		return json.RawMessage("null")
	}
	if !m.schema.hasConfidential {
		return m.Payload
	}
	v, keep := split(m.value, m.schema.doc, Internal, "", nil)
	if !keep {
		return json.RawMessage("null")
	}
	b, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage("null")
	}
	return b
}

// SplitConfidential is [Schema.Split] for this message's payload.
func (m *Message) SplitConfidential(s Sealer, aad []byte) (public json.RawMessage, sealed []byte, err error) {
	if m.schema == nil {
		return nil, nil, errors.New("message has no schema: only verified messages can be split")
	}
	return m.schema.split(m.value, m.Payload, s, aad)
}

// Verify authenticates and validates one envelope published by id on topic
// (ward/v1/<device>/telemetry/<stream>). A rejection is an [*Error]; any
// other error comes from [Keys] and means the message could not be judged.
func (v *Verifier) Verify(ctx context.Context, id Identity, topic string, raw []byte) (*Message, error) {
	if len(raw) > wire.MaxEnvelopeSize {
		return nil, reject(ReasonTooLarge, nil, "%d bytes, limit %d", len(raw), wire.MaxEnvelopeSize)
	}
	stream, err := streamOf(id.Device, topic)
	if err != nil {
		return nil, err
	}
	env, err := wire.ParseEnvelope(raw)
	if err != nil {
		return nil, reject(ReasonMalformed, err, "%v", err)
	}
	h := &env.Header
	if h.Device != id.Device {
		return nil, reject(ReasonDeviceMismatch, nil, "envelope names device %q, connection is %q", h.Device, id.Device)
	}
	now := v.opts.Clock()
	switch env.Kind {
	case wire.KindSign1:
		if err := v.verifySign1(ctx, id, env, now); err != nil {
			return nil, err
		}
	case wire.KindMac0:
		if err := v.verifyMac0(ctx, id, env, now); err != nil {
			return nil, err
		}
	}
	if age := now.Sub(h.Time); age > v.opts.MaxAge {
		return nil, reject(ReasonStale, nil, "timestamp %s old, limit %s", age.Round(time.Second), v.opts.MaxAge)
	} else if -age > v.opts.MaxFuture {
		return nil, reject(ReasonFuture, nil, "timestamp %s ahead, limit %s", (-age).Round(time.Second), v.opts.MaxFuture)
	}
	if r, detail := v.replay.check(deviceKey{id.Tenant, id.Device}, h.Seq, h.Time); r != "" {
		return nil, reject(r, nil, "seq %d: %s", h.Seq, detail)
	}
	sch, ok := v.schemas.Lookup(id.Tenant, h.SchemaID, h.SchemaVersion)
	if !ok {
		return nil, reject(ReasonUnknownSchema, nil, "schema %s v%d is not registered", h.SchemaID, h.SchemaVersion)
	}
	val, err := strictjson.Decode(env.Payload, maxJSONDepth)
	if err != nil {
		return nil, reject(ReasonSchemaInvalid, nil, "payload is not valid JSON")
	}
	if err := sch.validate(val); err != nil {
		return nil, reject(ReasonSchemaInvalid, nil, "%s v%d: %v", h.SchemaID, h.SchemaVersion, err)
	}
	return &Message{
		Tenant: id.Tenant, Device: id.Device, Stream: stream,
		Seq: h.Seq, Time: h.Time, SchemaID: h.SchemaID, SchemaVersion: h.SchemaVersion,
		Kind: env.Kind, KeyID: bytes.Clone(h.KeyID), Epoch: h.Epoch, Received: now,
		Payload: bytes.Clone(env.Payload), value: val, schema: sch,
	}, nil
}

func (v *Verifier) verifySign1(ctx context.Context, id Identity, env *wire.Envelope, now time.Time) error {
	keys, err := v.keys.SigningKeys(ctx, id.Tenant, id.Device)
	if err != nil {
		return fmt.Errorf("looking up signing keys: %w", err)
	}
	for _, k := range keys {
		if !bytes.Equal(k.ID, env.Header.KeyID) {
			continue
		}
		if !k.NotAfter.IsZero() && !now.Before(k.NotAfter) {
			return reject(ReasonUnknownKey, nil, "key %x was rotated out at %s", k.ID, k.NotAfter.UTC().Format(time.RFC3339))
		}
		if err := env.VerifySign1(k.Key); err != nil {
			return reject(ReasonBadSignature, err, "COSE_Sign1 with key %x does not verify", k.ID)
		}
		return nil
	}
	return reject(ReasonUnknownKey, nil, "no signing key %x for device", env.Header.KeyID)
}

func (v *Verifier) verifyMac0(ctx context.Context, id Identity, env *wire.Envelope, now time.Time) error {
	ek, err := v.keys.EpochKeys(ctx, id.Tenant, id.Device)
	if err != nil {
		return fmt.Errorf("looking up epoch keys: %w", err)
	}
	if ek == nil {
		return reject(ReasonUnknownKey, nil, "device has no MAC epoch keys")
	}
	var key []byte
	switch e := env.Header.Epoch; {
	case e == ek.Current:
		key = ek.CurrentKey
	case ek.Current > 0 && e == ek.Current-1 && ek.PreviousKey != nil:
		if !now.Before(ek.Since.Add(v.opts.EpochGrace)) {
			return reject(ReasonUnknownKey, nil, "epoch %d ended more than %s ago (current %d)", e, v.opts.EpochGrace, ek.Current)
		}
		key = ek.PreviousKey
	default:
		return reject(ReasonUnknownKey, nil, "epoch %d not accepted (current %d)", e, ek.Current)
	}
	if err := env.VerifyMac0(key); err != nil {
		return reject(ReasonBadSignature, err, "COSE_Mac0 for epoch %d does not verify", env.Header.Epoch)
	}
	return nil
}

// streamOf checks that topic is the device's own telemetry topic and
// returns the stream name.
func streamOf(device, topic string) (string, error) {
	rest, ok := strings.CutPrefix(topic, wire.TopicRoot)
	if !ok {
		return "", reject(ReasonMalformed, nil, "not a telemetry topic")
	}
	dev, rest, _ := strings.Cut(rest, "/")
	if dev != device {
		return "", reject(ReasonDeviceMismatch, nil, "topic names another device")
	}
	stream, ok := strings.CutPrefix(rest, wire.TopicTelemetry+"/")
	if !ok {
		return "", reject(ReasonMalformed, nil, "not a telemetry topic")
	}
	if err := ValidateStream(stream); err != nil {
		return "", reject(ReasonMalformed, err, "%v", err)
	}
	return stream, nil
}

// ValidateStream reports whether s is a valid stream name: 1 to 64
// letters, digits, '_' or '-'. Stream names become topic levels and NATS
// subject tokens, so they exclude '/', '.', '+', '#', '*' and '>'.
func ValidateStream(s string) error {
	if len(s) == 0 || len(s) > MaxStreamLen {
		return fmt.Errorf("stream name must be 1 to %d characters", MaxStreamLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-') {
			return errors.New("stream name may hold only letters, digits, '_' and '-'")
		}
	}
	return nil
}

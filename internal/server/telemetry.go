package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/telemetry"
	"github.com/wardiot/ward/wire"
)

// keyCacheTTL bounds how long a device's signing keys are served from
// memory; issuance and revocation invalidate entries at once, the TTL only
// covers changes made by other server nodes.
const keyCacheTTL = 2 * time.Minute

// telemetryKeys finds a device's telemetry signing keys among its current
// certificates, from a cache: the verifier asks on every message.
type telemetryKeys struct {
	s  *Server
	mu sync.Mutex
	m  map[string]keyEntry
}

type keyEntry struct {
	keys   []telemetry.PublicKey
	loaded time.Time
}

var _ telemetry.Keys = (*telemetryKeys)(nil)

func (k *telemetryKeys) invalidate(tenant, device string) {
	k.mu.Lock()
	delete(k.m, tenant+"/"+device)
	k.mu.Unlock()
}

func (k *telemetryKeys) SigningKeys(ctx context.Context, tenant, device string) ([]telemetry.PublicKey, error) {
	now := k.s.now()
	k.mu.Lock()
	e, ok := k.m[tenant+"/"+device]
	k.mu.Unlock()
	if ok && now.Sub(e.loaded) < keyCacheTTL {
		return e.keys, nil
	}
	certs, err := k.s.store.ListCerts(ctx, store.CertFilter{Tenant: tenant, Device: device, Status: "good"})
	if err != nil {
		return nil, err
	}
	var keys []telemetry.PublicKey
	for i := len(certs) - 1; i >= 0; i-- { // newest first
		c := certs[i]
		if now.After(c.NotAfter) {
			continue
		}
		cert, err := x509.ParseCertificate(c.CertDER)
		if err != nil {
			continue
		}
		pk := telemetry.PublicKey{ID: wire.TelemetryKeyID(cert.RawSubjectPublicKeyInfo), Key: cert.PublicKey}
		if len(keys) > 0 {
			// An older key stays valid until its certificate expires or
			// is revoked: messages signed just before a renewal verify.
			pk.NotAfter = c.NotAfter
		}
		keys = append(keys, pk)
	}
	k.mu.Lock()
	k.m[tenant+"/"+device] = keyEntry{keys: keys, loaded: now}
	k.mu.Unlock()
	return keys, nil
}

// EpochKeys returns the device's MAC epoch keys (nil if it has no
// secret: COSE_Mac0 telemetry is then refused as unknown_key).
func (k *telemetryKeys) EpochKeys(ctx context.Context, tenant, device string) (*telemetry.EpochKeys, error) {
	return k.s.epochKeys(ctx, tenant, device)
}

// openTelemetry builds the verifier, the schema registry (from the store)
// and the sinks.
func (s *Server) openTelemetry(ctx context.Context) error {
	s.telemetryKeys = &telemetryKeys{s: s, m: map[string]keyEntry{}}
	s.Schemas = telemetry.NewRegistry()
	err := s.store.ForEachSchema(ctx, func(sc *store.Schema) error {
		_, err := s.Schemas.Register(sc.Tenant, sc.ID, sc.Version, sc.Doc)
		return err
	})
	if err != nil {
		return fmt.Errorf("load telemetry schemas: %w", err)
	}
	s.Verifier = telemetry.NewVerifier(s.telemetryKeys, s.Schemas, telemetry.Options{Clock: s.now})
	s.PKI.Revocations().Subscribe(func(r pki.Revoked) { s.telemetryKeys.invalidate(r.Tenant, r.Device) })
	s.window = newWindowSink(s)
	sinks := []telemetry.Sink{s.window}
	if s.cfg.NATS != "" {
		nc, err := nats.Connect(s.cfg.NATS, nats.Name("ward"), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("connect to NATS: %w", err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return err
		}
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "WARD_TELEMETRY",
			Subjects: []string{telemetry.DefaultSubjectPrefix + ".>"}, Duplicates: 2 * time.Minute}); err != nil {
			nc.Close()
			return fmt.Errorf("create the JetStream stream: %w", err)
		}
		s.nats = nc
		sinks = append(sinks, telemetry.NewJetStreamSink(js))
	}
	hooks, err := s.openWebhooks()
	if err != nil {
		return err
	}
	sinks = append(sinks, hooks...)
	s.sinks = telemetry.FanOut(sinks)
	return nil
}

// RegisterSchema registers and stores a schema version (compatibility
// checked against the previous version).
func (s *Server) RegisterSchema(ctx context.Context, actor, tenant, id string, version uint32, doc []byte) error {
	if _, err := s.Schemas.Register(tenant, id, version, doc); err != nil {
		return err
	}
	return s.store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.PutSchema(ctx, &store.Schema{Tenant: tenant, ID: id, Version: version, Doc: doc, CreatedAt: s.now().UTC()}); err != nil && !errors.Is(err, store.ErrConflict) {
			return err
		}
		_, err := audit.Append(ctx, tx, s.now(), audit.Entry{Actor: actor, Action: "schema.register",
			Target: fmt.Sprintf("schema:%s/v%d", id, version), Tenant: tenant})
		return err
	})
}

// ingestTelemetry verifies a device's telemetry envelope and hands it to
// the sinks. A rejection is a counted security event and a negative
// acknowledgement to the device.
func (s *Server) ingestTelemetry(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	topic := wire.DeviceTopic(id.Device, rest)
	msg, err := s.Verifier.Verify(ctx, telemetry.Identity{Tenant: id.Tenant, Device: id.Device}, topic, payload)
	if err != nil {
		if reason := telemetry.ReasonOf(err); reason != "" {
			s.Monitor.Emit(monitor.Event{Type: monitor.TelemetryRejected, Tenant: id.Tenant, Device: id.Device, Reason: string(reason)})
		}
		return err
	}
	return s.sinks.Write(ctx, msg)
}

// windowSink keeps the recent window of verified telemetry in the store,
// batching writes (one transaction per batch, not per message).
type windowSink struct {
	s       *Server
	q       chan *store.Reading
	dropped sync.Map
	done    chan struct{}
	flushC  chan chan struct{}
}

// Window tuning: a day of readings, written in batches of up to 1000 every
// 50 ms; the queue absorbs bursts.
const (
	windowKeep  = 24 * time.Hour
	windowQueue = 16384
	windowBatch = 1000
	windowWait  = 50 * time.Millisecond
)

func newWindowSink(s *Server) *windowSink {
	w := &windowSink{s: s, q: make(chan *store.Reading, windowQueue), done: make(chan struct{}), flushC: make(chan chan struct{})}
	go w.run()
	return w
}

func (w *windowSink) Write(ctx context.Context, m *telemetry.Message) error {
	sealer, err := w.s.Tenants.Sealer(ctx, m.Tenant)
	if err != nil {
		return err
	}
	public, sealed, err := m.SplitConfidential(sealer, []byte("telemetry:"+m.Tenant+"/"+m.Device))
	if err != nil {
		return err
	}
	r := &store.Reading{Tenant: m.Tenant, Device: m.Device, Stream: m.Stream, Seq: m.Seq, Time: m.Time, Received: m.Received,
		SchemaID: m.SchemaID, SchemaVersion: m.SchemaVersion, Payload: public, Sealed: sealed}
	select {
	case w.q <- r:
		return nil
	default:
		return fmt.Errorf("%w: telemetry window queue full", broker.ErrOverloaded)
	}
}

func (w *windowSink) flush(ctx context.Context) {
	c := make(chan struct{})
	select {
	case w.flushC <- c:
		<-c
	case <-ctx.Done():
	case <-w.done:
	}
}

func (w *windowSink) close() { close(w.done) }

func (w *windowSink) run() {
	prune := time.NewTicker(10 * time.Minute)
	defer prune.Stop()
	var batch []*store.Reading
	write := func() {
		if len(batch) == 0 {
			return
		}
		ctx := context.Background()
		if err := w.s.store.InTx(ctx, func(tx store.Tx) error { return tx.PutReadings(ctx, batch) }); err != nil {
			w.s.log.Error("store telemetry", "count", len(batch), "err", err)
		}
		batch = batch[:0]
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-w.done:
			for {
				select {
				case r := <-w.q:
					batch = append(batch, r)
				default:
					write()
					return
				}
			}
		case c := <-w.flushC:
			for len(w.q) > 0 {
				batch = append(batch, <-w.q)
			}
			write()
			close(c)
		case r := <-w.q:
			if len(batch) == 0 {
				timer.Reset(windowWait)
			}
			batch = append(batch, r)
			if len(batch) >= windowBatch {
				write()
			}
		case <-timer.C:
			write()
		case <-prune.C:
			ctx := context.Background()
			_ = w.s.store.InTx(ctx, func(tx store.Tx) error {
				_, err := tx.PruneReadings(ctx, w.s.now().Add(-windowKeep))
				return err
			})
		}
	}
}

// FlushTelemetry waits until queued readings are stored (so an API read
// right after a publish sees it).
func (s *Server) FlushTelemetry(ctx context.Context) { s.window.flush(ctx) }

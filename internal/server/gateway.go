package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"

	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// gatewayTrust gives the gateway the tenants' issuing CAs (active and
// retired: certificates they issued stay valid), rebuilding the pool only
// when the set of CAs changes, so the gateway's chain cache keeps working.
type gatewayTrust struct {
	pki *pki.Authority

	mu     sync.Mutex
	gen    uint64
	built  bool
	pool   *x509.CertPool
	tenant map[string]string // CA certificate DER -> tenant
}

var _ broker.Trust = (*gatewayTrust)(nil)

func (t *gatewayTrust) refresh() {
	gen := t.pki.Generation()
	if t.built && gen == t.gen {
		return
	}
	pool, m := x509.NewCertPool(), map[string]string{}
	for _, c := range t.pki.CAs("") {
		if c.Kind != pki.KindIssuing {
			continue
		}
		cert, err := x509.ParseCertificate(c.CertDER)
		if err != nil {
			continue
		}
		pool.AddCert(cert)
		m[string(cert.Raw)] = c.Tenant
	}
	t.pool, t.tenant, t.gen, t.built = pool, m, gen, true
}

func (t *gatewayTrust) IssuerPool() *x509.CertPool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refresh()
	return t.pool
}

func (t *gatewayTrust) TenantForIssuer(c *x509.Certificate) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refresh()
	tn, ok := t.tenant[string(c.Raw)]
	return tn, ok
}

// gatewayGate answers from memory: the revocation set and the device
// registry. No store round trip per connect.
type gatewayGate struct{ s *Server }

func (g gatewayGate) Check(id broker.Identity) (bool, error) {
	serial, ok := new(big.Int).SetString(id.Serial, 16)
	if !ok {
		return false, fmt.Errorf("%w: bad serial", broker.ErrUnknownIdentity)
	}
	if r, revoked := g.s.PKI.Revocations().Lookup(serial); revoked {
		return false, fmt.Errorf("%w: %s", broker.ErrRevoked, r.Reason)
	}
	if id.Kind != broker.KindDevice {
		return false, nil
	}
	switch st, _ := g.s.Fleet.State(id.Tenant, id.Device); st {
	case store.DeviceDisabled:
		return false, broker.ErrDisabled
	case store.DeviceDecommissioned:
		return false, broker.ErrDecommissioned
	case store.DeviceQuarantined:
		return true, nil
	}
	// Active, or issued before the registry knew the device: the
	// certificate itself is valid and not revoked.
	return false, nil
}

// gatewayEvents forwards the gateway's events to the security monitor
// (whose Emit never blocks).
type gatewayEvents struct{ m *monitor.Monitor }

func (e gatewayEvents) Emit(ev broker.Event) {
	e.m.Emit(monitor.Event{Type: ev.Type, Tenant: ev.Tenant, Device: ev.Device, Remote: ev.Remote, Reason: ev.Reason, Time: ev.Time})
}

// ingestRouter hands device publishes to the part that owns the topic.
type ingestRouter struct {
	s        *Server
	handlers map[string]func(ctx context.Context, id broker.Identity, rest string, payload []byte) error
}

var errUnroutable = errors.New("no handler for this topic")

func (r *ingestRouter) Deliver(ctx context.Context, id broker.Identity, topic string, payload []byte, qos byte) error {
	prefix := wire.TopicRoot + id.Device + "/"
	rest, ok := strings.CutPrefix(topic, prefix)
	if !ok {
		return errUnroutable // the policy already refuses this; defence in depth
	}
	for p, h := range r.handlers {
		if rest == p || strings.HasPrefix(rest, p+"/") {
			return h(ctx, id, rest, payload)
		}
	}
	return errUnroutable
}

// openGateway builds the MQTT gateway and ties it to revocation and the
// device registry: revoking a certificate or disabling a device cuts its
// live sessions.
func (s *Server) openGateway() error {
	router := &ingestRouter{s: s, handlers: s.ingestHandlers()}
	rate := func(r config.Rate) broker.Limits {
		return broker.Limits{MessagesPerSecond: r.MessagesPerSecond, BytesPerSecond: r.BytesPerSecond, ConnectsPerMinute: r.ConnectsPerMinute}
	}
	b, err := broker.New(broker.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.serverCert, nil },
		Clock:          s.now,
		DeviceLimits:   rate(s.cfg.DeviceRate),
		TenantLimits:   rate(s.cfg.TenantRate),
		SharedCert: func(tenant string) broker.SharedCertAction {
			a := s.cfg.CloneAction
			if v, ok := s.cfg.CloneActionTenants[tenant]; ok {
				a = v
			}
			if a == "cut-both" {
				return broker.CutBoth
			}
			return broker.RefuseNewcomer
		},
	}, broker.Deps{
		Trust:    &gatewayTrust{pki: s.PKI},
		Gate:     gatewayGate{s: s},
		Ingest:   router,
		Events:   gatewayEvents{m: s.Monitor},
		Policies: s.Policies,
	})
	if err != nil {
		return err
	}
	s.Gateway = b
	s.PKI.Revocations().Subscribe(func(r pki.Revoked) {
		if n := b.DisconnectSerial(r.Tenant, r.Serial, "certificate revoked"); n > 0 {
			s.log.Info("cut sessions of a revoked certificate", "tenant", r.Tenant, "serial", r.Serial, "sessions", n)
		}
	})
	s.Fleet.Subscribe(func(tenant, device, state string) {
		switch state {
		case store.DeviceDisabled, store.DeviceDecommissioned, store.DeviceQuarantined:
			// Quarantine too: policies are bound at CONNECT, so the
			// device reconnects under the quarantine policy.
			b.Disconnect(tenant, device, "device "+state)
		}
	})
	return nil
}

package server

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/deviceauthsql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/internal/telemetry"
	"github.com/wardiot/ward/wire"
)

// deviceKeys gives the token endpoint the key of a device's current
// certificate (newest good, unexpired).
type deviceKeys struct{ s *Server }

func (k deviceKeys) CurrentKey(ctx context.Context, tenant, device string) (crypto.PublicKey, string, error) {
	certs, err := k.s.store.ListCerts(ctx, store.CertFilter{Tenant: tenant, Device: device, Status: "good"})
	if err != nil {
		return nil, "", err
	}
	now := k.s.now()
	for i := len(certs) - 1; i >= 0; i-- {
		c := certs[i]
		if now.After(c.NotAfter) || c.Profile == "ocsp-responder" {
			continue
		}
		cert, err := x509.ParseCertificate(c.CertDER)
		if err != nil {
			continue
		}
		return cert.PublicKey, c.Serial, nil
	}
	return nil, "", fmt.Errorf("%w: %s/%s has no current certificate", deviceauth.ErrUnknownDevice, tenant, device)
}

// deviceStatus answers from memory, like the gateway's gate.
type deviceStatus struct{ s *Server }

func (d deviceStatus) Usable(ctx context.Context, tenant, device, serial string) error {
	if n, ok := new(big.Int).SetString(serial, 16); ok {
		if _, revoked := d.s.PKI.Revocations().Lookup(n); revoked {
			return fmt.Errorf("%w: the certificate is revoked", deviceauth.ErrRefused)
		}
	}
	switch st, _ := d.s.Fleet.State(tenant, device); st {
	case store.DeviceDisabled, store.DeviceDecommissioned, store.DeviceQuarantined:
		return fmt.Errorf("%w: the device is %s", deviceauth.ErrRefused, st)
	}
	return nil
}

type deviceTokenEvents struct{ m *monitor.Monitor }

func (e deviceTokenEvents) SecurityEvent(ctx context.Context, ev deviceauth.Event) {
	typ := monitor.DeviceTokenOther
	if ev.Type == deviceauth.EventRefreshReuse {
		typ = monitor.DeviceTokenReuse
	}
	e.m.Emit(monitor.Event{Type: typ, Tenant: ev.Tenant, Device: ev.Device, Remote: ev.RemoteAddr, Reason: ev.Type, Time: ev.Time})
}

type deviceTokenAuditor struct{ s *Server }

func (a deviceTokenAuditor) Audit(ctx context.Context, e deviceauth.AuditEntry) error {
	return a.s.store.InTx(ctx, func(tx store.Tx) error {
		_, err := audit.Append(ctx, tx, a.s.now(), audit.Entry{Actor: e.Actor, Action: e.Action, Target: e.Target, Tenant: e.Tenant,
			Result: e.Result, Detail: e.Detail})
		return err
	})
}

// deviceIngest routes HTTPS telemetry into the same verification as MQTT.
type deviceIngest struct{ s *Server }

func (i deviceIngest) Deliver(ctx context.Context, id deviceauth.Identity, topic string, raw []byte) error {
	rest := topic[len(wire.TopicRoot+id.Device+"/"):]
	err := i.s.ingestTelemetry(ctx, broker.Identity{Tenant: id.Tenant, Device: id.Device, Serial: id.CertSerial, Kind: broker.KindDevice}, rest, raw)
	if err != nil && telemetry.ReasonOf(err) != "" {
		return fmt.Errorf("%w: %v", deviceauth.ErrRejected, err)
	}
	return err
}

// openDeviceAuth builds the OAuth token endpoint and the HTTPS telemetry
// ingest for devices that do not speak MQTT.
func (s *Server) openDeviceAuth() error {
	db, ok := s.store.(*sqlstore.DB)
	if !ok {
		return fmt.Errorf("device tokens need the SQL store")
	}
	s.deviceTokens = deviceauthsql.New(db.SQL(), db.SQLDialect())
	_, port, _ := net.SplitHostPort(s.apiLn.Addr().String())
	var auds []string
	for _, h := range append([]string{"localhost", "127.0.0.1", hostOf(s.cfg.APIAddr)}, s.cfg.Hostnames...) {
		if h == "" || h == "0.0.0.0" || h == "::" {
			continue
		}
		auds = append(auds, "https://"+net.JoinHostPort(h, port)+wire.TokenPath)
	}
	da, err := deviceauth.New(deviceauth.Config{Audiences: auds, Store: s.deviceTokens, Keys: deviceKeys{s}, Status: deviceStatus{s},
		Events: deviceTokenEvents{s.Monitor}, Auditor: deviceTokenAuditor{s}, Ingest: deviceIngest{s}, Clock: s.now, Logger: s.log})
	if err != nil {
		return err
	}
	s.DeviceAuth = da
	return nil
}

// pruneLoop deletes expired one-time material (device tokens, assertion
// IDs, provisioning nonces and tokens) every 10 minutes.
func (s *Server) pruneLoop(ctx context.Context) {
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.deviceTokens.Prune(ctx, s.now()); err != nil {
				s.log.Warn("prune device tokens", "err", err)
			}
			if _, err := s.provStore.Prune(ctx, s.now()); err != nil {
				s.log.Warn("prune provisioning nonces", "err", err)
			}
		}
	}
}

package server

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/telemetry"
	"github.com/wardiot/ward/wire"
)

// macSecretSize is the length of a device's telemetry MAC secret.
const macSecretSize = 32

// macCache keeps derived epoch keys: the verifier asks on every message.
type macCache struct {
	mu sync.Mutex
	m  map[string]*telemetry.EpochKeys
}

func secretAAD(tenant, device string) []byte {
	return []byte("ward device mac secret\x00" + tenant + "/" + device)
}

// epochKeys derives the current and previous epoch keys of a device.
func (s *Server) epochKeys(ctx context.Context, tenant, device string) (*telemetry.EpochKeys, error) {
	key := tenant + "/" + device
	s.mac.mu.Lock()
	ek, ok := s.mac.m[key]
	s.mac.mu.Unlock()
	if ok {
		return ek, nil
	}
	d, err := s.store.GetDeviceSecret(ctx, tenant, device)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sealer, err := s.Tenants.Sealer(ctx, tenant)
	if err != nil {
		return nil, err
	}
	secret, err := sealer.Open(d.Sealed, secretAAD(tenant, device))
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	ek = &telemetry.EpochKeys{Current: d.Epoch, Since: d.Since}
	if ek.CurrentKey, err = wire.EpochKey(secret, d.Epoch); err != nil {
		return nil, err
	}
	if d.Epoch > 0 {
		prev := secret
		if d.PrevSealed != nil {
			if prev, err = sealer.Open(d.PrevSealed, secretAAD(tenant, device)); err != nil {
				return nil, err
			}
			defer clear(prev)
		}
		if ek.PreviousKey, err = wire.EpochKey(prev, d.Epoch-1); err != nil {
			return nil, err
		}
	}
	s.mac.mu.Lock()
	s.mac.m[key] = ek
	s.mac.mu.Unlock()
	return ek, nil
}

// RotateMACSecret gives a device a new MAC secret and a new epoch; the
// previous epoch (old secret) stays valid for the verifier's grace period.
// The device gets it at once if connected, else when it asks (mac/get).
func (s *Server) RotateMACSecret(ctx context.Context, actor, tenant, device string) (uint64, error) {
	return s.changeMAC(ctx, actor, tenant, device, true)
}

// AdvanceMACEpoch starts the next epoch with the same secret: both sides
// derive the next key; the previous stays valid for the grace period.
func (s *Server) AdvanceMACEpoch(ctx context.Context, actor, tenant, device string) (uint64, error) {
	return s.changeMAC(ctx, actor, tenant, device, false)
}

// ErrNoMACSecret means the device has no secret yet (rotate one first).
var ErrNoMACSecret = errors.New("the device has no MAC secret yet")

func (s *Server) changeMAC(ctx context.Context, actor, tenant, device string, newSecret bool) (uint64, error) {
	if err := wire.ValidateDeviceID(device); err != nil {
		return 0, err
	}
	if _, err := s.store.GetDevice(ctx, tenant, device); err != nil {
		return 0, err
	}
	sealer, err := s.Tenants.Sealer(ctx, tenant)
	if err != nil {
		return 0, err
	}
	var epoch uint64
	var fresh []byte
	err = s.store.InTx(ctx, func(tx store.Tx) error {
		cur, err := tx.GetDeviceSecret(ctx, tenant, device)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		next := &store.DeviceSecret{Tenant: tenant, Device: device, Since: s.now().UTC()}
		switch {
		case cur == nil && !newSecret:
			return ErrNoMACSecret
		case cur == nil:
			next.Epoch = 1
		default:
			next.Epoch = cur.Epoch + 1
			next.Sealed = cur.Sealed
			if newSecret {
				next.PrevSealed = cur.Sealed
			}
		}
		if newSecret {
			fresh = make([]byte, macSecretSize)
			if _, err := rand.Read(fresh); err != nil {
				return err
			}
			if next.Sealed, err = sealer.Seal(fresh, secretAAD(tenant, device)); err != nil {
				return err
			}
		}
		if err := tx.PutDeviceSecret(ctx, next); err != nil {
			return err
		}
		epoch = next.Epoch
		action := "device.mac_epoch"
		if newSecret {
			action = "device.mac_secret"
		}
		_, err = audit.Append(ctx, tx, s.now(), audit.Entry{Actor: actor, Action: action, Target: "device:" + device, Tenant: tenant,
			Detail: fmt.Sprintf("epoch=%d", epoch)})
		return err
	})
	if err != nil {
		return 0, err
	}
	s.mac.mu.Lock()
	delete(s.mac.m, tenant+"/"+device)
	s.mac.mu.Unlock()
	msg := wire.Control{Type: wire.ControlMACEpoch, Epoch: epoch}
	if newSecret {
		msg = wire.Control{Type: wire.ControlMACSecret, Epoch: epoch, Secret: fresh}
	}
	b, _ := json.Marshal(msg)
	clear(fresh)
	_ = s.Gateway.Publish(tenant, device, wire.TopicControl, b, 1)
	return epoch, nil
}

// ingestMACGet answers a device asking for its MAC secret: only over its
// own mutually authenticated session.
func (s *Server) ingestMACGet(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	d, err := s.store.GetDeviceSecret(ctx, id.Tenant, id.Device)
	if errors.Is(err, store.ErrNotFound) {
		return nil // nothing to send; an operator has not provisioned one
	}
	if err != nil {
		return err
	}
	sealer, err := s.Tenants.Sealer(ctx, id.Tenant)
	if err != nil {
		return err
	}
	secret, err := sealer.Open(d.Sealed, secretAAD(id.Tenant, id.Device))
	if err != nil {
		return err
	}
	b, _ := json.Marshal(wire.Control{Type: wire.ControlMACSecret, Epoch: d.Epoch, Secret: secret})
	clear(secret)
	return s.Gateway.Publish(id.Tenant, id.Device, wire.TopicControl, b, 1)
}

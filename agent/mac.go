package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/wire"
)

// macFile holds the device's telemetry MAC secret and epoch (0600). The
// secret arrives only over the device's mutually authenticated MQTT
// session.
const macFile = "mac.json"

type macState struct {
	mu     sync.Mutex
	loaded bool
	Epoch  uint64 `json:"epoch"`
	Secret []byte `json:"secret"`
}

// ErrNoMACSecret means the server has not provisioned a MAC secret yet.
var ErrNoMACSecret = errors.New("agent: no telemetry MAC secret yet")

func (a *Agent) macState() (*macState, error) {
	m := &a.macSt
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.loaded {
		b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, macFile))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if err == nil {
			if len(b) > 4096 || json.Unmarshal(b, m) != nil {
				return nil, fmt.Errorf("agent: %s is corrupt", macFile)
			}
		}
		m.loaded = true
	}
	return m, nil
}

func (a *Agent) applyControl(c *wire.Control) error {
	m, err := a.macState()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch c.Type {
	case wire.ControlMACSecret:
		if len(c.Secret) < 16 {
			return errors.New("agent: MAC secret too short")
		}
		m.Secret, m.Epoch = append([]byte(nil), c.Secret...), c.Epoch
	case wire.ControlMACEpoch:
		if c.Epoch < m.Epoch {
			return nil // epochs only move forward
		}
		m.Epoch = c.Epoch
	default:
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(a.cfg.StateDir, macFile), b, 0o600)
}

// SyncMAC follows the server's MAC secret and epoch announcements on the
// control topic, and asks for the current secret (a device that was
// offline during a rotation catches up).
func (c *Conn) SyncMAC() error {
	err := c.Subscribe(wire.TopicControl, func(_ string, payload []byte) {
		ctl, err := wire.ParseControl(payload)
		if err != nil {
			return
		}
		if err := c.a.applyControl(ctl); err != nil {
			c.a.log.Warn("control message not applied", "type", ctl.Type, "err", err)
		}
	})
	if err != nil {
		return err
	}
	return c.Publish(wire.TopicMACGet, nil, 1)
}

// MACEpoch reports the epoch the device signs with (0: no secret yet).
func (a *Agent) MACEpoch() uint64 {
	m, err := a.macState()
	if err != nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Secret == nil {
		return 0
	}
	return m.Epoch
}

// MacTelemetry wraps payload in a COSE_Mac0 envelope keyed with the
// current epoch's key (for devices too small for signatures).
func (a *Agent) MacTelemetry(schemaID string, schemaVersion uint32, payload []byte) ([]byte, error) {
	m, err := a.macState()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	secret, epoch := append([]byte(nil), m.Secret...), m.Epoch
	m.mu.Unlock()
	if len(secret) == 0 {
		return nil, ErrNoMACSecret
	}
	defer clear(secret)
	key, err := wire.EpochKey(secret, epoch)
	if err != nil {
		return nil, err
	}
	s, err := a.sequencer()
	if err != nil {
		return nil, err
	}
	seq, err := s.take()
	if err != nil {
		return nil, err
	}
	return wire.MacTelemetry(key, wire.Header{Device: a.Identity().Device, Seq: seq, Time: a.cfg.Clock.Now(), SchemaID: schemaID,
		SchemaVersion: schemaVersion, Epoch: epoch}, payload)
}

package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/wire"
)

// Conn is the device's MQTT session with the Ward gateway: mutual TLS with
// the device certificate, client ID = device ID, topics under
// ward/v1/<device>/.
type Conn struct {
	a      *Agent
	c      mqtt.Client
	device string
}

// ErrRefused wraps a publish or subscribe the gateway refused.
var ErrRefused = errors.New("refused by the gateway")

// mqttTimeout bounds each MQTT operation.
const mqttTimeout = 15 * time.Second

// ConnectMQTT opens the device's session with the gateway at addr
// (host:port). The server is trusted only through the CA bundle saved at
// enrollment; the client certificate is always the current one, so a
// session opened after a renewal uses the new credential.
func (a *Agent) ConnectMQTT(ctx context.Context, addr string) (*Conn, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(a.cfg.CABundle)) {
		return nil, errors.New("agent: no server CA bundle")
	}
	id := a.Identity()
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, GetClientCertificate: a.GetClientCertificate}
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id.Device).SetTLSConfig(tc).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(mqttTimeout).SetOrderMatters(false).
		SetProtocolVersion(4)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(mqttTimeout) {
		return nil, fmt.Errorf("agent: connect to %s: timed out", addr)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("agent: connect to %s: %w", addr, err)
	}
	return &Conn{a: a, c: c, device: id.Device}, nil
}

// Publish sends payload on ward/v1/<device>/<suffix>.
func (c *Conn) Publish(suffix string, payload []byte, qos byte) error {
	return c.PublishTopic(wire.DeviceTopic(c.device, suffix), payload, qos)
}

// PublishTopic sends payload on a full topic name. The gateway allows a
// device only its own subtree; this exists for tools and tests that show
// it.
func (c *Conn) PublishTopic(topic string, payload []byte, qos byte) error {
	suffix := topic
	tok := c.c.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(mqttTimeout) {
		return errors.New("agent: publish timed out")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("agent: publish: %w", err)
	}
	if !c.c.IsConnected() {
		// MQTT 3.1.1 has no negative PUBACK: the gateway disconnects a
		// client whose QoS 1 publish it refuses.
		return fmt.Errorf("agent: publish on %s: %w (the gateway closed the session)", suffix, ErrRefused)
	}
	return nil
}

// Subscribe delivers messages on ward/v1/<device>/<suffix> to fn.
func (c *Conn) Subscribe(suffix string, fn func(topic string, payload []byte)) error {
	tok := c.c.Subscribe(wire.DeviceTopic(c.device, suffix), 1, func(_ mqtt.Client, m mqtt.Message) { fn(m.Topic(), m.Payload()) })
	if !tok.WaitTimeout(mqttTimeout) {
		return errors.New("agent: subscribe timed out")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("agent: subscribe: %w", err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for _, code := range st.Result() {
			if code >= 0x80 {
				return fmt.Errorf("agent: subscribe to %s: %w", suffix, ErrRefused)
			}
		}
	}
	return nil
}

// Connected reports whether the session is up.
func (c *Conn) Connected() bool { return c.c.IsConnected() }

// Close ends the session.
func (c *Conn) Close() { c.c.Disconnect(250) }

// seqFile holds the telemetry sequence high-water mark.
const seqFile = "telemetry.seq"

// seqReserve is how many sequence numbers are reserved per write: a crash
// skips at most this many numbers, never reuses one (the server refuses a
// reused sequence number as a replay).
const seqReserve = 1000

type sequencer struct {
	mu       sync.Mutex
	next     uint64
	reserved uint64
	path     string
}

func (a *Agent) sequencer() (*sequencer, error) {
	a.seqOnce.Do(func() {
		s := &sequencer{path: filepath.Join(a.cfg.StateDir, seqFile)}
		if b, err := os.ReadFile(s.path); err == nil && len(b) == 8 {
			s.next = binary.BigEndian.Uint64(b)
			s.reserved = s.next
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			a.seqErr = err
			return
		}
		a.seq = s
	})
	return a.seq, a.seqErr
}

func (s *sequencer) take() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next >= s.reserved {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], s.reserved+seqReserve)
		if err := atomicfile.Write(s.path, b[:], 0o600); err != nil {
			return 0, err
		}
		s.reserved += seqReserve
	}
	s.next++
	return s.next, nil
}

// SignTelemetry wraps payload (JSON matching a registered schema) in a
// COSE_Sign1 envelope signed with the device key, with the next sequence
// number and the current time.
func (a *Agent) SignTelemetry(schemaID string, schemaVersion uint32, payload []byte) ([]byte, error) {
	s, err := a.sequencer()
	if err != nil {
		return nil, err
	}
	seq, err := s.take()
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	key := a.key
	a.mu.Unlock()
	id := a.Identity()
	return wire.SignTelemetry(key, wire.Header{Device: id.Device, Seq: seq, Time: a.cfg.Clock.Now(), SchemaID: schemaID,
		SchemaVersion: schemaVersion, KeyID: wire.TelemetryKeyID(id.Certificate.RawSubjectPublicKeyInfo)}, payload)
}

// PublishTelemetry signs payload and publishes it on telemetry/<stream>
// with QoS 1.
func (c *Conn) PublishTelemetry(stream, schemaID string, schemaVersion uint32, payload []byte) error {
	env, err := c.a.SignTelemetry(schemaID, schemaVersion, payload)
	if err != nil {
		return err
	}
	return c.Publish(wire.TopicTelemetry+"/"+stream, env, 1)
}

// Signer returns the device's current key, for protocols that authenticate
// the device with a signature (the OAuth private_key_jwt client assertion
// of agent/httpauth, say). After a renewal it returns the new key.
func (a *Agent) Signer() crypto.Signer {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.key
}

package broker

import (
	"bytes"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Named security regressions. Each test states the attack it stops.

// A device must not take over another device's session by claiming its
// client ID, in its own tenant or across tenants.
func TestClientIDTakeoverWithOtherCert(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	victim, err := h.dial(t, pki.device(t, "acme", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	victim.mustConnect("d1", v5)

	for _, version := range []byte{v311, v5} {
		attacker, err := h.dial(t, pki.device(t, "acme", "d2"))
		if err != nil {
			t.Fatal(err)
		}
		code, err := attacker.connect("d1", version)
		want := packets.ErrClientIdentifierNotValid.Code
		if version == v311 {
			want = packets.Err3ClientIdentifierNotValid.Code
		}
		if err != nil || code != want {
			t.Fatalf("v%d takeover with another device's cert: code 0x%02x err %v, want 0x%02x", version, code, err, want)
		}
		if !attacker.closedWithin(time.Second) {
			t.Fatal("refused connection left open")
		}
	}
	h.events.wait(t, EventClientIDMismatch, "")

	// The same device ID in another tenant is a different device: it
	// connects, and it does not disturb acme's d1.
	other, err := h.dial(t, pki.device(t, "beta", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	other.mustConnect("d1", v5)
	if code, err := victim.publish("ward/v1/d1/telemetry/t", []byte("still here"), 1); err != nil || code != 0 {
		t.Fatalf("victim session disturbed: code 0x%02x err %v", code, err)
	}
	if got := h.b.Sessions(); got.Devices != 2 || got.ByTenant["acme"] != 1 || got.ByTenant["beta"] != 1 {
		t.Fatalf("Sessions() = %+v", got)
	}
}

// Wildcards cannot reach beyond a device's own subtree, and tenants cannot
// see each other even with identical device IDs.
func TestCrossTenantSubscribeWildcards(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	acme, err := h.dial(t, pki.device(t, "acme", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	acme.mustConnect("d1", v5)
	beta, err := h.dial(t, pki.device(t, "beta", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	beta.mustConnect("d1", v311)

	wild := []string{"#", "+", "+/#", "ward/#", "ward/v1/#", "ward/v1/+/#", "ward/v1/+/twin/delta", "+/v1/d1/#", "+/+/+/+/+", "d/beta/#", "s/acme/#"}
	codes, err := acme.subscribe(wild...)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range codes {
		if c != packets.ErrNotAuthorized.Code {
			t.Errorf("v5 subscribe %q: code 0x%02x, want 0x87", wild[i], c)
		}
	}
	codes, err = beta.subscribe(wild...)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range codes {
		if c != 0x80 {
			t.Errorf("v3.1.1 subscribe %q: code 0x%02x, want 0x80", wild[i], c)
		}
	}

	for _, m := range []*mqttConn{acme, beta} {
		if codes, err := m.subscribe("ward/v1/d1/#"); err != nil || codes[0] != 1 {
			t.Fatalf("own subtree: %v %v", codes, err)
		}
	}
	if err := h.b.Publish("beta", "d1", "twin/delta", []byte("for-beta"), 1); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Publish("acme", "d1", "twin/delta", []byte("for-acme"), 1); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[*mqttConn]string{acme: "for-acme", beta: "for-beta"} {
		pk, err := m.read()
		if err != nil {
			t.Fatal(err)
		}
		if string(pk.Payload) != want || pk.TopicName != "ward/v1/d1/twin/delta" {
			t.Fatalf("got %q on %q, want %q", pk.Payload, pk.TopicName, want)
		}
	}
	h.events.wait(t, EventPolicyDenied, "subscribe to #")
}

// $SYS leaks broker internals and $share would let devices consume each
// other's messages; both are refused.
func TestSysTopicsRefused(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	m, err := h.dial(t, pki.device(t, "acme", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	m.mustConnect("d1", v5)
	filters := []string{"$SYS/#", "$SYS/broker/clients/connected", "$share/g/ward/v1/d1/#", "$share/g/#"}
	codes, err := m.subscribe(filters...)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range codes {
		if c < 0x80 {
			t.Errorf("subscribe %q granted (0x%02x)", filters[i], c)
		}
	}
	if code, err := m.publish("$SYS/broker/version", []byte("x"), 1); err != nil || code != packets.ErrNotAuthorized.Code {
		t.Fatalf("publish to $SYS: code 0x%02x err %v", code, err)
	}
	// Nothing arrives even after mochi publishes $SYS values.
	if code, err := m.publish("ward/v1/d1/telemetry/t", []byte("x"), 1); err != nil || code != 0 {
		t.Fatalf("session broken after refusals: 0x%02x %v", code, err)
	}
}

func TestExpiredCertRefused(t *testing.T) {
	pki := newTestPKI(t)
	t.Run("expired", func(t *testing.T) {
		h := startBroker(t, pki, nil)
		c := pki.issuing["acme"].issue(t, "d1", leafOpts{
			uris:      []string{"urn:ward:acme:device:d1"},
			notBefore: time.Now().Add(-48 * time.Hour),
			notAfter:  time.Now().Add(-24 * time.Hour),
		})
		if m, err := h.dial(t, c); err == nil {
			if _, err := m.connect("d1", v5); err == nil {
				t.Fatal("expired certificate connected")
			}
		}
		h.events.wait(t, EventHandshakeFailed, ReasonExpired)
	})
	t.Run("injected-clock", func(t *testing.T) {
		clock := newFakeClock()
		h := startBroker(t, pki, func(c *Config) { c.Clock = clock.Now })
		c := pki.device(t, "acme", "d1")
		m, err := h.dial(t, c)
		if err != nil {
			t.Fatal(err)
		}
		m.mustConnect("d1", v5)
		clock.advance(13 * time.Hour) // past the 12 h leaf lifetime
		if m, err := h.dial(t, c); err == nil {
			if _, err := m.connect("d1", v5); err == nil {
				t.Fatal("certificate expired by the injected clock connected")
			}
		}
		h.events.wait(t, EventHandshakeFailed, ReasonExpired)
	})
	t.Run("not-yet-valid", func(t *testing.T) {
		h := startBroker(t, pki, nil)
		c := pki.issuing["acme"].issue(t, "d1", leafOpts{
			uris:      []string{"urn:ward:acme:device:d1"},
			notBefore: time.Now().Add(time.Hour),
			notAfter:  time.Now().Add(2 * time.Hour),
		})
		if m, err := h.dial(t, c); err == nil {
			if _, err := m.connect("d1", v5); err == nil {
				t.Fatal("not yet valid certificate connected")
			}
		}
		h.events.wait(t, EventHandshakeFailed, ReasonNotYetValid)
	})
}

// Revoking a certificate must cut its live session within a second.
func TestRevokedMidSessionCut(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	for _, how := range []string{"serial", "device"} {
		t.Run(how, func(t *testing.T) {
			c := pki.device(t, "acme", "d-"+how)
			m, err := h.dial(t, c)
			if err != nil {
				t.Fatal(err)
			}
			m.mustConnect("d-"+how, v5)
			if code, err := m.publish("ward/v1/d-"+how+"/telemetry/t", []byte("before"), 1); err != nil || code != 0 {
				t.Fatalf("publish before revocation: 0x%02x %v", code, err)
			}
			h.gate.revoke(c)
			start := time.Now()
			switch how {
			case "serial":
				if n := h.b.DisconnectSerial("acme", c.leaf.SerialNumber.Text(16), "certificate revoked"); n != 1 {
					t.Fatalf("DisconnectSerial cut %d sessions, want 1", n)
				}
			case "device":
				if !h.b.Disconnect("acme", "d-"+how, "device disabled") {
					t.Fatal("Disconnect found no session")
				}
			}
			if !m.closedWithin(time.Second) {
				t.Fatal("session still open 1 s after revocation")
			}
			t.Logf("session cut %v after revocation", time.Since(start))
			if m2, err := h.dial(t, c); err == nil {
				if _, err := m2.connect("d-"+how, v5); err == nil {
					t.Fatal("revoked certificate reconnected")
				}
			}
			h.events.wait(t, EventDisconnected, "")
		})
	}
}

// A certificate without the clientAuth EKU (a server certificate, say, or
// one with no EKU, which x509 would accept for any usage) is no identity.
func TestCertWithoutClientAuthRefused(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	for name, eku := range map[string][]x509.ExtKeyUsage{
		"server-auth-only": {x509.ExtKeyUsageServerAuth},
		"no-eku":           {},
	} {
		t.Run(name, func(t *testing.T) {
			c := pki.issuing["acme"].issue(t, "d1", leafOpts{uris: []string{"urn:ward:acme:device:d1"}, eku: eku})
			if m, err := h.dial(t, c); err == nil {
				if _, err := m.connect("d1", v5); err == nil {
					t.Fatal("certificate without clientAuth connected")
				}
			}
			h.events.wait(t, EventHandshakeFailed, ReasonWrongKeyUsage)
		})
	}
}

func TestOversizedPacketRefused(t *testing.T) {
	pki := newTestPKI(t)
	const max = 4096
	h := startBroker(t, pki, func(c *Config) { c.MaxPacketSize = max })
	m, err := h.dial(t, pki.device(t, "acme", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	m.mustConnect("d1", v5)
	if got := m.connack.Properties.MaximumPacketSize; got != max {
		t.Fatalf("CONNACK advertises maximum packet size %d, want %d", got, max)
	}
	_, _ = m.publish("ward/v1/d1/telemetry/big", bytes.Repeat([]byte("A"), 2*max), 0)
	if !m.closedWithin(2 * time.Second) {
		t.Fatal("connection still open after an oversized packet")
	}
	h.events.wait(t, EventPacketTooLarge, "")
	if n := len(h.ingest.all()); n != 0 {
		t.Fatalf("ingest got %d messages", n)
	}
	if err := h.b.Publish("acme", "d1", "twin/delta", make([]byte, 2*max), 0); err == nil {
		t.Fatal("Publish accepted a payload above the maximum packet size")
	}
}

// A stolen or buggy device that reconnects in a loop is throttled per
// certificate identity.
func TestConnectFloodFromOneCert(t *testing.T) {
	pki := newTestPKI(t)
	clock := newFakeClock()
	h := startBroker(t, pki, func(c *Config) {
		c.Clock = clock.Now
		c.DeviceLimits = Limits{MessagesPerSecond: 100, BytesPerSecond: 1 << 20, ConnectsPerMinute: 3}
	})
	c := pki.device(t, "acme", "d1")
	attempt := func(version byte) byte {
		t.Helper()
		m, err := h.dial(t, c)
		if err != nil {
			t.Fatal(err)
		}
		code, err := m.connect("d1", version)
		if err != nil {
			t.Fatal(err)
		}
		m.c.Close()
		return code
	}
	for i := 0; i < 3; i++ {
		if code := attempt(v5); code != 0 {
			t.Fatalf("attempt %d refused with 0x%02x", i, code)
		}
	}
	if code := attempt(v5); code != packets.ErrQuotaExceeded.Code {
		t.Fatalf("v5 flood: code 0x%02x, want 0x97", code)
	}
	if code := attempt(v311); code != packets.Err3ServerUnavailable.Code {
		t.Fatalf("v3.1.1 flood: code 0x%02x, want 0x03", code)
	}
	h.events.wait(t, EventRateLimited, "device connects per minute")
	// Another device of the tenant is unaffected.
	if m, err := h.dial(t, pki.device(t, "acme", "d2")); err != nil {
		t.Fatal(err)
	} else if code, err := m.connect("d2", v5); err != nil || code != 0 {
		t.Fatalf("other device refused: 0x%02x %v", code, err)
	}
	clock.advance(time.Minute)
	if code := attempt(v5); code != 0 {
		t.Fatalf("after a minute: refused with 0x%02x", code)
	}
}

// A certificate (and key) copied to a second machine is noticed when both
// copies are online.
func TestClonedCertDetected(t *testing.T) {
	pki := newTestPKI(t)
	t.Run("refuse-newcomer", func(t *testing.T) {
		h := startBroker(t, pki, nil)
		c := pki.device(t, "acme", "d1")
		orig, err := h.dialFrom(t, c, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		orig.mustConnect("d1", v5)
		clone, err := h.dialFrom(t, c, "127.0.0.2")
		if err != nil {
			t.Fatal(err)
		}
		if code, err := clone.connect("d1", v5); err != nil || code != packets.ErrNotAuthorized.Code {
			t.Fatalf("clone: code 0x%02x err %v, want 0x87", code, err)
		}
		ev := h.events.wait(t, EventCertShared, "")
		if ev.Tenant != "acme" || ev.Device != "d1" || !strings.HasPrefix(ev.Remote, "127.0.0.2:") {
			t.Fatalf("event %+v", ev)
		}
		if code, err := orig.publish("ward/v1/d1/telemetry/t", []byte("x"), 1); err != nil || code != 0 {
			t.Fatalf("original session disturbed: 0x%02x %v", code, err)
		}
		// The same address reconnecting is an ordinary session takeover.
		again, err := h.dialFrom(t, c, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		again.mustConnect("d1", v5)
	})
	t.Run("cut-both", func(t *testing.T) {
		h := startBroker(t, pki, func(c *Config) {
			c.SharedCert = func(tenant string) SharedCertAction { return CutBoth }
		})
		c := pki.device(t, "acme", "d1")
		orig, err := h.dialFrom(t, c, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		orig.mustConnect("d1", v5)
		clone, err := h.dialFrom(t, c, "127.0.0.3")
		if err != nil {
			t.Fatal(err)
		}
		if code, err := clone.connect("d1", v5); err != nil || code != packets.ErrNotAuthorized.Code {
			t.Fatalf("clone: code 0x%02x err %v", code, err)
		}
		if !orig.closedWithin(time.Second) {
			t.Fatal("original session not cut")
		}
		h.events.wait(t, EventCertShared, "")
	})
}

// A quarantined device can only attest and receive OTA, nothing else.
func TestQuarantineConfinesTopics(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	h.gate.quarantine("acme", "d1")
	m, err := h.dial(t, pki.device(t, "acme", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	m.mustConnect("d1", v5)
	if code, _ := m.publish("ward/v1/d1/telemetry/t", []byte("x"), 1); code != packets.ErrNotAuthorized.Code {
		t.Fatalf("quarantined telemetry: 0x%02x, want 0x87", code)
	}
	if code, _ := m.publish("ward/v1/d1/twin/reported", []byte("x"), 1); code != packets.ErrNotAuthorized.Code {
		t.Fatalf("quarantined twin: 0x%02x, want 0x87", code)
	}
	if code, err := m.publish("ward/v1/d1/attest/reply", []byte("evidence"), 1); err != nil || code != 0 {
		t.Fatalf("quarantined attest reply: 0x%02x %v", code, err)
	}
	codes, err := m.subscribe("ward/v1/d1/#", "ward/v1/d1/twin/delta", "ward/v1/d1/attest/request", "ward/v1/d1/ota/#")
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x87, 0x87, 1, 1}; !bytes.Equal(codes, want) {
		t.Fatalf("SUBACK %x, want %x", codes, want)
	}
	_ = h.b.Publish("acme", "d1", "twin/delta", []byte("no"), 1)
	_ = h.b.Publish("acme", "d1", "attest/request", []byte("nonce"), 1)
	pk, err := m.read()
	if err != nil {
		t.Fatal(err)
	}
	if pk.TopicName != "ward/v1/d1/attest/request" || string(pk.Payload) != "nonce" {
		t.Fatalf("got %q on %q", pk.Payload, pk.TopicName)
	}
	got := h.ingest.all()
	if len(got) != 1 || got[0].topic != "ward/v1/d1/attest/reply" {
		t.Fatalf("ingest got %+v", got)
	}
}

// The tenant in the URI SAN must be the tenant whose CA issued the
// certificate: a compromised or careless tenant CA cannot mint identities
// in another tenant.
func TestTenantMismatchRefused(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	c := pki.issuing["beta"].issue(t, "d1", leafOpts{uris: []string{"urn:ward:acme:device:d1"}})
	if m, err := h.dial(t, c); err == nil {
		if _, err := m.connect("d1", v5); err == nil {
			t.Fatal("beta's CA minted an acme identity")
		}
	}
	h.events.wait(t, EventHandshakeFailed, ReasonTenantMismatch)
}

func TestNoClientCertRefused(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	if m, err := h.dial(t, nil); err == nil {
		if _, err := m.connect("d1", v5); err == nil {
			t.Fatal("connected without a client certificate")
		}
	}
	h.events.wait(t, EventHandshakeFailed, ReasonNoClientCert)
}

// Backend services read verified telemetry and nothing else; devices never
// see it.
func TestServiceReceivesVerifiedTelemetry(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	svcCert := pki.issuing["acme"].issue(t, "analytics", leafOpts{uris: []string{ServiceURI("acme", "analytics")}})
	svc, err := h.dial(t, svcCert)
	if err != nil {
		t.Fatal(err)
	}
	svc.mustConnect("analytics", v5)
	if codes, err := svc.subscribe("ward/v1/+/telemetry/#", "ward/v1/+/#"); err != nil || !bytes.Equal(codes, []byte{1, 0x87}) {
		t.Fatalf("service SUBACK %x %v", codes, err)
	}
	if code, _ := svc.publish("ward/v1/d1/twin/desired", []byte("x"), 1); code != packets.ErrNotAuthorized.Code {
		t.Fatalf("service publish: 0x%02x, want 0x87", code)
	}
	dev, err := h.dial(t, pki.device(t, "acme", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	dev.mustConnect("d1", v5)
	if codes, err := dev.subscribe("ward/v1/d1/#"); err != nil || codes[0] != 1 {
		t.Fatal(codes, err)
	}
	if err := h.b.PublishToServices("acme", "d1", "telemetry/temp", []byte("verified"), 1); err != nil {
		t.Fatal(err)
	}
	pk, err := svc.read()
	if err != nil || pk.TopicName != "ward/v1/d1/telemetry/temp" || string(pk.Payload) != "verified" {
		t.Fatalf("service got %+v %v", pk, err)
	}
	if err := h.b.Publish("acme", "d1", "twin/delta", []byte("delta"), 1); err != nil {
		t.Fatal(err)
	}
	pk, err = dev.read()
	if err != nil || string(pk.Payload) != "delta" {
		t.Fatalf("device got %q %v, want only its delta", pk.Payload, err)
	}
	if got := h.b.Sessions(); got.Services != 1 || got.Devices != 1 {
		t.Fatalf("Sessions() = %+v", got)
	}
}

func TestMessageRateLimited(t *testing.T) {
	pki := newTestPKI(t)
	clock := newFakeClock()
	h := startBroker(t, pki, func(c *Config) {
		c.Clock = clock.Now
		c.DeviceLimits = Limits{MessagesPerSecond: 2, BytesPerSecond: 1 << 20, ConnectsPerMinute: 10}
	})
	m, err := h.dial(t, pki.device(t, "acme", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	m.mustConnect("d1", v5)
	for i, want := range []byte{0, 0, packets.ErrQuotaExceeded.Code} {
		if code, err := m.publish("ward/v1/d1/telemetry/t", []byte("x"), 1); err != nil || code != want {
			t.Fatalf("publish %d: 0x%02x %v, want 0x%02x", i, code, err, want)
		}
	}
	h.events.wait(t, EventRateLimited, "device messages per second")
	clock.advance(time.Second)
	if code, err := m.publish("ward/v1/d1/telemetry/t", []byte("x"), 1); err != nil || code != 0 {
		t.Fatalf("after refill: 0x%02x %v", code, err)
	}
	if n := len(h.ingest.all()); n != 3 {
		t.Fatalf("ingest got %d messages, want 3", n)
	}
}

// Cached chain verification must not outlive the trust it was made with: a
// deleted tenant's devices are refused at once, even on reconnect.
func TestChainCacheFollowsTrust(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	c := pki.device(t, "acme", "d1")
	for i := 0; i < 2; i++ { // the second connect is served from the cache
		m, err := h.dial(t, c)
		if err != nil {
			t.Fatal(err)
		}
		m.mustConnect("d1", v5)
		m.c.Close()
		waitFor(t, "session gone", 2*time.Second, func() bool { return h.b.Sessions().Devices == 0 })
	}
	h.trust.removeTenant("acme")
	if m, err := h.dial(t, c); err == nil {
		if _, err := m.connect("d1", v5); err == nil {
			t.Fatal("device of a deleted tenant connected from the chain cache")
		}
	}
	h.events.wait(t, EventHandshakeFailed, ReasonUnknownCA)
}

// One tenant's devices together cannot exceed the tenant's rate, however
// many devices it spreads the load over.
func TestTenantRateLimited(t *testing.T) {
	pki := newTestPKI(t)
	clock := newFakeClock()
	h := startBroker(t, pki, func(c *Config) {
		c.Clock = clock.Now
		c.TenantLimits = Limits{MessagesPerSecond: 2}
	})
	var conns []*mqttConn
	for _, d := range []string{"d1", "d2"} {
		m, err := h.dial(t, pki.device(t, "acme", d))
		if err != nil {
			t.Fatal(err)
		}
		m.mustConnect(d, v5)
		conns = append(conns, m)
	}
	for i, want := range []byte{0, 0, packets.ErrQuotaExceeded.Code} {
		m, dev := conns[i%2], []string{"d1", "d2"}[i%2]
		if code, err := m.publish("ward/v1/"+dev+"/telemetry/t", []byte("x"), 1); err != nil || code != want {
			t.Fatalf("publish %d: 0x%02x %v, want 0x%02x", i, code, err, want)
		}
	}
	h.events.wait(t, EventRateLimited, "tenant messages per second")
	// Another tenant has its own budget.
	m, err := h.dial(t, pki.device(t, "beta", "d1"))
	if err != nil {
		t.Fatal(err)
	}
	m.mustConnect("d1", v5)
	if code, err := m.publish("ward/v1/d1/telemetry/t", []byte("x"), 1); err != nil || code != 0 {
		t.Fatalf("other tenant throttled: 0x%02x %v", code, err)
	}
}

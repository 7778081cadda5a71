package broker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/wardiot/ward/wire"
)

// testCA is a CA of the test PKI.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t testing.TB, name string, parent *testCA) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
		tmpl.MaxPathLenZero = true
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func randSerial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// leafOpts varies issued certificates for negative tests.
type leafOpts struct {
	uris      []string
	dns       []string
	eku       []x509.ExtKeyUsage
	notBefore time.Time
	notAfter  time.Time
}

// testCert is an issued leaf with its files on disk for mosquitto.
type testCert struct {
	tls      tls.Certificate
	leaf     *x509.Certificate
	certFile string
	keyFile  string
}

func (ca *testCA) issue(t testing.TB, name string, o leafOpts) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(12 * time.Hour)
	}
	if o.eku == nil {
		o.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  o.eku,
		DNSNames:     o.dns,
	}
	for _, u := range o.uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	if o.dns != nil {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &testCert{
		tls:      tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf},
		leaf:     leaf,
		certFile: filepath.Join(dir, "cert.pem"),
		keyFile:  filepath.Join(dir, "key.pem"),
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	writeFile(t, c.certFile, chain)
	writeFile(t, c.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return c
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// testPKI holds two tenants (each a root and an issuing CA), an unknown CA
// and the gateway's server certificate.
type testPKI struct {
	issuing      map[string]*testCA
	unknown      *testCA
	serverCA     *testCA
	server       *testCert
	serverCAFile string
}

func newTestPKI(t testing.TB) *testPKI {
	p := &testPKI{issuing: map[string]*testCA{}}
	for _, tenant := range []string{"acme", "beta"} {
		root := newTestCA(t, tenant+" root", nil)
		p.issuing[tenant] = newTestCA(t, tenant+" issuing", root)
	}
	p.unknown = newTestCA(t, "rogue issuing", newTestCA(t, "rogue root", nil))
	p.serverCA = newTestCA(t, "ward server CA", nil)
	p.server = p.serverCA.issue(t, "ward gateway", leafOpts{dns: []string{"localhost"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	p.serverCAFile = filepath.Join(t.TempDir(), "ca.pem")
	writeFile(t, p.serverCAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.serverCA.cert.Raw}))
	return p
}

func (p *testPKI) device(t testing.TB, tenant, device string) *testCert {
	return p.issuing[tenant].issue(t, device, leafOpts{uris: []string{wire.DeviceURI(tenant, device)}})
}

// fakeTrust implements Trust over the test PKI's issuing CAs.
type fakeTrust struct {
	mu      sync.Mutex
	pool    *x509.CertPool
	tenants map[string]string // raw issuer cert -> tenant
}

func (p *testPKI) trust() *fakeTrust {
	ft := &fakeTrust{pool: x509.NewCertPool(), tenants: map[string]string{}}
	for tenant, ca := range p.issuing {
		ft.pool.AddCert(ca.cert)
		ft.tenants[string(ca.cert.Raw)] = tenant
	}
	return ft
}

func (f *fakeTrust) IssuerPool() *x509.CertPool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pool
}

func (f *fakeTrust) TenantForIssuer(c *x509.Certificate) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tenants[string(c.Raw)]
	return t, ok
}

// fakeGate refuses serials marked revoked and quarantines marked devices.
type fakeGate struct {
	mu          sync.Mutex
	revoked     map[string]bool
	quarantined map[string]bool
}

func newFakeGate() *fakeGate {
	return &fakeGate{revoked: map[string]bool{}, quarantined: map[string]bool{}}
}

func (g *fakeGate) Check(id Identity) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.revoked[id.Serial] {
		return false, fmt.Errorf("serial %s: %w", id.Serial, ErrRevoked)
	}
	return g.quarantined[id.Tenant+"/"+id.Device], nil
}

func (g *fakeGate) revoke(c *testCert) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.revoked[c.leaf.SerialNumber.Text(16)] = true
}

func (g *fakeGate) quarantine(tenant, device string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.quarantined[tenant+"/"+device] = true
}

type delivered struct {
	id      Identity
	topic   string
	payload string
	qos     byte
}

// fakeIngest records what devices published.
type fakeIngest struct {
	mu   sync.Mutex
	msgs []delivered
	err  error
}

func (f *fakeIngest) Deliver(_ context.Context, id Identity, topic string, payload []byte, qos byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.msgs = append(f.msgs, delivered{id, topic, string(payload), qos})
	return nil
}

func (f *fakeIngest) all() []delivered {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]delivered(nil), f.msgs...)
}

// fakeEvents records events.
type fakeEvents struct {
	mu  sync.Mutex
	evs []Event
}

func (f *fakeEvents) Emit(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evs = append(f.evs, ev)
}

func (f *fakeEvents) find(typ, reason string) (Event, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range f.evs {
		if ev.Type == typ && (reason == "" || ev.Reason == reason) {
			return ev, true
		}
	}
	return Event{}, false
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fakeEvents) wait(t testing.TB, typ, reason string) Event {
	t.Helper()
	var ev Event
	waitFor(t, "event "+typ+" "+reason, 5*time.Second, func() bool {
		var ok bool
		ev, ok = f.find(typ, reason)
		return ok
	})
	return ev
}

// harness is a running gateway with its fakes.
type harness struct {
	pki    *testPKI
	b      *Broker
	addr   string
	port   string
	trust  *fakeTrust
	gate   *fakeGate
	ingest *fakeIngest
	events *fakeEvents
}

func startBroker(t testing.TB, pki *testPKI, mutate func(*Config)) *harness {
	t.Helper()
	h := &harness{pki: pki, trust: pki.trust(), gate: newFakeGate(), ingest: &fakeIngest{}, events: &fakeEvents{}}
	srvCert := pki.server.tls
	cfg := Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &srvCert, nil },
		DeviceLimits:   Limits{MessagesPerSecond: 1000, BytesPerSecond: 1 << 20, ConnectsPerMinute: 1000},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	b, err := New(cfg, Deps{Trust: h.trust, Gate: h.gate, Ingest: h.ingest, Events: h.events})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.b, h.addr = b, ln.Addr().String()
	_, h.port, _ = net.SplitHostPort(h.addr)
	served := make(chan error, 1)
	go func() { served <- b.Serve(ln) }()
	t.Cleanup(func() {
		b.Close()
		if err := <-served; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})
	return h
}

// mqttConn is a minimal MQTT client for tests that need exact packets and
// reason codes. It encodes and decodes with mochi's packet codec.
type mqttConn struct {
	t       testing.TB
	c       net.Conn
	r       *bufio.Reader
	version byte
	nextID  uint16
	connack packets.Packet
}

func (h *harness) dial(t testing.TB, cert *testCert) (*mqttConn, error) {
	return h.dialFrom(t, cert, "")
}

// dialFrom dials from a chosen loopback source address (127.0.0.0/8 is all
// loopback on Linux), to look like a second device elsewhere.
func (h *harness) dialFrom(t testing.TB, cert *testCert, localIP string) (*mqttConn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	roots := x509.NewCertPool()
	roots.AddCert(h.pki.serverCA.cert)
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{cert.tls}
	}
	c, err := tls.DialWithDialer(d, "tcp", h.addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return &mqttConn{t: t, c: c, r: bufio.NewReader(c)}, nil
}

func (m *mqttConn) write(pk packets.Packet) error {
	pk.ProtocolVersion = m.version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	default:
		return fmt.Errorf("test client cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	_ = m.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = m.c.Write(buf.Bytes())
	return err
}

// read returns the next packet, or an error (io.EOF and friends when the
// gateway closed the connection).
func (m *mqttConn) read() (packets.Packet, error) {
	_ = m.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var pk packets.Packet
	b, err := m.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(m.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(m.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = m.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// connect sends CONNECT and returns the CONNACK reason code, or an error if
// the gateway closed the connection instead.
func (m *mqttConn) connect(clientID string, version byte) (byte, error) {
	m.version = version
	err := m.write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: clientID,
			Clean:            true,
			Keepalive:        30,
		},
	})
	if err != nil {
		return 0, err
	}
	pk, err := m.read()
	if err != nil {
		return 0, err
	}
	if pk.FixedHeader.Type != packets.Connack {
		return 0, fmt.Errorf("got packet type %d, want CONNACK", pk.FixedHeader.Type)
	}
	m.connack = pk
	return pk.ReasonCode, nil
}

func (m *mqttConn) mustConnect(clientID string, version byte) {
	m.t.Helper()
	code, err := m.connect(clientID, version)
	if err != nil || code != 0 {
		m.t.Fatalf("connect %q: code 0x%02x, err %v", clientID, code, err)
	}
}

// subscribe returns the SUBACK reason codes.
func (m *mqttConn) subscribe(filters ...string) ([]byte, error) {
	m.nextID++
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: m.nextID}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	if err := m.write(pk); err != nil {
		return nil, err
	}
	for {
		ack, err := m.read()
		if err != nil {
			return nil, err
		}
		if ack.FixedHeader.Type == packets.Suback {
			return ack.ReasonCodes, nil
		}
	}
}

// publish sends a PUBLISH; for QoS 1 it returns the PUBACK reason code.
func (m *mqttConn) publish(topic string, payload []byte, qos byte) (byte, error) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, Payload: payload}
	if qos > 0 {
		m.nextID++
		pk.PacketID = m.nextID
	}
	if err := m.write(pk); err != nil || qos == 0 {
		return 0, err
	}
	ack, err := m.read()
	if err != nil {
		return 0, err
	}
	if ack.FixedHeader.Type != packets.Puback {
		return 0, fmt.Errorf("got packet type %d, want PUBACK", ack.FixedHeader.Type)
	}
	return ack.ReasonCode, nil
}

// closed reports whether the gateway has closed the connection, reading
// (and discarding) anything sent before.
func (m *mqttConn) closedWithin(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		_ = m.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := m.r.ReadByte()
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		return true
	}
	return false
}

func certHash(c *testCert) [32]byte { return sha256.Sum256(c.leaf.Raw) }

// fakeClock is an injected clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// removeTenant drops a tenant's issuing CA, building a new pool as the real
// Trust does when a tenant is deleted.
func (f *fakeTrust) removeTenant(tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pool := x509.NewCertPool()
	for raw, t := range f.tenants {
		if t == tenant {
			delete(f.tenants, raw)
			continue
		}
		c, _ := x509.ParseCertificate([]byte(raw))
		pool.AddCert(c)
	}
	f.pool = pool
}

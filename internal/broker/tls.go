package broker

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/wardiot/ward/wire"
)

// tls12Suites are the TLS 1.2 suites offered: ECDHE for forward secrecy and
// AEAD only. TLS 1.3 suites are all AEAD and not configurable.
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

func (b *Broker) baseTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   tls12Suites,
		GetCertificate: b.cfg.GetCertificate,
		// The chain is verified in VerifyConnection against the live pool of
		// issuing CAs, with the injected clock, so that failures can be told
		// apart and reported.
		ClientAuth: tls.RequireAnyClientCert,
		// Without tickets every connection presents and proves its
		// certificate again; revocation and expiry are never skipped.
		SessionTicketsDisabled: true,
		NextProtos:             []string{"mqtt"},
		// The identity travels from here to the connection's goroutine keyed
		// by the leaf certificate, which the finished tls.Conn still holds;
		// a shared config costs nothing per connection.
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := b.verify(cs.PeerCertificates)
			if err != nil {
				return err
			}
			b.verified.Store(cs.PeerCertificates[0], id)
			return nil
		},
	}
}

// handshakeError carries a classified reason out of VerifyConnection.
type handshakeError struct {
	reason string
	err    error
	id     *Identity // set once the chain was verified
}

func (e *handshakeError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// verify checks the client chain and returns the identity it proves.
func (b *Broker) verify(certs []*x509.Certificate) (Identity, error) {
	if len(certs) == 0 {
		return Identity{}, &handshakeError{reason: ReasonNoClientCert, err: errors.New("no client certificate")}
	}
	if len(certs) > MaxClientChain {
		return Identity{}, &handshakeError{reason: ReasonBadIdentity, err: fmt.Errorf("more than %d certificates", MaxClientChain)}
	}
	leaf := certs[0]
	now := b.cfg.Clock()
	opts := x509.VerifyOptions{
		Roots:       b.deps.Trust.IssuerPool(),
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(certs) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range certs[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	// x509 treats a leaf without any EKU as valid for every usage; Ward
	// requires clientAuth to be stated.
	hasClientAuth := false
	for _, u := range leaf.ExtKeyUsage {
		hasClientAuth = hasClientAuth || u == x509.ExtKeyUsageClientAuth
	}
	if !hasClientAuth {
		return Identity{}, &handshakeError{reason: ReasonWrongKeyUsage, err: errors.New("certificate lacks the clientAuth extended key usage")}
	}
	if leaf.IsCA {
		return Identity{}, &handshakeError{reason: ReasonWrongKeyUsage, err: errors.New("a CA certificate cannot be a client identity")}
	}
	hash := sha256.Sum256(leaf.Raw)
	var tenant string
	found := false
	if issuer, ok := b.chains.lookup(hash, opts.Roots, now); ok {
		tenant, found = b.deps.Trust.TenantForIssuer(issuer)
	} else {
		chains, err := leaf.Verify(opts)
		if err != nil {
			return Identity{}, classifyVerify(err, leaf, now)
		}
		for _, ch := range chains {
			if len(ch) < 2 {
				continue // a pool member presented as a leaf; never an identity
			}
			if t, ok := b.deps.Trust.TenantForIssuer(ch[1]); ok {
				tenant, found = t, true
				b.chains.store(hash, opts.Roots, ch)
				break
			}
		}
	}
	if !found {
		return Identity{}, &handshakeError{reason: ReasonUnknownCA, err: errors.New("issuing CA belongs to no tenant")}
	}
	id, err := identityFromLeaf(leaf)
	if err != nil {
		return Identity{}, &handshakeError{reason: ReasonBadIdentity, err: err}
	}
	id.CertSHA256 = hash
	if id.Tenant != tenant {
		return Identity{}, &handshakeError{reason: ReasonTenantMismatch, err: fmt.Errorf("certificate names tenant %q but was issued by tenant %q's CA", id.Tenant, tenant)}
	}
	quarantined, err := b.deps.Gate.Check(id)
	if err != nil {
		reason := ReasonUnknownID
		switch {
		case errors.Is(err, ErrRevoked):
			reason = ReasonRevoked
		case errors.Is(err, ErrDisabled):
			reason = ReasonDisabled
		case errors.Is(err, ErrDecommissioned):
			reason = ReasonDecommissioned
		}
		return Identity{}, &handshakeError{reason: reason, err: err, id: &id}
	}
	id.Quarantined = quarantined
	return id, nil
}

func classifyVerify(err error, leaf *x509.Certificate, now time.Time) error {
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return &handshakeError{reason: ReasonUnknownCA, err: err}
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		if now.Before(leaf.NotBefore) {
			return &handshakeError{reason: ReasonNotYetValid, err: err}
		}
		return &handshakeError{reason: ReasonExpired, err: err}
	case errors.As(err, &ci) && ci.Reason == x509.IncompatibleUsage:
		return &handshakeError{reason: ReasonWrongKeyUsage, err: err}
	}
	return &handshakeError{reason: ReasonBadIdentity, err: err}
}

// identityFromLeaf reads the one Ward URI SAN of a verified certificate.
func identityFromLeaf(leaf *x509.Certificate) (Identity, error) {
	var id Identity
	n := 0
	for _, u := range leaf.URIs {
		s := u.String()
		if !strings.HasPrefix(s, "urn:ward:") {
			continue
		}
		n++
		if t, d, err := wire.ParseDeviceURI(s); err == nil {
			id.Tenant, id.Device, id.Kind = t, d, KindDevice
		} else if t, name, err := parseServiceURI(s); err == nil {
			id.Tenant, id.Device, id.Kind = t, name, KindService
		} else {
			return Identity{}, err
		}
	}
	if n != 1 {
		return Identity{}, fmt.Errorf("certificate must carry exactly one urn:ward: URI SAN, found %d", n)
	}
	id.Serial = leaf.SerialNumber.Text(16)
	return id, nil
}

// ServiceURI is the URI SAN of a backend service certificate:
// urn:ward:<tenant>:service:<name>. Service names follow device ID syntax.
func ServiceURI(tenant, name string) string {
	return "urn:ward:" + tenant + ":service:" + name
}

func parseServiceURI(uri string) (tenant, name string, err error) {
	rest, ok := strings.CutPrefix(uri, "urn:ward:")
	if !ok {
		return "", "", fmt.Errorf("%w: not a Ward URI", wire.ErrInvalidID)
	}
	tenant, rest, ok = strings.Cut(rest, ":")
	if !ok {
		return "", "", fmt.Errorf("%w: not a Ward service URI", wire.ErrInvalidID)
	}
	name, ok = strings.CutPrefix(rest, "service:")
	if !ok {
		return "", "", fmt.Errorf("%w: not a Ward device or service URI", wire.ErrInvalidID)
	}
	if err := wire.ValidateTenantID(tenant); err != nil {
		return "", "", err
	}
	if err := wire.ValidateDeviceID(name); err != nil {
		return "", "", err
	}
	return tenant, name, nil
}

// tlsListener is a mochi listener that runs the TLS handshake in Ward's code
// so that failures are classified and reported before mochi sees the
// connection, and so that the verified identity travels with it.
type tlsListener struct {
	b   *Broker
	ln  net.Listener
	id  string
	end atomic.Bool
}

func (l *tlsListener) ID() string              { return l.id }
func (l *tlsListener) Address() string         { return l.ln.Addr().String() }
func (l *tlsListener) Protocol() string        { return "mqtts" }
func (l *tlsListener) Init(*slog.Logger) error { return nil }

func (l *tlsListener) Serve(establish listeners.EstablishFn) {
	var backoff time.Duration
	for !l.end.Load() {
		c, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, rather than spinning or giving up.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		select {
		case l.b.slots <- struct{}{}:
		default:
			c.Close()
			l.b.emit(EventHandshakeFailed, &session{remote: c.RemoteAddr().String()}, ReasonOverloaded)
			continue
		}
		go l.handle(c, establish)
	}
}

func (l *tlsListener) handle(raw net.Conn, establish listeners.EstablishFn) {
	b := l.b
	remote := raw.RemoteAddr().String()
	// Network deadlines are real time, whatever clock verifies certificates.
	_ = raw.SetDeadline(time.Now().Add(b.cfg.HandshakeTimeout))
	tc := tls.Server(raw, b.tlsCfg)
	err := tc.Handshake()
	<-b.slots
	var id Identity
	var verified bool
	if peers := tc.ConnectionState().PeerCertificates; len(peers) > 0 {
		if v, ok := b.verified.LoadAndDelete(peers[0]); ok {
			id, verified = v.(Identity), true
		}
	}
	if err != nil || !verified {
		if err == nil {
			err = errors.New("handshake completed without a verified client certificate")
		}
		reportHandshake(b, remote, err)
		tc.Close()
		return
	}
	// The deadline now covers the wait for CONNECT; mochi replaces it with
	// the keepalive once the session is accepted.
	_ = raw.SetDeadline(time.Now().Add(b.cfg.ConnectTimeout))
	// Serve the session on a fresh goroutine. This one's stack grew deep in
	// the handshake's crypto and would keep that size for the whole life of
	// an idle connection.
	go func() {
		s := newSession(b, id, remote)
		c := &conn{Conn: tc, sess: s}
		_ = establish(l.id, c)
		b.reg.remove(s)
		c.Close()
	}()
}

func reportHandshake(b *Broker, remote string, err error) {
	s := &session{remote: remote}
	var he *handshakeError
	reason := ReasonProtocol
	switch {
	case errors.As(err, &he):
		reason = he.reason
		if he.id != nil {
			s.id = *he.id
		}
	case errors.Is(err, os.ErrDeadlineExceeded):
		reason = ReasonTimeout
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		reason = ReasonNoClientCert
	}
	b.emit(EventHandshakeFailed, s, reason)
}

func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		closeClients(l.id)
	}
	l.ln.Close()
}

// maxCoalesce bounds the bytes of replies held back for one write; the
// buffer is dropped when it grew larger than coalesceKeep so that idle
// connections do not keep it.
const (
	maxCoalesce  = 16 << 10
	coalesceKeep = 1 << 10
)

// conn carries the session bound to a verified TLS connection into mochi's
// hooks, and coalesces replies: while the connection's goroutine handles a
// batch of input, what it writes (PUBACKs, mostly) is held and sent in one
// TLS record and one system call when it next reads. mochi would otherwise
// write each acknowledgement on its own.
type conn struct {
	*tls.Conn
	sess *session

	mu   sync.Mutex
	busy bool // input is being handled; writes wait for the next Read
	buf  []byte
}

func (c *conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	c.busy = false
	err := c.flushLocked()
	c.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.mu.Lock()
		c.busy = true
		c.mu.Unlock()
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy && len(c.buf)+len(p) <= maxCoalesce {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *conn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > coalesceKeep {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// closeFlushTimeout bounds how long Close waits to send held replies to a
// peer that does not read, so cutting a session stays fast.
const closeFlushTimeout = 250 * time.Millisecond

// Close sends what is held (a refusing CONNACK, say) before closing.
func (c *conn) Close() error {
	c.mu.Lock()
	if len(c.buf) > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		_ = c.flushLocked()
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

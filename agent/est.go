package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/wardiot/ward/wire"
)

// Limits on talking to the server. The server is authenticated, but a
// compromised or buggy one must still not be able to exhaust a device.
const (
	// maxErrorBodySize bounds how much of an error response is read; the
	// message a Ward server sends is one line.
	maxErrorBodySize = 4 << 10
	// maxErrorMessageLen bounds the server text quoted in an error, so a
	// hostile server cannot flood the device's logs.
	maxErrorMessageLen = 512
	// requestTimeout bounds one EST exchange, handshake to last byte, so
	// a stalled server cannot hold renewal forever.
	requestTimeout = 2 * time.Minute
	// tlsHandshakeTimeout bounds the TLS handshake; TPM signing is slow
	// (hundreds of milliseconds) but not this slow.
	tlsHandshakeTimeout = 30 * time.Second
	// maxRetryAfterLen bounds the Retry-After header we parse: an HTTP
	// date is 29 bytes.
	maxRetryAfterLen = 64
)

// Retry-After handling (RFC 7030 §4.2.3). The server chooses, within bounds
// that keep a device from either hammering the server or going silent.
const (
	// MinRetryAfter is the shortest wait honoured after a 202.
	MinRetryAfter = time.Second
	// MaxRetryAfter is the longest wait honoured after a 202; a device
	// told to come back next year would effectively be bricked.
	MaxRetryAfter = time.Hour
	// DefaultRetryAfter is used when a 202 carries no usable Retry-After.
	DefaultRetryAfter = time.Minute
)

var (
	// ErrServerNotTrusted means the server's TLS certificate does not
	// chain to Config.CABundle, or does not name the server's host.
	ErrServerNotTrusted = errors.New("server certificate not trusted")
	// ErrPending means the server accepted the request for later
	// approval (HTTP 202); retry after ServerError.RetryAfter.
	ErrPending = errors.New("enrollment pending approval")
	// ErrBadResponse means the server answered 200 with something that
	// is not a usable EST response, or a certificate the agent refuses.
	ErrBadResponse = errors.New("unusable response from server")
)

// ServerError is an EST request that the server answered with a status
// other than 200. Message is the server's own explanation, sanitised.
type ServerError struct {
	Op         string // "cacerts", "simpleenroll", "simplereenroll"
	Status     int
	Message    string
	RetryAfter time.Duration // for 202 and 503: how long to wait
}

func (e *ServerError) Error() string {
	msg := fmt.Sprintf("%s: server answered %d %s", e.Op, e.Status, http.StatusText(e.Status))
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Status == http.StatusAccepted {
		msg += fmt.Sprintf(" (retry in %v)", e.RetryAfter)
	}
	return msg
}

// Is makes errors.Is(err, ErrPending) hold for a 202.
func (e *ServerError) Is(target error) bool {
	return target == ErrPending && e.Status == http.StatusAccepted
}

// estClient speaks the client side of EST to one server and label.
type estClient struct {
	base  *url.URL
	label string
	roots *x509.CertPool
	clock Clock
	plain *http.Client // for requests without a client certificate
}

func newESTClient(r *resolved) *estClient {
	c := &estClient{base: r.base, label: r.label(), roots: r.roots, clock: r.Clock}
	c.plain = &http.Client{Transport: c.transport(nil)}
	return c
}

// transport returns an HTTP transport that trusts only the configured
// roots and, when cert is set, presents it as the client certificate.
func (c *estClient) transport(cert *tls.Certificate) *http.Transport {
	cfg := &tls.Config{
		RootCAs:    c.roots,
		MinVersion: tls.VersionTLS12,
		Time:       c.clock.Now,
	}
	if cert != nil {
		// Always present the certificate: with Certificates alone, Go
		// would withhold it when the server's acceptable-CA list (which
		// the server may fill with bootstrap CAs) does not name its
		// issuer, and renewal would fail with a confusing 403.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSClientConfig:       cfg,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ResponseHeaderTimeout: requestTimeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       time.Minute,
	}
}

func (c *estClient) close() { c.plain.CloseIdleConnections() }

func (c *estClient) url(op string) string {
	u := *c.base
	u.Path = c.base.Path + wire.ESTPath(c.label, op)
	return u.String()
}

// caCerts fetches the label's CA certificates (RFC 7030 §4.1) over the
// server-authenticated connection and checks that they form valid chains.
func (c *estClient) caCerts(ctx context.Context) ([]*x509.Certificate, error) {
	req, err := http.NewRequest(http.MethodGet, c.url(wire.ESTCACerts), nil)
	if err != nil {
		return nil, err
	}
	certs, err := c.do(ctx, c.plain, wire.ESTCACerts, req)
	if err != nil {
		return nil, err
	}
	if err := checkCACerts(certs, c.clock.Now()); err != nil {
		return nil, fmt.Errorf("cacerts: %w: %w", ErrBadResponse, err)
	}
	return certs, nil
}

// enroll posts a CSR to simpleenroll or simplereenroll. cred
// authenticates a first enrollment, cert (the current credential over
// mutual TLS) a re-enrollment.
func (c *estClient) enroll(ctx context.Context, op string, csrDER []byte, cred Credential, a *authContext, cert *tls.Certificate) (*x509.Certificate, error) {
	req, err := http.NewRequest(http.MethodPost, c.url(op), bytes.NewReader(wire.EncodeBase64Body(csrDER)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", wire.ESTContentTypePKCS10)
	req.Header.Set(wire.ESTTransferEncoding, wire.ESTEncodingBase64)
	if cred != nil {
		if err := cred.authorize(req, a); err != nil {
			return nil, err
		}
		if cc, ok := cred.(clientCertCredential); ok {
			// The manufacturer certificate authenticates this request
			// only, on its own connection: it is never used for MQTT or
			// for renewal.
			cert = cc.clientCertificate()
		}
	}
	client := c.plain
	if cert != nil {
		// A dedicated connection: the identity presented in a handshake
		// sticks to the connection, and pooled connections must not mix
		// the old and the new certificate.
		client = &http.Client{Transport: c.transport(cert)}
		defer client.CloseIdleConnections()
	}
	certs, err := c.do(ctx, client, op, req)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// do sends req and decodes a certs-only response.
func (c *estClient) do(ctx context.Context, client *http.Client, op string, req *http.Request) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		return nil, explainTransportError(op, c.base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, serverError(op, resp, c.clock.Now())
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "application/pkcs7-mime" {
		return nil, fmt.Errorf("%s: %w: Content-Type %q is not application/pkcs7-mime", op, ErrBadResponse, truncate(resp.Header.Get("Content-Type"), 64))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxESTBodySize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading the response: %w", op, err)
	}
	if len(body) > wire.MaxESTBodySize {
		return nil, fmt.Errorf("%s: %w: %w: over %d bytes", op, ErrBadResponse, wire.ErrESTTooLarge, wire.MaxESTBodySize)
	}
	der, err := wire.DecodeBase64Body(body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", op, ErrBadResponse, err)
	}
	certs, err := wire.DecodeCertsOnly(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", op, ErrBadResponse, err)
	}
	return certs, nil
}

// serverError reads the bounded text of a non-200 response.
func serverError(op string, resp *http.Response, now time.Time) *ServerError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBodySize))
	e := &ServerError{Op: op, Status: resp.StatusCode}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "text/plain" || mt == "" {
		e.Message = sanitize(string(body))
	}
	if resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusServiceUnavailable {
		d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), now)
		if !ok {
			d = DefaultRetryAfter
		}
		e.RetryAfter = clampRetryAfter(d)
	}
	return e
}

// sanitize makes server text safe to print on one line of a terminal or a
// log: control characters become spaces and the length is bounded.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || unicode.IsControl(r) || !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxErrorMessageLen {
		// Cut on a rune boundary.
		cut := maxErrorMessageLen
		for cut > 0 && !utf8RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// parseRetryAfter parses a Retry-After value (RFC 9110 §10.2.3): either
// delta-seconds or an HTTP date, which is turned into a duration from now.
// It reports false for anything else.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > maxRetryAfterLen {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			var ne *strconv.NumError
			if errors.As(err, &ne) && ne.Err == strconv.ErrRange {
				return MaxRetryAfter, true
			}
			return 0, false
		}
		if n > uint64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}

func clampRetryAfter(d time.Duration) time.Duration {
	return min(max(d, MinRetryAfter), MaxRetryAfter)
}

// explainTransportError turns TLS verification failures into messages an
// operator can act on; the cause stays wrapped.
func explainTransportError(op, host string, err error) error {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return fmt.Errorf("%s: %w: the certificate of server %s is not signed by the given CA bundle: %w", op, ErrServerNotTrusted, host, err)
	case errors.As(err, &he):
		return fmt.Errorf("%s: %w: the certificate of server %s does not name that host: %w", op, ErrServerNotTrusted, host, err)
	case errors.As(err, &ci):
		return fmt.Errorf("%s: %w: the certificate of server %s is invalid (expired or not yet valid? check the device clock): %w", op, ErrServerNotTrusted, host, err)
	}
	return fmt.Errorf("%s: cannot reach %s: %w", op, host, err)
}

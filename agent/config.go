package agent

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/wire"
)

// Config says where the server is, whom to trust, who the device is and
// where its keys and state live.
type Config struct {
	// Server is the base URL of the Ward server, "https://host:port".
	// A path prefix is kept (for a server behind a reverse proxy). For
	// [New] it may be empty: the URL saved at enrollment is used.
	Server string
	// CABundle holds PEM certificates: the only roots trusted for the
	// server's TLS certificate. System roots are never used, so a device
	// cannot be pointed at an impostor by any public CA. For [New] it may
	// be empty: the bundle saved at enrollment is used.
	CABundle []byte
	// Tenant and Device name the device; they become the certificate's
	// URI SAN, wire.DeviceURI(Tenant, Device). For [New] they may be
	// empty; if set they must match the saved identity.
	Tenant, Device string
	// Label is the EST label (the tenant or one of its enrollment groups).
	// Empty means Tenant.
	Label string
	// Keystore holds the device's keys. The agent generates, loads and
	// deletes keys named "device-<generation>" in it and touches no other
	// names.
	Keystore keystore.Keystore
	// Algorithm is the key algorithm for new keys (default ECDSA P-256).
	Algorithm keystore.Algorithm
	// StateDir holds identity.json. It is created 0700 if missing.
	StateDir string
	// Clock is the source of time; nil means the system clock.
	Clock Clock
	// Rand is the source of randomness for CSR signatures and schedule
	// jitter; nil means crypto/rand.
	Rand io.Reader
	// Logger receives what the agent does (never secrets); nil discards.
	Logger *slog.Logger
}

// maxCABundleSize bounds the trust bundle read from configuration: a
// bundle with a few roots is a few KiB, and a larger one is a mistake (a
// whole system store) that would also trust far too much.
const maxCABundleSize = 256 << 10

// resolved is a validated Config with defaults applied.
type resolved struct {
	Config
	base  *url.URL
	roots *x509.CertPool
}

func (c Config) label() string {
	if c.Label != "" {
		return c.Label
	}
	return c.Tenant
}

// resolve validates c, reporting every problem at once.
func (c Config) resolve() (*resolved, error) {
	r := &resolved{Config: c}
	if r.Clock == nil {
		r.Clock = systemClock{}
	}
	if r.Rand == nil {
		r.Rand = rand.Reader
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	base, err := parseServer(c.Server)
	if err != nil {
		errs = append(errs, err)
	}
	r.base = base
	if r.roots, err = parseCABundle(c.CABundle); err != nil {
		errs = append(errs, err)
	}
	if err := wire.ValidateTenantID(c.Tenant); err != nil {
		errs = append(errs, fmt.Errorf("tenant: %w", err))
	}
	if err := wire.ValidateDeviceID(c.Device); err != nil {
		errs = append(errs, fmt.Errorf("device: %w", err))
	}
	if err := wire.ValidateESTLabel(c.label()); err != nil {
		errs = append(errs, fmt.Errorf("label: %w", err))
	}
	if c.Keystore == nil {
		errs = append(errs, errors.New("no keystore configured"))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("no state directory configured"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("agent: invalid configuration: %w", errors.Join(errs...))
	}
	return r, nil
}

// parseServer accepts an https URL with a host and no query or fragment.
func parseServer(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("server: no URL given (want https://host:port)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("server: %q is not a URL", s)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("server: %q must use https", s)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("server: %q must be https://host[:port][/prefix] with no user, query or fragment", s)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// parseCABundle returns a pool of the PEM certificates in b. Anything that
// is not a CERTIFICATE block is refused rather than skipped, so a key or a
// typo in the bundle is noticed.
func parseCABundle(b []byte) (*x509.CertPool, error) {
	certs, err := parsePEMCerts(b, maxCABundleSize)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// parsePEMCerts parses a non-empty sequence of PEM CERTIFICATE blocks.
func parsePEMCerts(b []byte, limit int) ([]*x509.Certificate, error) {
	if len(b) == 0 {
		return nil, errors.New("no certificates (want PEM CERTIFICATE blocks)")
	}
	if len(b) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("holds a %q PEM block; only CERTIFICATE blocks are allowed", truncate(blk.Type, 32))
		}
		if len(certs) == wire.MaxCertsOnlyCerts {
			return nil, fmt.Errorf("more than %d certificates", wire.MaxCertsOnlyCerts)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, errors.New("trailing data after the last PEM block")
	}
	return certs, nil
}

func encodePEMCerts(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// truncate keeps error messages bounded when they quote untrusted input.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

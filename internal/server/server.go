// Package server is Ward's composition root: it opens the store, initialises
// the data directory, builds every part and runs the listeners.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/fleet"
	"github.com/wardiot/ward/internal/monitor"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/pki/pkcs11"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/deviceauthsql"
	"github.com/wardiot/ward/internal/store/postgres"
	"github.com/wardiot/ward/internal/store/provisionsql"
	"github.com/wardiot/ward/internal/store/sqlite"
	"github.com/wardiot/ward/internal/telemetry"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/internal/twin"
	"github.com/wardiot/ward/wire"
)

// Server is a running Ward server.
type Server struct {
	cfg   config.Config
	log   *slog.Logger
	now   func() time.Time
	store store.Store
	kek   tenant.KEK
	ca    *platformCA

	Tenants *tenant.Service
	Tokens  *tenant.Tokens
	API     *api.API
	PKI     *pki.Authority
	EST     *est.Handler
	Fleet   *fleet.Registry
	Gateway *broker.Broker
	// Policies picks each identity's topic policy (nil: built-in default).
	Policies broker.Policies
	policies *policySet
	// Provisioner runs the enrollment groups (zero-touch provisioning).
	Provisioner *provision.Provisioner
	provStore   *provisionsql.Store
	// DeviceAuth serves OAuth tokens and HTTPS telemetry to devices.
	DeviceAuth   *deviceauth.Server
	deviceTokens *deviceauthsql.Store
	serverCert   *tls.Certificate
	attest       *attestState  // attestation.go
	ota          *otaState     // ota.go
	rollouts     *rolloutState // rollout.go
	mqttLn       net.Listener

	Twins         *twin.Service
	Schemas       *telemetry.Registry
	Verifier      *telemetry.Verifier
	telemetryKeys *telemetryKeys
	mac           macCache
	window        *windowSink
	sinks         telemetry.Sink
	nats          *nats.Conn

	// bgCtx lives as long as the server: background workers stop with it.
	bgCtx    context.Context
	bgCancel context.CancelFunc

	closeOnce sync.Once
	closeErr  error
	Monitor   *monitor.Monitor
	monStop   context.CancelFunc
	hsm       *pkcs11.Manager
	baseURL   string
	cancel    context.CancelFunc

	mu       sync.Mutex
	apiLn    net.Listener
	httpLn   net.Listener
	servers  []*http.Server
	serveErr chan error
}

// Open validates cfg, opens the store and initialises the data directory
// on first start. It does not listen yet.
// Option adjusts a Server at Open.
type Option func(*Server)

// WithClock replaces the wall clock (tests move time by hand).
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

func Open(ctx context.Context, cfg config.Config, log *slog.Logger, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	s := &Server{cfg: cfg, log: log, now: time.Now, mac: macCache{m: map[string]*telemetry.EpochKeys{}}}
	for _, o := range opts {
		o(s)
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	var err error
	s.kek, err = tenant.LoadOrCreateFileKEK(filepath.Join(cfg.DataDir, fileKEK))
	if err != nil {
		return nil, err
	}
	if cfg.Database == "" {
		s.store, err = sqlite.Open(ctx, filepath.Join(cfg.DataDir, fileDB))
	} else {
		s.store, err = postgres.Open(ctx, cfg.Database)
	}
	if err != nil {
		return nil, err
	}
	if err := s.open(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) open(ctx context.Context) error {
	var err error
	s.ca, err = loadOrCreatePlatformCA(s.cfg.DataDir, s.kek)
	if err != nil {
		return err
	}
	// Listeners are bound here, before the parts are built, because the
	// plain-HTTP address goes into every certificate (CRL, OCSP URLs).
	if s.apiLn, err = net.Listen("tcp", s.cfg.APIAddr); err != nil {
		return fmt.Errorf("api listener: %w", err)
	}
	if s.httpLn, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
		return fmt.Errorf("http listener: %w", err)
	}
	if s.mqttLn, err = net.Listen("tcp", s.cfg.MQTTAddr); err != nil {
		return fmt.Errorf("mqtt listener: %w", err)
	}
	s.serverCert, err = s.ca.issueServerCert(append([]string{hostOf(s.cfg.APIAddr), hostOf(s.cfg.MQTTAddr)}, s.cfg.Hostnames...))
	if err != nil {
		return fmt.Errorf("issue server certificate: %w", err)
	}
	s.baseURL = s.cfg.PublicURL
	if s.baseURL == "" {
		host, port, _ := net.SplitHostPort(s.httpLn.Addr().String())
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1"
			s.log.Warn("the plain-HTTP listener binds all addresses but no public_url is set; certificates will point relying parties at 127.0.0.1", "hint", "set --public-url")
		}
		s.baseURL = "http://" + net.JoinHostPort(host, port)
	}
	s.Tenants = tenant.NewService(s.store, s.kek, s.now)
	s.Tokens = tenant.NewTokens(s.store, s.now)
	monCtx, monStop := context.WithCancel(context.Background())
	s.Monitor, s.monStop = monitor.New(monCtx, s.store, s.log, s.now), monStop
	if err := s.openPKI(ctx); err != nil {
		return err
	}
	s.Fleet = fleet.New(s.store, s.now)
	if err := s.Fleet.Load(ctx); err != nil {
		return err
	}
	s.Tenants.AfterDelete(func(ctx context.Context, id string) { s.Fleet.DropTenant(id) })
	s.policies = &policySet{s: s}
	if err := s.policies.load(ctx); err != nil {
		return err
	}
	if s.Policies == nil {
		s.Policies = s.policies
	}
	if err := s.openTelemetry(ctx); err != nil {
		return err
	}
	s.Twins = twin.New(twinStore{s: s.store}, s.now)
	if err := s.openGateway(); err != nil {
		return err
	}
	if err := s.openProvisioning(); err != nil {
		return err
	}
	if err := s.openDeviceAuth(); err != nil {
		return err
	}
	if err := s.openAttestation(); err != nil { // attestation.go
		return err
	}
	if err := s.openOTA(); err != nil { // ota.go
		return err
	}
	s.openRollouts() // rollout.go
	s.EST, err = est.New(&estCA{s: s, renewGrace: s.cfg.RenewGrace}, est.WithObserver(func(ev est.Event) {
		if ev.Status >= 500 {
			s.log.Error("est request failed", "op", ev.Op, "label", ev.Label, "remote", ev.RemoteAddr, "status", ev.Status, "err", ev.Err)
			return
		}
		if ev.Status >= 400 && !ev.Decided && (ev.Op == wire.ESTSimpleEnroll || ev.Op == wire.ESTSimpleReenroll) {
			// Refused by the protocol checks before the CA saw it (a CSR
			// whose signature does not verify, say): still a security
			// decision, so audited and reported.
			s.auditESTProtocolRefusal(ev)
		}
		s.log.Debug("est request", "op", ev.Op, "label", ev.Label, "remote", ev.RemoteAddr, "status", ev.Status)
	}))
	if err != nil {
		return err
	}
	s.API = api.New(api.Deps{Store: s.store, Tenants: s.Tenants, Tokens: s.Tokens, PKI: s.PKI, CAKeys: s.caKeys, Monitor: s.Monitor, Fleet: s.Fleet, Schemas: s, Twins: s, Policies: s, Groups: s, MAC: s, Attest: s, OTA: s, Rollouts: s, Log: s.log, Now: s.now})
	return s.firstStart(ctx)
}

// openPKI builds the certificate authority and ties it to the tenant life
// cycle: a tenant is created with its CAs and deleted with them.
func (s *Server) openPKI(ctx context.Context) error {
	alg, err := pki.ParseAlgorithm(s.cfg.CAAlgorithm)
	if err != nil {
		return err
	}
	if s.cfg.CAKeys == "pkcs11" {
		pin, err := os.ReadFile(s.cfg.PKCS11PINFile)
		if err != nil {
			return fmt.Errorf("read PKCS#11 PIN file: %w", err)
		}
		s.hsm, err = pkcs11.Open(pkcs11.Config{Module: s.cfg.PKCS11Module, TokenLabel: s.cfg.PKCS11Token, PIN: strings.TrimSpace(string(pin))})
		if err != nil {
			return fmt.Errorf("open PKCS#11 token: %w", err)
		}
	}
	s.PKI, err = pki.New(ctx, pki.Config{
		Store: pkiStore{s: s.store, now: s.now, recorded: func(tenant, device string) {
			if s.telemetryKeys != nil {
				s.telemetryKeys.invalidate(tenant, device)
			}
		}},
		Keys:       s.caKeys,
		BaseURL:    s.baseURL,
		IssuerURLs: true,
		Now:        s.now,
		Auditor:    pkiAuditor{s: s.store, now: s.now},
		Logger:     s.log,
	})
	if err != nil {
		return err
	}
	s.Tenants.AfterCreate(func(ctx context.Context, t *store.Tenant, _ *tenant.Sealer) error {
		km, err := s.caKeys(ctx, t.ID)
		if err != nil {
			return err
		}
		_, err = s.PKI.CreateTenantCAs(ctx, t.ID, alg, km)
		return err
	})
	s.Tenants.AfterDelete(func(ctx context.Context, id string) { s.PKI.DropTenant(id) })
	// A crash between committing a tenant and creating its CAs leaves a
	// tenant without them; finish the job at start.
	ts, err := s.store.ListTenants(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if len(s.PKI.CAs(t.ID)) > 0 {
			continue
		}
		km, err := s.caKeys(ctx, t.ID)
		if err != nil {
			return err
		}
		if _, err := s.PKI.CreateTenantCAs(ctx, t.ID, alg, km); err != nil {
			return fmt.Errorf("create missing CAs of tenant %s: %w", t.ID, err)
		}
		s.log.Info("created the missing CAs of a tenant", "tenant", t.ID)
	}
	return nil
}

// caKeys returns the key manager of a tenant's CA keys.
func (s *Server) caKeys(ctx context.Context, tenantID string) (pki.KeyManager, error) {
	if s.hsm != nil {
		return s.hsm, nil
	}
	sealer, err := s.Tenants.Sealer(ctx, tenantID)
	if err != nil {
		return nil, err
	}
	return pki.NewFileKeyManager(sealer), nil
}

// Store returns the server's store (for tests and the demo).
func (s *Server) Store() store.Store { return s.store }

// firstStart mints the first admin token and writes it, once, to a 0600
// file. It never logs the token. A data directory whose admin.token was
// already written is left alone, even if the operator deleted the file.
func (s *Server) firstStart(ctx context.Context) error {
	if _, err := ReadState(s.cfg.DataDir); err == nil {
		return nil
	}
	path := filepath.Join(s.cfg.DataDir, fileAdminToken)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		secret, _, err := s.Tokens.Create(ctx, nil, tenant.NewTokenRequest{Role: tenant.RoleAdmin, Name: "initial admin"})
		if err != nil {
			return fmt.Errorf("create initial admin token: %w", err)
		}
		if err := atomicfile.Write(path, []byte(secret+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		s.log.Info("initialised data directory; the initial admin token is in a 0600 file", "dir", s.cfg.DataDir, "file", path)
	}
	return s.writeState(nil)
}

func (s *Server) writeState(st *State) error {
	if st == nil {
		st = &State{Initialized: s.now().UTC(), APIAddr: s.cfg.APIAddr, MQTTAddr: s.cfg.MQTTAddr, HTTPAddr: s.cfg.HTTPAddr}
	}
	b := fmt.Appendf(nil, "{\n  \"initialized\": %q,\n  \"api_addr\": %q,\n  \"mqtt_addr\": %q,\n  \"http_addr\": %q\n}\n",
		st.Initialized.Format(time.RFC3339Nano), st.APIAddr, st.MQTTAddr, st.HTTPAddr)
	return atomicfile.Write(filepath.Join(s.cfg.DataDir, fileState), b, 0o644)
}

// TLSConfig returns the settings every Ward TLS listener shares: TLS 1.2+
// with ECDHE and AEAD suites only (TLS 1.3 suites are all AEAD).
func TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384},
	}
}

func hostOf(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

// Start binds the listeners and serves in the background. The bound
// addresses (useful with port 0) are recorded in ward.json.
func (s *Server) Start(ctx context.Context) error {
	tc := TLSConfig()
	tc.Certificates = []tls.Certificate{*s.serverCert}
	tc.NextProtos = []string{"h2", "http/1.1"}
	// EST re-enrollment authenticates with the device certificate: ask
	// for one (never require it: API clients and first enrollments have
	// none). The EST CA verifies the chain itself.
	est.ConfigureTLS(tc)

	apiLn, httpLn := s.apiLn, s.httpLn
	s.serveErr = make(chan error, 3)
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.PKI.Run(runCtx)
	go s.pruneLoop(runCtx)
	go s.attestLoop(runCtx)  // attestation.go
	go s.otaLoop(runCtx)     // ota.go
	go s.rolloutLoop(runCtx) // rollout.go

	mux := http.NewServeMux()
	mux.Handle("/api/v1/", s.API.Handler())
	mux.Handle(wire.ESTPrefix, s.EST)
	mux.HandleFunc(wire.ProvisionPrefix, s.serveProvisionChallenge)
	// OTA repositories, authenticated by the device certificate (ota.go).
	mux.HandleFunc(wire.OTAImagePath, s.serveOTA)
	mux.HandleFunc(wire.OTADirectorPath, s.serveOTA)
	// Device-token routes: /oauth/token and /api/device/v1/telemetry/{stream},
	// authenticated by the device's key (private_key_jwt) and its tokens.
	s.DeviceAuth.Register(mux)
	mux.HandleFunc(deviceAttestPrefix, s.serveDeviceAttest)
	apiSrv := &http.Server{
		Handler:           s.accessLog(mux),
		TLSConfig:         tc,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	httpSrv := &http.Server{
		// CRLs, CA certificates and OCSP, mounted at the root: OCSP GET
		// requests carry base64 (which may contain "//") in the path, and a
		// ServeMux would redirect them.
		Handler:           s.PKI.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.servers = []*http.Server{apiSrv, httpSrv}
	go func() { s.serveErr <- apiSrv.Serve(tls.NewListener(apiLn, tc)) }()
	go func() { s.serveErr <- httpSrv.Serve(httpLn) }()
	go func() {
		if err := s.Gateway.Serve(s.mqttLn); err != nil && !errors.Is(err, broker.ErrClosed) {
			s.serveErr <- err
		}
	}()

	st, _ := ReadState(s.cfg.DataDir)
	if st == nil {
		st = &State{Initialized: s.now().UTC()}
	}
	st.APIAddr, st.HTTPAddr, st.MQTTAddr = apiLn.Addr().String(), httpLn.Addr().String(), s.mqttLn.Addr().String()
	if err := s.writeState(st); err != nil {
		return err
	}
	s.log.Info("ward server listening", "api", "https://"+st.APIAddr, "mqtt", "mqtts://"+st.MQTTAddr, "http", "http://"+st.HTTPAddr, "public_url", s.baseURL,
		"store", s.store.Dialect(), "ca_keys", s.cfg.CAKeys)
	return nil
}

// APIAddr is the bound API address (after Start).
func (s *Server) APIAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.apiLn == nil {
		return ""
	}
	return s.apiLn.Addr().String()
}

// MQTTAddr is the bound MQTT address.
func (s *Server) MQTTAddr() string {
	if s.mqttLn == nil {
		return ""
	}
	return s.mqttLn.Addr().String()
}

// HTTPAddr is the bound plain-HTTP address (after Start).
func (s *Server) HTTPAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Run starts the server and blocks until ctx is done or a listener fails,
// then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		s.Close()
		return err
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-s.serveErr:
	}
	s.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close stops the listeners (waiting up to 10 s for requests in flight) and
// closes the store.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		srv.Shutdown(ctx)
	}
	if s.Gateway != nil {
		s.Gateway.Close()
	}
	if s.cancel != nil {
		s.cancel()
	}
	for _, ln := range []net.Listener{s.apiLn, s.httpLn, s.mqttLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if s.bgCancel != nil {
		s.bgCancel()
	}
	if s.window != nil {
		s.window.close()
	}
	if s.nats != nil {
		s.nats.Drain()
	}
	if s.monStop != nil {
		s.monStop()
		s.Monitor.Wait()
	}
	if s.hsm != nil {
		s.hsm.Close()
	}
	if s.store == nil {
		return nil
	}
	return s.store.Close()
}

// Audit records a security decision or change outside an API request.
func (s *Server) Audit(ctx context.Context, e audit.Entry) error {
	return s.store.InTx(ctx, func(tx store.Tx) error {
		_, err := audit.Append(ctx, tx, s.now(), e)
		return err
	})
}

// statusWriter captures the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// accessLog logs method, path, status and duration. It never logs headers
// (Authorization), query strings or bodies.
func (s *Server) accessLog(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: 200}
		ctx, principal := api.WithPrincipalSlot(r.Context())
		h.ServeHTTP(sw, r.WithContext(ctx))
		path := r.URL.Path
		if len(path) > 200 {
			path = path[:200]
		}
		attrs := []any{"method", r.Method, "path", strings.ToValidUTF8(path, "?"), "status", sw.status,
			"ms", float64(time.Since(start).Microseconds()) / 1000, "remote", r.RemoteAddr}
		if p := principal(); p != nil {
			attrs = append(attrs, "token_id", p.TokenID)
		}
		s.log.Debug("http request", attrs...)
	})
}

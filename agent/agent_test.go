package agent_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/wire"
)

func TestEnrollFileKeystore(t *testing.T) {
	e := newEnv(t, nil)
	id := e.enroll(t)

	key, err := e.cfg.Keystore.Load(context.Background(), "device-1")
	if err != nil {
		t.Fatal(err)
	}
	if id.KeyName != "device-1" || id.Generation != 1 {
		t.Errorf("identity key %s generation %d, want device-1 and 1", id.KeyName, id.Generation)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(id.Certificate.PublicKey) {
		t.Error("the certificate's public key is not the keystore key's")
	}
	if len(id.Certificate.URIs) != 1 || id.Certificate.URIs[0].String() != wire.DeviceURI(tenant, device) {
		t.Errorf("URI SAN %v, want %s", id.Certificate.URIs, wire.DeviceURI(tenant, device))
	}
	if id.Certificate.Subject.CommonName != device {
		t.Errorf("CN %q, want %q", id.Certificate.Subject.CommonName, device)
	}

	fi, err := os.Stat(filepath.Join(e.cfg.StateDir, agent.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %04o, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(e.cfg.StateDir); di.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %04o, want 0700", di.Mode().Perm())
	}

	st, err := agent.ReadStatus(e.cfg.StateDir, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Tenant != tenant || st.Device != device || st.KeystoreKind != "file" || st.KeyName != "device-1" ||
		st.Generation != 1 || st.Expired || st.Server != e.url {
		t.Errorf("status %+v", st)
	}
	if !st.NotAfter.Equal(id.Certificate.NotAfter) || st.Serial == "" {
		t.Errorf("status cert fields %+v", st)
	}

	// New needs nothing but the state directory and the keystore.
	a, err := agent.New(agent.Config{StateDir: e.cfg.StateDir, Keystore: e.cfg.Keystore, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	checkCredential(t, e.ca, a, e.clock.Now())
	if s := a.Status(); s.Device != device || s.Generation != 1 {
		t.Errorf("agent status %+v", s)
	}

	// The token was one-time, and the state refuses a second enrollment.
	_, err = agent.Enroll(context.Background(), e.cfg, agent.Token("tok-"+t.Name()))
	if !errors.Is(err, agent.ErrAlreadyEnrolled) {
		t.Errorf("second Enroll: %v, want ErrAlreadyEnrolled", err)
	}
}

func TestEnrollBasicToken(t *testing.T) {
	e := newEnv(t, nil)
	e.ca.AddToken("basic-secret", device)
	if _, err := agent.Enroll(context.Background(), e.cfg, agent.BasicToken("basic-secret")); err != nil {
		t.Fatal(err)
	}
}

func TestEnrollRefusedShowsServerMessage(t *testing.T) {
	for name, tc := range map[string]struct {
		cred   agent.Credential
		status int
		msg    string
	}{
		"fail/unknown-token": {agent.Token("not-a-token"), http.StatusForbidden, "the enrollment token is not valid"},
		"fail/other-device":  {agent.BasicToken("tok-other"), http.StatusForbidden, "the enrollment token is not valid"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.ca.AddToken("tok-other", "another-device")
			_, err := agent.Enroll(context.Background(), e.cfg, tc.cred)
			var se *agent.ServerError
			if !errors.As(err, &se) || se.Status != tc.status || se.Message != tc.msg {
				t.Fatalf("got %v, want %d %q", err, tc.status, tc.msg)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not carry the server's message", err)
			}
			if strings.Contains(err.Error(), "not-a-token") || strings.Contains(err.Error(), "tok-other") {
				t.Errorf("error %q leaks the token", err)
			}
			if _, err := e.cfg.Keystore.Load(context.Background(), "device-1"); !errors.Is(err, keystore.ErrNotFound) {
				t.Errorf("a refused enrollment left its key behind: %v", err)
			}
			if _, err := os.Stat(filepath.Join(e.cfg.StateDir, agent.StateFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused enrollment wrote state: %v", err)
			}
		})
	}
}

func TestEnrollPendingRetriesAfterRetryAfter(t *testing.T) {
	e := newEnv(t, nil)
	e.ca.AddToken("tok", device)
	e.ca.SetPending(90 * time.Second)
	start := e.clock.Now()
	done := make(chan error, 1)
	go func() {
		_, err := agent.Enroll(context.Background(), e.cfg, agent.Token("tok"))
		done <- err
	}()
	// The agent waits exactly what the server said, on its clock.
	e.clock.waitTimer(t, start.Add(90*time.Second))
	e.ca.SetPending(0)
	e.clock.Advance(90 * time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestEnrollPendingGivesUpWithContext(t *testing.T) {
	e := newEnv(t, nil)
	e.ca.AddToken("tok", device)
	e.ca.SetPending(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := agent.Enroll(ctx, e.cfg, agent.Token("tok"))
		done <- err
	}()
	e.clock.waitTimer(t, e.clock.Now().Add(time.Minute))
	cancel()
	err := <-done
	if !errors.Is(err, agent.ErrPending) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want ErrPending and context.Canceled", err)
	}
	if _, err := e.cfg.Keystore.Load(context.Background(), "device-1"); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("abandoned enrollment left its key: %v", err)
	}
}

func TestServerFromAnotherCAIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.ca.AddToken("tok", device)
	e.cfg.CABundle = newServerPKI(t).PEM // a CA that did not sign the server
	_, err := agent.Enroll(context.Background(), e.cfg, agent.Token("tok"))
	if !errors.Is(err, agent.ErrServerNotTrusted) {
		t.Fatalf("got %v, want ErrServerNotTrusted", err)
	}
	if !strings.Contains(err.Error(), "is not signed by the given CA bundle") {
		t.Errorf("unclear message: %v", err)
	}
	if e.ca.Calls() != 0 {
		t.Error("the CSR or token reached an untrusted server")
	}
}

func TestServerWrongHostIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	pki := newServerPKI(t, "ward.test") // names a host other than 127.0.0.1
	e.cfg.Server = startEST(t, e.ca, pki)
	e.cfg.CABundle = pki.PEM
	_, err := agent.Enroll(context.Background(), e.cfg, agent.Token("tok"))
	if !errors.Is(err, agent.ErrServerNotTrusted) || !strings.Contains(err.Error(), "does not name that host") {
		t.Fatalf("got %v", err)
	}
}

func TestConfigProblemsAllReported(t *testing.T) {
	_, err := agent.Enroll(context.Background(), agent.Config{Server: "http://x", Tenant: "A", Device: "/"}, agent.Token("t"))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"must use https", "CA bundle", "tenant", "device", "keystore", "state directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestRenewalAtTwoThirdsRotatesKey(t *testing.T) {
	e := newEnv(t, nil)
	id := e.enroll(t)
	a, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)

	leaf := id.Certificate
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	earliest := leaf.NotBefore.Add(time.Duration(float64(life) * agent.RenewFraction))
	latest := earliest.Add(time.Duration(float64(life) * agent.RenewJitterFraction))
	next := a.Status().NextRenewal
	if next.Before(earliest) || !next.Before(latest) {
		t.Fatalf("renewal at %v, want in [%v, %v)", next, earliest, latest)
	}
	e.clock.waitTimer(t, next)

	// Just before the renewal time nothing happens.
	e.clock.Set(next.Add(-time.Second))
	if d := e.clock.deadlines(); len(d) == 0 || !d[0].Equal(next) {
		t.Fatalf("timers %v, want the renewal at %v pending", d, next)
	}
	if a.Status().Generation != 1 || e.ca.Calls() != 1 {
		t.Fatal("renewed early")
	}

	e.clock.Set(next)
	waitFor(t, "renewal", func() bool { return a.Status().Generation == 2 })
	// The old key is destroyed right after the new state is saved.
	waitFor(t, "old key deletion", func() bool {
		_, err := e.cfg.Keystore.Load(ctx, "device-1")
		return errors.Is(err, keystore.ErrNotFound)
	})

	s := a.Status()
	if s.KeyName != "device-2" || s.ConsecutiveFailures != 0 || !s.RenewedAt.Equal(next) {
		t.Errorf("status after renewal %+v", s)
	}
	newID := a.Identity()
	if newID.Certificate.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("renewal kept the old key")
	}
	if newID.Certificate.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("renewal kept the old certificate")
	}
	checkCredential(t, e.ca, a, e.clock.Now())
	if c, _ := a.GetClientCertificate(nil); c.Leaf.SerialNumber.Cmp(newID.Certificate.SerialNumber) != 0 {
		t.Error("GetClientCertificate still serves the old certificate")
	}

	// The next renewal is scheduled from the new certificate.
	n2 := a.Status().NextRenewal
	if !n2.After(next) {
		t.Errorf("next renewal %v not after %v", n2, next)
	}
	// A restart picks up the renewed identity.
	b, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b.Identity().Generation != 2 {
		t.Errorf("restart loaded generation %d", b.Identity().Generation)
	}
	checkCredential(t, e.ca, b, e.clock.Now())
}

// flakyCA fails re-enrollment with err while it is set.
type flakyCA struct {
	*esttest.CA
	err   atomic.Pointer[error]
	calls atomic.Int64
}

func (f *flakyCA) Reenroll(ctx context.Context, r *est.Request) ([]*x509.Certificate, error) {
	f.calls.Add(1)
	if p := f.err.Load(); p != nil {
		return nil, *p
	}
	return f.CA.Reenroll(ctx, r)
}

func TestRenewalFailureBacksOffAndKeepsCredential(t *testing.T) {
	for name, failure := range map[string]struct {
		err error
		msg string
	}{
		"fail/500": {errors.New("database on fire"), "500 Internal Server Error"},
		"fail/403": {est.Forbidden("device is quarantined", nil), "403 Forbidden: device is quarantined"},
	} {
		t.Run(name, func(t *testing.T) {
			var flaky *flakyCA
			e := newEnv(t, func(ca *esttest.CA) est.CA {
				flaky = &flakyCA{CA: ca}
				flaky.err.Store(&failure.err)
				return flaky
			})
			id := e.enroll(t)
			a, err := agent.New(e.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go a.Run(ctx)

			next := a.Status().NextRenewal
			notAfter := id.Certificate.NotAfter
			var waits, caps []time.Duration
			const attempts = 14
			for i := 1; i <= attempts; i++ {
				e.clock.waitTimer(t, next)
				e.clock.Set(next)
				waitFor(t, "a failed attempt", func() bool { return a.Status().ConsecutiveFailures == i })
				s := a.Status()
				if !strings.Contains(s.LastError, failure.msg) {
					t.Fatalf("last error %q does not carry %q", s.LastError, failure.msg)
				}
				if s.Generation != 1 || a.TLSCertificate().Leaf.SerialNumber.Cmp(id.Certificate.SerialNumber) != 0 {
					t.Fatal("a failed renewal replaced the credential")
				}
				waits = append(waits, s.NextRenewal.Sub(e.clock.Now()))
				// Near expiry the wait is also capped at a quarter of
				// the remaining lifetime.
				caps = append(caps, notAfter.Sub(e.clock.Now())/4)
				next = s.NextRenewal
			}
			t.Logf("backoff waits: %v", waits)
			jittered := false
			capped := 0
			for i, w := range waits {
				n := min(agent.RenewBackoffMin<<i, agent.RenewBackoffMax)
				if caps[i] < n {
					capped++
					if w > caps[i] {
						t.Errorf("wait %d is %v, over a quarter of the remaining lifetime %v", i+1, w, caps[i])
					}
					continue
				}
				if w < n/2 || w > n {
					t.Errorf("wait %d is %v, want in [%v, %v]", i+1, w, n/2, n)
				}
				if i > 0 && n < agent.RenewBackoffMax && w < waits[i-1] {
					t.Errorf("wait %d (%v) shorter than wait %d (%v)", i+1, w, i, waits[i-1])
				}
				if w != n && w != n/2 {
					jittered = true
				}
			}
			if !jittered {
				t.Error("backoff has no jitter")
			}
			if capped == 0 || capped == attempts {
				t.Errorf("%d of %d waits capped by the remaining lifetime; the test should see both kinds", capped, attempts)
			}
			if got := flaky.calls.Load(); got != attempts {
				t.Errorf("server saw %d attempts, want %d", got, attempts)
			}
			// The old key and the old state survive; no new key lingers.
			if _, err := e.cfg.Keystore.Load(ctx, "device-1"); err != nil {
				t.Fatalf("old key gone after failed renewals: %v", err)
			}
			if _, err := e.cfg.Keystore.Load(ctx, "device-2"); !errors.Is(err, keystore.ErrNotFound) {
				t.Errorf("failed renewal left its new key: %v", err)
			}
			if st, _ := agent.ReadStatus(e.cfg.StateDir, e.clock.Now()); st.Generation != 1 {
				t.Errorf("state generation %d after failures", st.Generation)
			}
			checkCredential(t, e.ca, a, e.clock.Now())

			// When the server recovers, the next attempt succeeds.
			flaky.err.Store(nil)
			e.clock.waitTimer(t, next)
			e.clock.Set(next)
			waitFor(t, "renewal after recovery", func() bool { return a.Status().Generation == 2 })
			if s := a.Status(); s.ConsecutiveFailures != 0 || s.LastError != "" {
				t.Errorf("status after recovery %+v", s)
			}
		})
	}
}

func TestRenewalPendingHonoursRetryAfter(t *testing.T) {
	pending := error(est.Pending(150 * time.Second))
	var flaky *flakyCA
	e := newEnv(t, func(ca *esttest.CA) est.CA {
		flaky = &flakyCA{CA: ca}
		flaky.err.Store(&pending)
		return flaky
	})
	e.enroll(t)
	a, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Renew(context.Background())
	if !errors.Is(err, agent.ErrPending) {
		t.Fatalf("got %v, want ErrPending", err)
	}
	if got, want := a.Status().NextRenewal, e.clock.Now().Add(150*time.Second); !got.Equal(want) {
		t.Errorf("next attempt %v, want %v", got, want)
	}
}

func TestNewRemovesKeysOfInterruptedRenewal(t *testing.T) {
	e := newEnv(t, nil)
	e.enroll(t)
	ctx := context.Background()
	// A renewal that generated device-2 and died before saving state.
	if _, err := e.cfg.Keystore.Generate(ctx, "device-2", keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	// A temporary state file from a write that died before the rename.
	tmp := filepath.Join(e.cfg.StateDir, ".identity.json.tmp-123")
	if err := os.WriteFile(tmp, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cfg.Keystore.Load(ctx, "device-2"); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("orphaned new key survived: %v", err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary state file survived: %v", err)
	}
	checkCredential(t, e.ca, a, e.clock.Now())
}

func TestNewRefusesStateNamingMissingKey(t *testing.T) {
	e := newEnv(t, nil)
	e.enroll(t)
	if err := e.cfg.Keystore.Delete(context.Background(), "device-1"); err != nil {
		t.Fatal(err)
	}
	_, err := agent.New(e.cfg)
	if !errors.Is(err, agent.ErrBadState) || !strings.Contains(err.Error(), "device-1") {
		t.Fatalf("got %v, want ErrBadState naming the key", err)
	}
}

func TestNewRefusesMismatchedDevice(t *testing.T) {
	e := newEnv(t, nil)
	e.enroll(t)
	cfg := e.cfg
	cfg.Device = "someone-else"
	if _, err := agent.New(cfg); err == nil || !strings.Contains(err.Error(), "differs from the enrolled device") {
		t.Fatalf("got %v", err)
	}
	if _, err := agent.New(agent.Config{StateDir: t.TempDir(), Keystore: e.cfg.Keystore}); !errors.Is(err, agent.ErrNotEnrolled) {
		t.Fatalf("empty state dir: %v, want ErrNotEnrolled", err)
	}
}

func TestStateFileIsValidJSONWithoutSecrets(t *testing.T) {
	e := newEnv(t, nil)
	e.enroll(t)
	b, err := os.ReadFile(filepath.Join(e.cfg.StateDir, agent.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["generation"].(float64) != 1 || m["key"] != "device-1" || m["tenant"] != tenant {
		t.Errorf("state %v", m)
	}
	if strings.Contains(string(b), "PRIVATE KEY") || strings.Contains(string(b), "tok-") {
		t.Error("state file holds a secret")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Duration{
		"0":                             0,
		"120":                           2 * time.Minute,
		" 7 ":                           7 * time.Second,
		"99999999999999999999999":       agent.MaxRetryAfter,
		"Fri, 02 Jan 2026 03:05:05 GMT": time.Minute,
		"Fri, 02 Jan 2026 03:00:00 GMT": 0, // in the past
	} {
		got, ok := agent.ParseRetryAfter(in, now)
		if !ok || got != want {
			t.Errorf("%q: got %v %v, want %v", in, got, ok, want)
		}
	}
	for _, bad := range []string{"", "-1", "1.5", "soon", "12s", strings.Repeat("9", 100)} {
		if _, ok := agent.ParseRetryAfter(bad, now); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

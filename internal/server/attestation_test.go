package server_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	agentattest "github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/server"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

const (
	attHWModel = "wardboard-1"
	attRelease = "1.0.0"
)

func goodChain() agentattest.BootChain {
	return agentattest.BootChain{
		Bootloader: sha256.Sum256([]byte("u-boot 2026.01")),
		Config:     sha256.Sum256([]byte("boot config v1")),
		Kernel:     sha256.Sum256([]byte("linux 6.12.9")),
		Rootfs:     sha256.Sum256([]byte("rootfs image of " + attRelease)),
	}
}

// refDocFor is the reference-value document release tooling publishes.
func refDocFor(t *testing.T, release string, stages []agentattest.Stage) []byte {
	t.Helper()
	type stage struct {
		Name   string `json:"name"`
		PCR    int    `json:"pcr"`
		Event  string `json:"event"`
		SHA256 string `json:"sha256"`
	}
	var ss []stage
	for _, s := range stages {
		ss = append(ss, stage{Name: s.Name, PCR: s.PCR, Event: fmt.Sprintf("0x%x", s.Type), SHA256: hex.EncodeToString(s.Digest[:])})
	}
	b, err := json.MarshalIndent(map[string]any{"ward_attest": map[string]any{
		"schema": 1, "hw_model": attHWModel, "release": release, "hash": "sha256", "stages": ss}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newAttestEnv is newESTEnv with the EK roots of the given swtpms'
// manufacturer CAs in ek_roots.
func newAttestEnv(t *testing.T, sims ...*tpmtest.Sim) *estEnv {
	t.Helper()
	dir := t.TempDir()
	var pemRoots []byte
	for _, s := range sims {
		for _, name := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
			b, err := os.ReadFile(filepath.Join(s.EKCADir, name))
			if err != nil {
				t.Fatal(err)
			}
			pemRoots = append(pemRoots, b...)
		}
	}
	rootsFile := filepath.Join(t.TempDir(), "ek-roots.pem")
	if err := os.WriteFile(rootsFile, pemRoots, 0o600); err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{}
	clk.n.Store(time.Now().UnixNano())
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.EKRoots = rootsFile
	cfg.APIAddr, cfg.HTTPAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	srv, err := server.Open(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), server.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if _, err := srv.Tenants.Create(ctx, "test", "acme", ""); err != nil {
		t.Fatal(err)
	}
	return &estEnv{srv: srv, clock: clk, dir: dir, pool: caPool(t, dir)}
}

// tpmDevice is an enrolled agent with a manufactured swtpm.
type tpmDevice struct {
	t    *testing.T
	e    *estEnv
	id   string
	sim  *tpmtest.Sim
	a    *agent.Agent
	dir  string
	boot agentattest.SimulatedBoot
	tpm  *agentattest.TPM
	conn *agent.Conn
}

func (e *estEnv) tpmDevice(t *testing.T, id string, sim *tpmtest.Sim, chain agentattest.BootChain) *tpmDevice {
	t.Helper()
	d := &tpmDevice{t: t, e: e, id: id, sim: sim, a: e.enrollAgent(t, id), dir: t.TempDir()}
	d.boot = agentattest.SimulatedBoot{Path: filepath.Join(d.dir, "eventlog.bin")}
	d.openTPM()
	if err := d.boot.Boot(d.tpm, chain.Stages()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d.conn != nil {
			d.conn.Close()
		}
		if d.tpm != nil {
			d.tpm.Close()
		}
	})
	d.connect()
	// The device says which release it runs (twin reported state).
	rep, _ := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName,
		Patch: json.RawMessage(`{"firmware":{"hw_model":"` + attHWModel + `","release":"` + attRelease + `"}}`)})
	if err := d.conn.Publish(wire.TopicTwinReported, rep, 1); err != nil {
		t.Fatal(err)
	}
	// Operator-approved AK enrollment: the request arrives over MQTT.
	waitUntil(t, "the AK enrollment request", func() bool {
		return e.srv.ApproveAKEnrollment(ctx, "test", "acme", id) == nil
	})
	waitUntil(t, "the AK to be enrolled", func() bool {
		st, err := e.srv.AttestationState(ctx, "acme", id)
		return err == nil && st != nil && st.AKEnrolled
	})
	return d
}

func (d *tpmDevice) openTPM() {
	d.t.Helper()
	tpm, err := agentattest.Open(agentattest.Config{Path: "tcp://" + d.sim.Addr, StateDir: d.dir, Boot: d.boot})
	if err != nil {
		d.t.Fatal(err)
	}
	d.tpm = tpm
}

// connect opens a session that answers attestation.
func (d *tpmDevice) connect() {
	d.t.Helper()
	if d.conn != nil {
		d.conn.Close()
	}
	c, err := d.a.ConnectMQTT(ctx, d.e.srv.MQTTAddr())
	if err != nil {
		d.t.Fatal(err)
	}
	d.conn = c
	if err := c.ServeAttestation(d.tpm); err != nil {
		d.t.Fatal(err)
	}
}

// attest challenges the device and waits for a verdict newer than before.
func (d *tpmDevice) attest() *api.AttestationState {
	d.t.Helper()
	before, _ := d.e.srv.AttestationState(ctx, "acme", d.id)
	d.e.clock.Advance(time.Second) // so the new verdict is recognisably newer
	if _, err := d.e.srv.Challenge(ctx, "test", "acme", d.id); err != nil {
		d.t.Fatal(err)
	}
	var st *api.AttestationState
	waitUntil(d.t, "a verdict", func() bool {
		s, err := d.e.srv.AttestationState(ctx, "acme", d.id)
		if err != nil || s == nil || s.Result == "" || (before != nil && !s.Time.After(before.Time)) {
			return false
		}
		st = s
		return true
	})
	return st
}

// reboot power-cycles the swtpm (orderly: TPM2_Shutdown first) and boots
// chain.
func (d *tpmDevice) reboot(chain agentattest.BootChain) {
	d.t.Helper()
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if err := d.tpm.Shutdown(); err != nil {
		d.t.Fatal(err)
	}
	d.tpm = nil
	swtpmPowerCycle(d.t, d.sim)
	d.openTPM()
	if err := d.boot.Boot(d.tpm, chain.Stages()); err != nil {
		d.t.Fatal(err)
	}
}

// swtpmPowerCycle sends CMD_INIT on swtpm's control channel (power-on)
// then TPM2_Startup(CLEAR) as firmware does.
func swtpmPowerCycle(t *testing.T, sim *tpmtest.Sim) {
	t.Helper()
	c, err := net.DialTimeout("tcp", sim.CtrlAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := binary.BigEndian.AppendUint32(nil, 0x02) // CMD_INIT
	msg = binary.BigEndian.AppendUint32(msg, 0)
	var rc [4]byte
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, rc[:]); err != nil || binary.BigEndian.Uint32(rc[:]) != 0 {
		t.Fatalf("swtpm CMD_INIT: %v %x", err, rc)
	}
	c.Close()
	c, err = net.DialTimeout("tcp", sim.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0}); err != nil {
		t.Fatal(err)
	}
	var rsp [10]byte
	if _, err := io.ReadFull(c, rsp[:]); err != nil {
		t.Fatal(err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:]); rc != 0 && rc != 0x100 {
		t.Fatalf("TPM2_Startup: rc 0x%x", rc)
	}
}

// importRefValues registers the tenant's reference-value key and imports
// the good release.
func importRefValues(t *testing.T, e *estEnv) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	if err := e.srv.SetRefValueKey(ctx, "test", "acme", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
		t.Fatal(err)
	}
	doc := refDocFor(t, attRelease, goodChain().Stages())
	sig, err := attest.SignRefValues(doc, priv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.ImportRefValues(ctx, "test", "acme", doc, sig); err != nil {
		t.Fatal(err)
	}
	k := goodChain().Kernel
	forged := []byte(strings.Replace(string(doc), hex.EncodeToString(k[:]), strings.Repeat("ab", 32), 1))
	if _, err := e.srv.ImportRefValues(ctx, "test", "acme", forged, sig); err == nil {
		t.Fatal("imported reference values whose signature does not cover them")
	}
}

func deviceState(e *estEnv, id string) string {
	st, _ := e.srv.Fleet.State("acme", id)
	return st
}

// TestAttestationEndToEnd: two devices with real (software) TPMs enroll
// their AKs through the operator-approved MQTT flow; the one booting the
// released kernel passes; the one booting a tampered kernel fails, is
// quarantined (confined to its attestation and OTA topics), cannot renew,
// and passes again once it boots the released chain, which lifts the
// quarantine. The events are listed under type "attestation".
func TestAttestationEndToEnd(t *testing.T) {
	goodSim, badSim := tpmtest.Manufactured(t), tpmtest.Manufactured(t)
	e := newAttestEnv(t, goodSim, badSim)
	importRefValues(t, e)

	good := e.tpmDevice(t, "good-1", goodSim, goodChain())
	if st := good.attest(); st.Result != wire.VerdictPass || !st.TPMVerified || st.Assurance != wire.AssuranceTPM || st.Release != attRelease {
		t.Fatalf("good device: %+v", st)
	}

	tampered := goodChain()
	tampered.Kernel = sha256.Sum256([]byte("linux 6.12.9 with a rootkit"))
	bad := e.tpmDevice(t, "bad-1", badSim, tampered)
	st := bad.attest()
	if st.Result != wire.VerdictFail || !st.Quarantine {
		t.Fatalf("tampered device: %+v", st)
	}
	waitUntil(t, "the tampered device to be quarantined", func() bool { return deviceState(e, "bad-1") == store.DeviceQuarantined })
	if deviceState(e, "good-1") != store.DeviceActive {
		t.Fatal("the good device's state changed")
	}

	// Quarantined: the session was cut; a new one is confined.
	waitUntil(t, "the session to be cut", func() bool { return !bad.conn.Connected() })
	bad.connect() // subscribes to attest/*, publishes attest/enroll: allowed
	if err := bad.conn.Subscribe(wire.TopicOTAJob, func(string, []byte) {}); err != nil {
		t.Fatalf("quarantined device cannot subscribe to OTA jobs: %v", err)
	}
	if err := bad.conn.Subscribe(wire.TopicTwinDesired, func(string, []byte) {}); !errors.Is(err, agent.ErrRefused) {
		t.Fatalf("quarantined device subscribed to its twin: %v", err)
	}
	// attest/reply is open: evidence for no outstanding challenge is
	// acknowledged (and dropped), the session stays up.
	stale, _ := json.Marshal(wire.AttestEvidence{ChallengeID: "none", Software: &wire.SoftwareReport{Nonce: make([]byte, 32),
		ActiveSlot: "a", Slots: map[string][]byte{"a": make([]byte, 32)}, Time: time.Now().UTC(), Signature: []byte{1}}})
	if err := bad.conn.Publish(wire.TopicAttestReply, stale, 1); err != nil {
		t.Fatalf("quarantined device cannot publish on attest/reply: %v", err)
	}
	env, err := bad.a.SignTelemetry("temp", 1, []byte(`{"celsius":20}`))
	if err != nil {
		t.Fatal(err)
	}
	// MQTT 3.1.1 has no negative PUBACK: the gateway refuses by cutting
	// the session before acknowledging.
	if err := bad.conn.Publish(wire.TopicTelemetry+"/env", env, 1); err == nil || bad.conn.Connected() {
		t.Fatalf("quarantined device published telemetry: %v", err)
	}
	if rs, _ := e.srv.Store().RecentReadings(ctx, "acme", "bad-1", 10); len(rs) != 0 {
		t.Fatalf("%d readings stored from a quarantined device", len(rs))
	}

	// Renewal refused while quarantined (EST 403), audited, event.
	bad.connect()
	if err := bad.a.Renew(ctx); !isStatus(err, 403) {
		t.Fatalf("quarantined device renewed: %v", err)
	}

	// Booting the released chain again and passing lifts the quarantine.
	bad.reboot(goodChain())
	bad.connect()
	if st := bad.attest(); st.Result != wire.VerdictPass {
		t.Fatalf("repaired device: %+v", st)
	}
	waitUntil(t, "the quarantine to be lifted", func() bool { return deviceState(e, "bad-1") == store.DeviceActive })

	e.srv.Monitor.Flush(ctx)
	evs, err := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "attestation", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]int{}
	for _, ev := range evs {
		types[ev.Type]++
		if ev.Device != "bad-1" {
			t.Errorf("event about %s: %+v", ev.Device, ev)
		}
	}
	if types["attestation.failed"] != 1 || types["attestation.renewal_refused"] != 1 {
		t.Fatalf("attestation events: %v", types)
	}
}

// TestRenewalRequiresFreshAttestation: with the policy on, a renewal
// without a pass bound to the CSR's key is refused; the agent's renewal,
// which attests its new key first, is accepted.
func TestRenewalRequiresFreshAttestation(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	e := newAttestEnv(t, sim)
	importRefValues(t, e)
	d := e.tpmDevice(t, "renew-1", sim, goodChain())
	if err := e.srv.SetAttestPolicy(ctx, "test", "acme", api.AttestPolicy{Interval: "24h", QuarantineOnFailure: true,
		RenewalRequiresPass: true, RenewalMaxAge: "10m"}); err != nil {
		t.Fatal(err)
	}
	// A pass on a scheduled challenge does not bind any new key.
	if st := d.attest(); st.Result != wire.VerdictPass {
		t.Fatalf("%+v", st)
	}
	cur := d.a.Identity().Certificate
	code, body, _ := e.post(t, wire.ESTSimpleReenroll, "acme", "", reCSR(t, newKey(t), cur), d.a.TLSCertificate())
	if code != 403 {
		t.Fatalf("renewal without a bound attestation: %d %s", code, body)
	}
	gen := d.a.Identity().Generation
	if err := d.a.Renew(ctx); err != nil {
		t.Fatalf("renewal with attestation: %v", err)
	}
	if g := d.a.Identity().Generation; g != gen+1 {
		t.Fatalf("generation %d -> %d", gen, g)
	}
	// The pass was spent on that key: another key is refused again.
	code, _, _ = e.post(t, wire.ESTSimpleReenroll, "acme", "", reCSR(t, newKey(t), d.a.Identity().Certificate), d.a.TLSCertificate())
	if code != 403 {
		t.Fatalf("a second key renewed on the same attestation: %d", code)
	}
	e.srv.Monitor.Flush(ctx)
	// Repeats within the monitor's window aggregate into one row.
	evs, _ := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "attestation.renewal_refused", Limit: 10})
	if len(evs) != 1 || evs[0].Count != 2 {
		t.Fatalf("renewal-refused events: %d rows", len(evs))
	}
}

func isStatus(err error, code int) bool {
	var se *agent.ServerError
	return errors.As(err, &se) && se.Status == code
}

// TestAttestationOverHTTPS: a device without an MQTT session asks for a
// challenge and sends its evidence over HTTPS, authenticated by its device
// certificate; the verdict comes back in the response.
func TestAttestationOverHTTPS(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	e := newAttestEnv(t, sim)
	importRefValues(t, e)
	d := e.tpmDevice(t, "https-1", sim, goodChain())
	d.conn.Close() // from here on, HTTPS only
	d.conn = nil
	tc := &tls.Config{RootCAs: e.pool, Certificates: []tls.Certificate{*d.a.TLSCertificate()}}
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	base := "https://" + e.srv.APIAddr() + "/api/device/v1/attest/"
	post := func(c *http.Client, path string, body []byte) (*http.Response, []byte) {
		resp, err := c.Post(base+path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	anon := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool}}}
	if resp, _ := post(anon, "challenge", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no client certificate: %d", resp.StatusCode)
	}
	resp, b := post(hc, "challenge", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("challenge: %d %s", resp.StatusCode, b)
	}
	c, err := wire.ParseAttestChallenge(b)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := d.tpm.Attest(c)
	if err != nil {
		t.Fatal(err)
	}
	evb, _ := json.Marshal(ev)
	resp, b = post(hc, "evidence", evb)
	if resp.StatusCode != 200 {
		t.Fatalf("evidence: %d %s", resp.StatusCode, b)
	}
	v, err := wire.ParseAttestVerdict(b)
	if err != nil || v.Result != wire.VerdictPass {
		t.Fatalf("verdict %+v %v", v, err)
	}
	// The same evidence again answers no outstanding challenge.
	if resp, _ := post(hc, "evidence", evb); resp.StatusCode != http.StatusConflict {
		t.Fatalf("replayed evidence: %d", resp.StatusCode)
	}
}

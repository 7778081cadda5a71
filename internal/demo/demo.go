// Package demo is `ward demo`: it starts a throwaway server in a temporary
// directory and walks through what Ward proves, printing each step. Every
// step checks its outcome; the demo fails (non-zero exit) if any does not
// hold, so it doubles as a smoke test.
package demo

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/server"
)

// Options tune the demo.
type Options struct {
	// Keep leaves the temporary data directory in place.
	Keep bool
	// Log receives the server's logs (default: discarded).
	Log io.Writer
}

type run struct {
	out   io.Writer
	step  int
	agent *agent.Agent
	ks    keystore.Keystore
}

func (r *run) say(format string, args ...any) {
	r.step++
	fmt.Fprintf(r.out, "%2d. %s\n", r.step, fmt.Sprintf(format, args...))
}

func (r *run) proved(format string, args ...any) {
	fmt.Fprintf(r.out, "    ✓ %s\n", fmt.Sprintf(format, args...))
}

// Run runs the demo, writing its narrative to out.
func Run(ctx context.Context, out io.Writer, o Options) (err error) {
	r := &run{out: out}
	dir, err := os.MkdirTemp("", "ward-demo-*")
	if err != nil {
		return err
	}
	if !o.Keep {
		defer os.RemoveAll(dir)
	}
	logw := o.Log
	if logw == nil {
		logw = io.Discard
	}
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.APIAddr, cfg.HTTPAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// The attestation step's TPMs are made first: the server reads their
	// makers' CA roots when it opens.
	lab, err := prepareTPMs(filepath.Join(dir, "tpm"))
	if err != nil {
		return fmt.Errorf("manufacture software TPMs: %w", err)
	}
	defer lab.close()
	cfg.EKRoots = lab.rootsFile

	r.say("Starting a Ward server in %s (SQLite, loopback, random ports)", dir)
	srv, err := server.Open(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		srv.Close()
		return err
	}
	defer srv.Close()
	fi, err := os.Stat(server.AdminTokenPath(dir))
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != 0o600 {
		return fmt.Errorf("admin token file has mode %v, want 0600", fi.Mode().Perm())
	}
	r.proved("API on https://%s; first admin token written once to %s (mode %v), never logged",
		srv.APIAddr(), filepath.Base(server.AdminTokenPath(dir)), fi.Mode().Perm())

	admin, err := client.FromFiles(srv.APIAddr(), server.AdminTokenPath(dir), server.CABundlePath(dir))
	if err != nil {
		return err
	}
	r.say("Creating tenants acme and globex as the admin")
	for _, id := range []string{"acme", "globex"} {
		if err := admin.Do(ctx, "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: id}, nil); err != nil {
			return fmt.Errorf("create tenant %s: %w", id, err)
		}
	}
	r.proved("each tenant got its own AES-256 data key, wrapped by the server's key-encryption key")

	r.say("Minting an operator token scoped to acme")
	var tok api.CreatedToken
	if err := admin.Do(ctx, "POST", "/api/v1/tokens", api.CreateTokenRequest{Role: "operator", Tenant: "acme", TTL: "1h", Name: "demo"}, &tok); err != nil {
		return err
	}
	r.proved("token %s…: 256 random bits, only its SHA-256 is stored, expires in 1h", tok.Secret[:12])

	caPEM, err := os.ReadFile(server.CABundlePath(dir))
	if err != nil {
		return err
	}
	op, err := client.New(srv.APIAddr(), tok.Secret, caPEM)
	if err != nil {
		return err
	}
	r.say("Calling the API as the acme operator")
	var t api.Tenant
	if err := op.Do(ctx, "GET", "/api/v1/tenants/acme", nil, &t); err != nil {
		return err
	}
	r.proved("GET /api/v1/tenants/acme → 200 (%s, created %s)", t.ID, t.CreatedAt.Format(time.RFC3339))

	r.say("Trying what the operator may not do")
	if err := expectStatus(op.Do(ctx, "GET", "/api/v1/tenants/globex", nil, nil), 403); err != nil {
		return fmt.Errorf("reading another tenant: %w", err)
	}
	r.proved("GET /api/v1/tenants/globex → 403: a tenant's token cannot see another tenant")
	if err := expectStatus(op.Do(ctx, "DELETE", "/api/v1/tenants/acme", nil, nil), 403); err != nil {
		return fmt.Errorf("deleting a tenant: %w", err)
	}
	r.proved("DELETE /api/v1/tenants/acme → 403: operators cannot delete tenants")
	anon, _ := client.New(srv.APIAddr(), "", caPEM)
	if err := expectStatus(anon.Do(ctx, "GET", "/api/v1/tenants", nil, nil), 401); err != nil {
		return fmt.Errorf("calling without a token: %w", err)
	}
	r.proved("GET /api/v1/tenants without a token → 401")

	if err := r.enroll(ctx, srv, admin, dir, caPEM); err != nil {
		return err
	}
	defer r.ks.Close()
	defer r.agent.Close()
	if err := r.gateway(ctx, srv, admin); err != nil {
		return err
	}
	if err := r.provisioning(ctx, srv, admin, dir, caPEM); err != nil {
		return err
	}
	if err := r.attestation(ctx, srv, admin, dir, caPEM, lab); err != nil {
		return err
	}
	if err := r.ota(ctx, srv, admin, op, dir, caPEM); err != nil {
		return err
	}

	r.say("Verifying the hash-chained audit log")
	var v api.AuditVerification
	if err := admin.Do(ctx, "GET", "/api/v1/audit/verify", nil, &v); err != nil {
		return err
	}
	if !v.OK {
		return fmt.Errorf("audit chain broken at %d: %s", v.BrokenAt, v.Reason)
	}
	var entries []api.AuditEntry
	if err := admin.Do(ctx, "GET", "/api/v1/audit", nil, &entries); err != nil {
		return err
	}
	// Summarise by area: "est ×9 (2 denied)", in order of first appearance.
	type tally struct{ n, denied int }
	counts := map[string]*tally{}
	var order []string
	for _, e := range entries {
		area, _, _ := strings.Cut(e.Action, ".")
		if area == "event" {
			area = "security event"
		}
		if counts[area] == nil {
			counts[area] = &tally{}
			order = append(order, area)
		}
		counts[area].n++
		if e.Result != "ok" {
			counts[area].denied++
		}
	}
	var parts []string
	for _, a := range order {
		p := fmt.Sprintf("%s ×%d", a, counts[a].n)
		if d := counts[a].denied; d > 0 {
			p += fmt.Sprintf(" (%d refused or failed)", d)
		}
		parts = append(parts, p)
	}
	r.proved("chain intact: %d entries, head %s…", v.Entries, v.Head[:16])
	r.proved("recorded: %s (ward audit list shows each)", strings.Join(parts, ", "))

	fmt.Fprintln(out, "\nDemo complete: every step above was checked, not just printed.")
	return nil
}

// enroll takes a simulated device through EST: a one-time token, a key
// made on the device, enrollment, a refused second use of the token, and a
// renewal that rotates the key.
func (r *run) enroll(ctx context.Context, srv *server.Server, admin *client.Client, dir string, caPEM []byte) error {
	r.say("Enrolling device sensor-1 of acme over EST (RFC 7030) with a one-time token")
	var tok api.CreatedToken
	if err := admin.Do(ctx, "POST", "/api/v1/tokens", api.CreateTokenRequest{Kind: "enroll", Tenant: "acme", Device: "sensor-1", TTL: "1h"}, &tok); err != nil {
		return err
	}
	ks, err := keystore.Open("file:" + filepath.Join(dir, "device", "keys"))
	if err != nil {
		return err
	}
	r.ks = ks
	cfg := agent.Config{Server: "https://" + srv.APIAddr(), CABundle: caPEM, Tenant: "acme", Device: "sensor-1",
		Keystore: ks, StateDir: filepath.Join(dir, "device", "state")}
	id, err := agent.Enroll(ctx, cfg, agent.Token(tok.Secret))
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	key1, err := ks.Load(ctx, id.KeyName)
	if err != nil {
		return err
	}
	if !key1.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(id.Certificate.PublicKey) {
		return errors.New("the certificate does not certify the device's key")
	}
	r.proved("certificate %s for %s, valid until %s, certifies the key made on the device (%s keystore)",
		id.Certificate.SerialNumber.Text(16), id.Certificate.URIs[0], id.Certificate.NotAfter.Format("2006-01-02"), ks.Kind())
	// The same token again: refused.
	ks2, err := keystore.Open("file:" + filepath.Join(dir, "attacker", "keys"))
	if err != nil {
		return err
	}
	defer ks2.Close()
	_, err = agent.Enroll(ctx, agent.Config{Server: cfg.Server, CABundle: caPEM, Tenant: "acme", Device: "sensor-1",
		Keystore: ks2, StateDir: filepath.Join(dir, "attacker", "state")}, agent.Token(tok.Secret))
	var se *agent.ServerError
	if !errors.As(err, &se) || se.Status != 401 {
		return fmt.Errorf("a second use of the token was not refused: %v", err)
	}
	r.proved("a second enrollment with the same token → %d: %s", se.Status, se.Message)

	r.say("Renewing sensor-1 over mutual TLS (simplereenroll)")
	a, err := agent.New(agent.Config{Keystore: ks, StateDir: cfg.StateDir})
	if err != nil {
		return err
	}
	r.agent = a
	if err := a.Renew(ctx); err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	id2 := a.Identity()
	if id2.Certificate.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(id.Certificate.PublicKey) {
		return errors.New("renewal kept the old key")
	}
	if _, err := ks.Load(ctx, id.KeyName); err == nil {
		return errors.New("the old key survived the renewal")
	}
	r.proved("new certificate %s with a new key (%s); the old key %s is destroyed", id2.Certificate.SerialNumber.Text(16), id2.KeyName, id.KeyName)
	return nil
}

const demoSchema = `{"type":"object","properties":{"celsius":{"type":"number"},"serial":{"type":"string","x-ward-classification":"confidential"}},"required":["celsius"]}`

// gateway connects the enrolled device over MQTT with mutual TLS, sends
// signed telemetry, shows refusals, changes its twin, then revokes it.
func (r *run) gateway(ctx context.Context, srv *server.Server, admin *client.Client) error {
	r.say("Connecting sensor-1 to the MQTT gateway with its certificate (mutual TLS, client ID = device ID)")
	conn, err := r.agent.ConnectMQTT(ctx, srv.MQTTAddr())
	if err != nil {
		return err
	}
	defer conn.Close()
	r.proved("connected to mqtts://%s; identity comes from the certificate only", srv.MQTTAddr())

	r.say("Publishing signed telemetry (COSE_Sign1 with the device key, schema temp v1)")
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/schemas", api.RegisterSchemaRequest{ID: "temp", Version: 1, Schema: []byte(demoSchema)}, nil); err != nil {
		return err
	}
	if err := conn.PublishTelemetry("env", "temp", 1, []byte(`{"celsius":21.5,"serial":"SN-0042"}`)); err != nil {
		return err
	}
	var rs []api.Reading
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/devices/sensor-1/telemetry", nil, &rs); err != nil {
		return err
	}
	if len(rs) != 1 || strings.Contains(string(rs[0].Payload), "SN-0042") || !rs[0].Confidential {
		return fmt.Errorf("verified reading not stored as expected: %+v", rs)
	}
	var compact bytes.Buffer
	_ = json.Compact(&compact, rs[0].Payload)
	r.proved("verified and stored: seq %d %s (the confidential serial is sealed with acme's data key, never returned)", rs[0].Seq, compact.String())

	env, err := r.agent.SignTelemetry("temp", 1, []byte(`{"celsius":99.9}`))
	if err != nil {
		return err
	}
	tampered := append([]byte(nil), env...)
	tampered[len(tampered)-12] ^= 0x01
	if err := publishOnce(ctx, r.agent, srv, "telemetry/env", tampered); err == nil {
		return errors.New("a tampered reading was accepted")
	}
	r.proved("a reading with one flipped bit → refused (bad_signature)")
	if err := publishOnce(ctx, r.agent, srv, "telemetry/env", env); err != nil {
		return fmt.Errorf("an intact reading was refused: %w", err)
	}
	if err := publishOnce(ctx, r.agent, srv, "telemetry/env", env); err == nil {
		return errors.New("a replayed reading was accepted")
	}
	r.proved("the same signed reading sent twice → the replay is refused")
	for _, topic := range []string{"ward/v1/sensor-2/telemetry/env", "ward/v1/+/telemetry/env", "$SYS/broker/load"} {
		c, err := r.agent.ConnectMQTT(ctx, srv.MQTTAddr())
		if err != nil {
			return err
		}
		err = c.PublishTopic(topic, env, 1)
		c.Close()
		if err == nil {
			return fmt.Errorf("publishing on %s was accepted", topic)
		}
	}
	r.proved("publishing on another device's topic, a wildcard or $SYS → refused by the topic policy")
	srv.Monitor.Flush(ctx)
	var evs []api.SecurityEvent
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/events?device=sensor-1", nil, &evs); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, e := range evs {
		seen[e.Type+":"+e.Reason] = true
		seen[e.Type] = true
	}
	if !seen["policy.denied"] {
		return fmt.Errorf("no policy.denied event (have %v)", seen)
	}
	for _, want := range []string{"telemetry.rejected:bad_signature", "telemetry.rejected:replay"} {
		if !seen[want] {
			return fmt.Errorf("no security event %s (have %v)", want, seen)
		}
	}
	r.proved("security events recorded: telemetry.rejected (bad_signature), telemetry.rejected (replay), policy.denied")

	r.say("Changing sensor-1's twin: desired interval 30 s")
	conn2, err := r.agent.ConnectMQTT(ctx, srv.MQTTAddr())
	if err != nil {
		return err
	}
	defer conn2.Close()
	applied := make(chan string, 1)
	if err := conn2.SyncTwin("", func(delta json.RawMessage) (json.RawMessage, error) {
		select {
		case applied <- string(delta):
		default:
		}
		return delta, nil
	}); err != nil {
		return err
	}
	var tw api.Twin
	if err := admin.DoWithHeaders(ctx, "PATCH", "/api/v1/tenants/acme/devices/sensor-1/twin", json.RawMessage(`{"interval":30}`),
		map[string]string{"If-Match": `"0"`}, &tw); err != nil {
		return err
	}
	select {
	case d := <-applied:
		r.proved("the device received the delta %s and applied it", d)
	case <-time.After(10 * time.Second):
		return errors.New("the twin delta never reached the device")
	}
	err = admin.DoWithHeaders(ctx, "PATCH", "/api/v1/tenants/acme/devices/sensor-1/twin", json.RawMessage(`{"interval":60}`),
		map[string]string{"If-Match": `"0"`}, nil)
	if err := expectStatus(err, 409); err != nil {
		return fmt.Errorf("stale If-Match: %w", err)
	}
	r.proved("a second change with a stale If-Match version → 409 Conflict")

	r.say("Revoking sensor-1's certificate")
	var certs []api.Cert
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/certs?device=sensor-1&status=good", nil, &certs); err != nil {
		return err
	}
	start := time.Now()
	for _, c := range certs {
		if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/certs/"+c.Serial+"/revoke", api.RevokeRequest{Reason: "keyCompromise"}, nil); err != nil {
			return err
		}
	}
	for conn2.Connected() {
		if time.Since(start) > 5*time.Second {
			return errors.New("the revoked device's session was not cut")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.proved("its live session was cut %v after the revocation", time.Since(start).Round(time.Millisecond))
	if c, err := r.agent.ConnectMQTT(ctx, srv.MQTTAddr()); err == nil {
		c.Close()
		return errors.New("the revoked certificate reconnected")
	}
	r.proved("reconnecting with the revoked certificate → refused at the TLS handshake")
	return nil
}

// provisioning shows zero-touch provisioning through two enrollment
// groups: devices with a manufacturer certificate, and devices with a key
// derived from a group key on the factory line.
func (r *run) provisioning(ctx context.Context, srv *server.Server, admin *client.Client, dir string, caPEM []byte) error {
	r.say("Zero-touch provisioning: an x509 group trusting the maker's CA")
	mfrKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Demo Maker CA"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, mfrKey.Public(), mfrKey)
	mfrCA, _ := x509.ParseCertificate(caDER)
	var g api.Group
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/groups", api.CreateGroupRequest{Name: "factory", Mechanism: "x509",
		X509CAPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), IDFrom: "cn",
		Template: provision.Template{Tags: map[string]string{"line": "berlin-2"}, Twin: json.RawMessage(`{"interval":60}`)}}, &g); err != nil {
		return err
	}
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	devTmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "meter-0042"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	devDER, _ := x509.CreateCertificate(rand.Reader, devTmpl, mfrCA, devKey.Public(), mfrKey)
	devCert, _ := x509.ParseCertificate(devDER)
	enroll := func(name, label, device string, cred agent.Credential) (*agent.Identity, error) {
		ks, err := keystore.Open("file:" + filepath.Join(dir, name, "keys"))
		if err != nil {
			return nil, err
		}
		defer ks.Close()
		return agent.Enroll(ctx, agent.Config{Server: "https://" + srv.APIAddr(), CABundle: caPEM, Tenant: "acme", Label: label,
			Device: device, Keystore: ks, StateDir: filepath.Join(dir, name, "state")}, cred)
	}
	id, err := enroll("meter", g.Label, "meter-0042", agent.X509([]*x509.Certificate{devCert}, devKey))
	if err != nil {
		return fmt.Errorf("x509 provisioning: %w", err)
	}
	var dev api.Device
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/devices/meter-0042", nil, &dev); err != nil {
		return err
	}
	var tw api.Twin
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/devices/meter-0042/twin", nil, &tw); err != nil {
		return err
	}
	var twinDoc bytes.Buffer
	_ = json.Compact(&twinDoc, tw.Desired.Doc)
	if dev.Group != "factory" || dev.Tags["line"] != "berlin-2" || twinDoc.String() != `{"interval":60}` {
		return fmt.Errorf("the group template was not applied: %+v %s", dev, twinDoc.String())
	}
	r.proved("meter-0042 authenticated with its maker certificate on EST label %s; registered just in time (group %s, tags %v, twin defaults %s) and issued %s by acme's CA",
		g.Label, dev.Group, dev.Tags, twinDoc.String(), id.Certificate.SerialNumber.Text(16))
	_, err = enroll("meter-clone", g.Label, "meter-0042", agent.X509([]*x509.Certificate{devCert}, devKey))
	var se *agent.ServerError
	if !errors.As(err, &se) || se.Status != 403 {
		return fmt.Errorf("a second onboarding was not refused: %v", err)
	}
	srv.Monitor.Flush(ctx)
	var evs []api.SecurityEvent
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/events?type=provision.second_onboarding", nil, &evs); err != nil {
		return err
	}
	if len(evs) != 1 || evs[0].Device != "meter-0042" {
		return fmt.Errorf("no second-onboarding event: %+v", evs)
	}
	r.proved("the same maker certificate onboarding again (a clone) → %d, and a %s security event (severity %s)", se.Status, evs[0].Type, evs[0].Severity)
	if err := mqttRefused(ctx, srv, caPEM, devCert, devKey); err != nil {
		return err
	}
	r.proved("the maker certificate cannot open an MQTT session: bootstrap credentials only enroll")

	r.say("Zero-touch provisioning: a symmetric-key group (device key = HMAC-SHA256(group key, device ID))")
	var sg api.Group
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/groups", api.CreateGroupRequest{Name: "sensors", Mechanism: "symmetric"}, &sg); err != nil {
		return err
	}
	var dk api.SecretResponse
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/groups/sensors/device-keys", api.DeviceRequest{Device: "th-7"}, &dk); err != nil {
		return err
	}
	key, err := base64.StdEncoding.DecodeString(dk.Secret)
	if err != nil {
		return err
	}
	if _, err := enroll("th-7", sg.Label, "th-7", agent.Symmetric(key)); err != nil {
		return fmt.Errorf("symmetric provisioning: %w", err)
	}
	r.proved("th-7 proved its derived key with a short-lived, single-use MAC'd token; the server keeps the group key sealed by acme's data key")
	wrong := append([]byte(nil), key...)
	wrong[0] ^= 1
	if _, err := enroll("th-8", sg.Label, "th-8", agent.Symmetric(wrong)); err == nil {
		return errors.New("a wrong symmetric key enrolled")
	}
	var certs []api.Cert
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/certs?device=th-8", nil, &certs); err != nil || len(certs) != 0 {
		return fmt.Errorf("a refused device got a certificate: %v %v", certs, err)
	}
	r.proved("a device with a wrong key → refused, no certificate")
	return nil
}

// mqttRefused checks that a certificate cannot complete a TLS session with
// the gateway.
func mqttRefused(ctx context.Context, srv *server.Server, caPEM []byte, cert *x509.Certificate, key crypto.Signer) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.Dial("tcp", srv.MQTTAddr(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key}}})
	if err == nil {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		return errors.New("a manufacturer certificate opened an MQTT session")
	}
	return nil
}

// publishOnce publishes on a fresh session (a refused QoS 1 publish ends
// an MQTT 3.1.1 session) and reports whether the gateway accepted it.
func publishOnce(ctx context.Context, a *agent.Agent, srv *server.Server, suffix string, payload []byte) error {
	c, err := a.ConnectMQTT(ctx, srv.MQTTAddr())
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Publish(suffix, payload, 1)
}

func expectStatus(err error, status int) error {
	var p *client.Problem
	if errors.As(err, &p) && p.Status == status {
		return nil
	}
	if err == nil {
		return fmt.Errorf("succeeded, want HTTP %d", status)
	}
	return fmt.Errorf("got %v, want HTTP %d", err, status)
}

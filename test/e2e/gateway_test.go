package e2e

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/wire"
)

// enrolled is a device enrolled with the real ward-agent: its certificate
// chain and key as files mosquitto can use.
type enrolled struct {
	device, cert, key string
}

func enrollDevice(t *testing.T, p *proc, w func(...string) string, tenantID, device string) enrolled {
	t.Helper()
	work := t.TempDir()
	tok := strings.TrimSpace(w("token", "create", "--enroll", "--tenant", tenantID, "--device", device, "--ttl", "1h"))
	state := filepath.Join(work, "state")
	keys := filepath.Join(work, "keys")
	if _, errs, code := agent(t, []string{"WARD_ENROLL_TOKEN=" + tok}, "enroll", "--server", "https://"+p.apiAddr,
		"--ca", filepath.Join(p.dir, "ca.pem"), "--tenant", tenantID, "--device", device, "--keystore", "file:"+keys, "--state", state); code != 0 {
		t.Fatalf("enroll %s: %s", device, errs)
	}
	b, _ := os.ReadFile(filepath.Join(state, "identity.json"))
	var id struct {
		Certificate string `json:"certificate"`
		Key         string `json:"key"`
	}
	json.Unmarshal(b, &id)
	cert := filepath.Join(work, "cert.pem")
	os.WriteFile(cert, []byte(id.Certificate), 0o600)
	return enrolled{device: device, cert: cert, key: filepath.Join(keys, id.Key+".pem")}
}

// signedReading writes a telemetry envelope signed with the device's key
// file and returns its path.
func signedReading(t *testing.T, d enrolled, seq uint64, payload string) string {
	t.Helper()
	keyPEM, err := os.ReadFile(d.key)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(keyPEM)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := os.ReadFile(d.cert)
	cb, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	env, err := wire.SignTelemetry(k.(crypto.Signer), wire.Header{Device: d.device, Seq: seq, Time: time.Now(), SchemaID: "temp",
		SchemaVersion: 1, KeyID: wire.TelemetryKeyID(cert.RawSubjectPublicKeyInfo)}, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "reading.cose")
	os.WriteFile(path, env, 0o600)
	return path
}

func mqttArgs(p *proc, d enrolled, version string) []string {
	host, port, _ := strings.Cut(p.mqttAddr, ":")
	return []string{"-h", host, "-p", port, "--cafile", filepath.Join(p.dir, "ca.pem"), "--cert", d.cert, "--key", d.key,
		"-i", d.device, "-V", version}
}

// TestGatewayWithMosquittoClients: mosquitto_pub and mosquitto_sub, which
// no one here wrote, connect to a real ward server with certificates the
// real ward-agent enrolled: own topics work (MQTT 3.1.1 and 5), another
// device's and another tenant's topics are refused, a certificate from an
// unknown CA cannot connect, and a revoked certificate is cut off mid-
// session and cannot reconnect.
func TestGatewayWithMosquittoClients(t *testing.T) {
	pub := requirePeer(t, "mosquitto_pub", "mosquitto-clients")
	sub := requirePeer(t, "mosquitto_sub", "mosquitto-clients")
	openssl := requirePeer(t, "openssl", "openssl")
	dir := t.TempDir()
	p := startServer(t, dir)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")
	w("tenant", "create", "globex")
	d1 := enrollDevice(t, p, w, "acme", "d1")
	g1 := enrollDevice(t, p, w, "globex", "g1")
	schema := filepath.Join(t.TempDir(), "temp.json")
	os.WriteFile(schema, []byte(`{"type":"object","properties":{"celsius":{"type":"number"}},"required":["celsius"]}`), 0o644)
	w("schema", "register", "--tenant", "acme", "--file", schema, "--id", "temp", "--version", "1")
	seq := uint64(0)

	for _, v := range []string{"mqttv311", "mqttv5"} {
		t.Run("own-topic/"+v, func(t *testing.T) {
			// The payload is a COSE_Sign1 envelope signed with the device's
			// key file; mosquitto_pub only carries the bytes.
			seq++
			env := signedReading(t, d1, seq, `{"celsius":21.5}`)
			if out, err := run(t, pub, append(mqttArgs(p, d1, v), "-t", "ward/v1/d1/telemetry/temp", "-f", env, "-q", "1")...); err != nil {
				t.Fatalf("publish on own topic: %v %s", err, out)
			}
		})
		t.Run("foreign-topic/"+v, func(t *testing.T) {
			out, err := run(t, pub, append(mqttArgs(p, d1, v), "-t", "ward/v1/d2/telemetry/temp", "-m", "x", "-q", "1")...)
			if err == nil && !strings.Contains(out, "Not authorized") {
				t.Fatalf("publish on another device's topic was not refused: %s", out)
			}
		})
		t.Run("subscribe-other-tenant/"+v, func(t *testing.T) {
			// g1 lives in globex; d1's topics are in acme's namespace,
			// and g1 cannot even name them.
			out, _ := run(t, sub, append(mqttArgs(p, g1, v), "-t", "ward/v1/d1/#", "-C", "1", "-W", "2")...)
			t.Logf("mosquitto_sub: %s", strings.TrimSpace(out))
			if !strings.Contains(strings.ToLower(out), "denied") {
				t.Fatalf("cross-tenant subscription: %s", out)
			}
		})
	}

	t.Run("unknown-ca", func(t *testing.T) {
		work := t.TempDir()
		in := func(n string) string { return filepath.Join(work, n) }
		mustRun(t, openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", in("ca.key"),
			"-out", in("ca.pem"), "-subj", "/CN=rogue CA", "-days", "1")
		mustRun(t, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", in("d.key"),
			"-out", in("d.csr"), "-subj", "/CN=d1")
		os.WriteFile(in("ext"), []byte("subjectAltName=URI:urn:ward:acme:device:d1\nextendedKeyUsage=clientAuth\n"), 0o644)
		mustRun(t, openssl, "x509", "-req", "-in", in("d.csr"), "-CA", in("ca.pem"), "-CAkey", in("ca.key"), "-CAcreateserial",
			"-out", in("d.pem"), "-days", "1", "-extfile", in("ext"))
		rogue := enrolled{device: "d1", cert: in("d.pem"), key: in("d.key")}
		if out, err := run(t, pub, append(mqttArgs(p, rogue, "mqttv5"), "-t", "ward/v1/d1/telemetry/t", "-m", "x", "-q", "1")...); err == nil {
			t.Fatalf("a certificate from an unknown CA connected: %s", out)
		}
	})

	t.Run("revoked-mid-session", func(t *testing.T) {
		cmd := exec.Command(sub, append(mqttArgs(p, d1, "mqttv5"), "-t", "ward/v1/d1/#")...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		time.Sleep(500 * time.Millisecond) // let it connect; the cut is what we time
		select {
		case err := <-done:
			t.Fatalf("mosquitto_sub exited before the revocation: %v", err)
		default:
		}
		certs := w("cert", "list", "--tenant", "acme", "--device", "d1", "-o", "json")
		var cs []struct{ Serial string }
		json.Unmarshal([]byte(certs), &cs)
		start := time.Now()
		w("cert", "revoke", cs[0].Serial, "--tenant", "acme", "--reason", "keyCompromise")
		select {
		case <-done:
			t.Logf("session cut %v after the revoke command returned", time.Since(start))
			if time.Since(start) > time.Second {
				t.Fatalf("cut took %v, want < 1 s", time.Since(start))
			}
		case <-time.After(2 * time.Second):
			cmd.Process.Kill()
			t.Fatal("the session of a revoked certificate was not cut")
		}
		if out, err := run(t, pub, append(mqttArgs(p, d1, "mqttv5"), "-t", "ward/v1/d1/telemetry/t", "-m", "x", "-q", "1")...); err == nil {
			t.Fatalf("a revoked certificate reconnected: %s", out)
		}
	})
	readings := w("device", "telemetry", "d1", "--tenant", "acme", "-o", "json")
	if strings.Count(readings, `"seq"`) != 2 {
		t.Errorf("the two readings mosquitto_pub carried were not both verified and stored: %s", readings)
	}
	events := w("event", "list", "--tenant", "acme")
	if !strings.Contains(events, "policy.denied") {
		t.Errorf("no policy.denied event recorded:\n%s", events)
	}
}

// TestQuarantineWithMosquittoClients: a quarantined device, connecting with
// mosquitto_pub/mosquitto_sub and its own certificate, reaches only the
// attestation and OTA topics; enabling it again restores its own subtree.
func TestQuarantineWithMosquittoClients(t *testing.T) {
	pub := requirePeer(t, "mosquitto_pub", "mosquitto-clients")
	sub := requirePeer(t, "mosquitto_sub", "mosquitto-clients")
	dir := t.TempDir()
	p := startServer(t, dir)
	w := wardCLI(t, dir)
	w("tenant", "create", "acme")
	d := enrollDevice(t, p, w, "acme", "q1")
	schema := filepath.Join(t.TempDir(), "temp.json")
	os.WriteFile(schema, []byte(`{"type":"object","properties":{"celsius":{"type":"number"}},"required":["celsius"]}`), 0o644)
	w("schema", "register", "--tenant", "acme", "--file", schema, "--id", "temp", "--version", "1")
	w("device", "quarantine", "q1", "--tenant", "acme", "--reason", "attestation failed")

	out, _ := run(t, sub, append(mqttArgs(p, d, "mqttv5"), "-t", "ward/v1/q1/ota/job", "-W", "1")...)
	if strings.Contains(strings.ToLower(out), "denied") {
		t.Fatalf("a quarantined device may not subscribe to its OTA jobs: %s", out)
	}
	out, _ = run(t, sub, append(mqttArgs(p, d, "mqttv5"), "-t", "ward/v1/q1/twin/#", "-W", "1")...)
	if !strings.Contains(strings.ToLower(out), "denied") {
		t.Fatalf("a quarantined device subscribed to its twin: %s", out)
	}
	env := signedReading(t, d, 1, `{"celsius":1}`)
	out, err := run(t, pub, append(mqttArgs(p, d, "mqttv5"), "-t", "ward/v1/q1/telemetry/temp", "-f", env, "-q", "1")...)
	if err == nil && !strings.Contains(out, "Not authorized") {
		t.Fatalf("a quarantined device published telemetry: %s", out)
	}
	out, _ = run(t, pub, append(mqttArgs(p, d, "mqttv5"), "-t", "ward/v1/q1/attest/reply", "-m", "{}", "-q", "1")...)
	if strings.Contains(out, "Not authorized") {
		t.Fatalf("a quarantined device may not reach the attestation topic: %s", out)
	}
	w("device", "enable", "q1", "--tenant", "acme")
	env = signedReading(t, d, 2, `{"celsius":2}`)
	if out, err := run(t, pub, append(mqttArgs(p, d, "mqttv5"), "-t", "ward/v1/q1/telemetry/temp", "-f", env, "-q", "1")...); err != nil || strings.Contains(out, "Not authorized") {
		t.Fatalf("an enabled device could not publish telemetry: %v %s", err, out)
	}
}

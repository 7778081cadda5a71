package broker

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// needTool skips when an external peer is missing, unless CI is set.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI (apt-get install mosquitto-clients): %v", name, err)
		}
		t.Skipf("%s not installed (apt-get install mosquitto-clients)", name)
	}
	return p
}

type mosqResult struct {
	out  string
	err  error
	exit int
}

func mosqArgs(h *harness, c *testCert, clientID, version string) []string {
	return []string{"-h", "127.0.0.1", "-p", h.port, "--cafile", h.pki.serverCAFile,
		"--cert", c.certFile, "--key", c.keyFile, "-i", clientID, "-V", version}
}

// mosquittoPub runs mosquitto_pub to completion.
func mosquittoPub(t *testing.T, h *harness, c *testCert, clientID, version string, extra ...string) mosqResult {
	t.Helper()
	bin := needTool(t, "mosquitto_pub")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(mosqArgs(h, c, clientID, version), extra...)...)
	out, err := cmd.CombinedOutput()
	return mosqResult{out: string(out), err: err, exit: cmd.ProcessState.ExitCode()}
}

// mosquittoSub starts mosquitto_sub for one message; wait returns its output.
func mosquittoSub(t *testing.T, h *harness, c *testCert, clientID, version, filter string) (done <-chan mosqResult) {
	t.Helper()
	bin := needTool(t, "mosquitto_sub")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	args := append(mosqArgs(h, c, clientID, version), "-t", filter, "-q", "1", "-C", "1", "-v")
	cmd := exec.CommandContext(ctx, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	ch := make(chan mosqResult, 1)
	go func() {
		err := cmd.Wait()
		cancel()
		ch <- mosqResult{out: out.String(), err: err, exit: cmd.ProcessState.ExitCode()}
	}()
	t.Cleanup(func() { cancel() })
	return ch
}

// pushUntil publishes from Ward to the device until the subscriber exits,
// since there is no signal for "mosquitto_sub has subscribed".
func pushUntil(t *testing.T, h *harness, tenant, device, suffix, payload string, done <-chan mosqResult) mosqResult {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			return r
		case <-tick.C:
			_ = h.b.Publish(tenant, device, suffix, []byte(payload), 1)
		}
	}
}

func TestMosquittoOwnTopics(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	d1 := pki.device(t, "acme", "d1")
	for _, version := range []string{"mqttv311", "mqttv5"} {
		t.Run(version, func(t *testing.T) {
			payload := "temp-" + version
			r := mosquittoPub(t, h, d1, "d1", version, "-t", "ward/v1/d1/telemetry/temp", "-q", "1", "-m", payload)
			if r.err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", r.err, r.out)
			}
			waitFor(t, "ingest of "+payload, 5*time.Second, func() bool {
				for _, d := range h.ingest.all() {
					if d.payload == payload && d.topic == "ward/v1/d1/telemetry/temp" && d.id.Tenant == "acme" && d.qos == 1 {
						return true
					}
				}
				return false
			})

			done := mosquittoSub(t, h, d1, "d1", version, "ward/v1/d1/#")
			r = pushUntil(t, h, "acme", "d1", "twin/delta", `{"desired":{"rate":5}}`, done)
			if r.err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", r.err, r.out)
			}
			if want := `ward/v1/d1/twin/delta {"desired":{"rate":5}}`; strings.TrimSpace(r.out) != want {
				t.Fatalf("mosquitto_sub got %q, want %q", r.out, want)
			}
		})
	}
}

func TestMosquittoOtherDeviceTopicRefused(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	d1 := pki.device(t, "acme", "d1")
	for _, version := range []string{"mqttv311", "mqttv5"} {
		t.Run(version, func(t *testing.T) {
			r := mosquittoPub(t, h, d1, "d1", version, "-t", "ward/v1/d2/telemetry/temp", "-q", "1", "-m", "spoof")
			// MQTT 5 says no with PUBACK 0x87, which mosquitto_pub reports
			// and exits 0; MQTT 3.1.1 has no refusal, so the gateway cuts
			// the session and mosquitto_pub fails.
			refused := r.err != nil
			if version == "mqttv5" {
				refused = strings.Contains(r.out, "Not authorized")
			}
			if !refused {
				t.Fatalf("mosquitto_pub to another device's topic succeeded (err %v):\n%s", r.err, r.out)
			}
			h.events.wait(t, EventPolicyDenied, "publish to ward/v1/d2/telemetry/temp")
			// Another device's subtree cannot be subscribed to either.
			r = mosquittoPubSubRefused(t, h, d1, version, "ward/v1/d2/#")
			for _, d := range h.ingest.all() {
				if d.payload == "spoof" {
					t.Fatalf("refused publish reached ingest: %+v", d)
				}
			}
		})
	}
}

// mosquittoPubSubRefused subscribes with mosquitto_sub -E (exit once the
// SUBACK arrives) and waits for the gateway's refusal event.
func mosquittoPubSubRefused(t *testing.T, h *harness, c *testCert, version, filter string) mosqResult {
	t.Helper()
	bin := needTool(t, "mosquitto_sub")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	args := append(mosqArgs(h, c, "d1", version), "-t", filter, "-E")
	cmd := exec.CommandContext(ctx, bin, args...)
	out, err := cmd.CombinedOutput()
	h.events.wait(t, EventPolicyDenied, "subscribe to "+filter)
	return mosqResult{out: string(out), err: err}
}

func TestMosquittoRevokedRefused(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	d1 := pki.device(t, "acme", "d1")
	h.gate.revoke(d1)
	for _, version := range []string{"mqttv311", "mqttv5"} {
		r := mosquittoPub(t, h, d1, "d1", version, "-t", "ward/v1/d1/telemetry/temp", "-q", "1", "-m", "after-revoke")
		if r.err == nil {
			t.Fatalf("%s: revoked certificate connected:\n%s", version, r.out)
		}
	}
	ev := h.events.wait(t, EventHandshakeFailed, ReasonRevoked)
	if ev.Tenant != "acme" || ev.Device != "d1" {
		t.Fatalf("revocation event names %s/%s", ev.Tenant, ev.Device)
	}
	if n := len(h.ingest.all()); n != 0 {
		t.Fatalf("ingest got %d messages from a revoked device", n)
	}
}

func TestMosquittoUnknownCARefused(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	rogue := pki.unknown.issue(t, "d1", leafOpts{uris: []string{"urn:ward:acme:device:d1"}})
	r := mosquittoPub(t, h, rogue, "d1", "mqttv311", "-t", "ward/v1/d1/telemetry/temp", "-m", "x")
	if r.err == nil {
		t.Fatalf("certificate from an unknown CA connected:\n%s", r.out)
	}
	ev := h.events.wait(t, EventHandshakeFailed, ReasonUnknownCA)
	if ev.Tenant != "" || ev.Device != "" {
		t.Fatalf("event attributes an unverified certificate to %s/%s", ev.Tenant, ev.Device)
	}
	if n := len(h.ingest.all()); n != 0 {
		t.Fatalf("ingest got %d messages", n)
	}
}

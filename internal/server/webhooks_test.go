package server_test

import (
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/telemetry"
)

// TestTelemetryWebhook: verified telemetry of a tenant reaches its HTTPS
// webhook with a body signature the receiver can check; other tenants'
// does not.
func TestTelemetryWebhook(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	got := make(chan []byte, 4)
	recv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := telemetry.VerifyWebhook(secret, body, r.Header.Get(telemetry.WebhookSignatureHeader), time.Now(), time.Minute); err != nil {
			http.Error(w, err.Error(), 401)
			return
		}
		got <- body
	}))
	defer recv.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "secret"), secret, 0o600)
	os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: recv.Certificate().Raw}), 0o644)
	e := newESTEnvCfg(t, func(c *config.Config) {
		c.TelemetryWebhooks = []config.Webhook{{Tenant: "acme", URL: recv.URL + "/ward", SecretFile: filepath.Join(dir, "secret"), CAFile: filepath.Join(dir, "ca.pem")}}
	})
	if err := e.srv.RegisterSchema(ctx, "test", "acme", "temp", 1, []byte(tempSchema)); err != nil {
		t.Fatal(err)
	}
	a := e.enrollAgent(t, "hooked-1")
	conn, err := a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.PublishTelemetry("env", "temp", 1, []byte(`{"celsius":19.5,"serial":"SN-1"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !strings.Contains(string(b), `"hooked-1"`) || !strings.Contains(string(b), "19.5") || strings.Contains(string(b), "SN-1") {
			t.Fatalf("webhook body %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the webhook never received the verified reading")
	}
}

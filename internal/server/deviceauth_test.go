package server_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent/httpauth"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// TestHTTPDeviceTokens: a device that does not speak MQTT gets an access
// token with a private_key_jwt assertion signed by its certificate key,
// posts signed telemetry over HTTPS, and a reused refresh token revokes
// the whole token family with a security event.
func TestHTTPDeviceTokens(t *testing.T) {
	e := newESTEnv(t)
	if err := e.srv.RegisterSchema(ctx, "test", "acme", "temp", 1, []byte(tempSchema)); err != nil {
		t.Fatal(err)
	}
	a := e.enrollAgent(t, "http-1")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool}}}
	base := "https://" + e.srv.APIAddr()
	c, err := httpauth.New(httpauth.Config{BaseURL: base, Tenant: "acme", Device: "http-1", Signer: a.Signer(), HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	env, err := a.SignTelemetry("temp", 1, []byte(`{"celsius":18.25}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PostTelemetry(ctx, "env", env); err != nil {
		t.Fatal(err)
	}
	e.srv.FlushTelemetry(ctx)
	if rs, _ := e.srv.Store().RecentReadings(ctx, "acme", "http-1", 10); len(rs) != 1 {
		t.Fatalf("%d readings stored", len(rs))
	}
	if err := c.PostTelemetry(ctx, "env", env); err == nil {
		t.Fatal("a replayed envelope over HTTPS was accepted")
	}

	// Refresh-token reuse, by hand.
	token := func(form url.Values) (int, map[string]any) {
		resp, err := hc.PostForm(base+wire.TokenPath, form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	assertion, err := httpauth.SignAssertion(a.Signer(), wire.DeviceClientID("acme", "http-1"), base+wire.TokenPath, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	code, m := token(url.Values{"grant_type": {wire.GrantClientCredentials}, "client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {assertion}})
	if code != 200 {
		t.Fatalf("client credentials: %d %v", code, m)
	}
	rt1, _ := m["refresh_token"].(string)
	code, m = token(url.Values{"grant_type": {wire.GrantRefreshToken}, "refresh_token": {rt1}})
	if code != 200 {
		t.Fatalf("refresh: %d %v", code, m)
	}
	access2, _ := m["access_token"].(string)
	if code, _ = token(url.Values{"grant_type": {wire.GrantRefreshToken}, "refresh_token": {rt1}}); code == 200 {
		t.Fatal("a used refresh token was accepted again")
	}
	req, _ := http.NewRequest("POST", base+wire.DeviceTelemetryPrefix+"env", strings.NewReader("x"))
	req.Header.Set("Authorization", "Bearer "+access2)
	req.Header.Set("Content-Type", wire.ContentTypeCOSE)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("an access token of the revoked family still works: %d", resp.StatusCode)
	}
	e.srv.Monitor.Flush(ctx)
	evs, _ := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "device_token"})
	found := false
	for _, ev := range evs {
		found = found || ev.Reason == "device_token.refresh_reuse"
	}
	if !found {
		t.Fatalf("no refresh-reuse event: %+v", evs)
	}
}

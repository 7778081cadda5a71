package telemetry

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func verifiedMessage(t *testing.T) *Message {
	t.Helper()
	f := newFixture(t)
	m, err := f.verify(f.sign(f.header(), `{"temp":21.5,"owner":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	m.Device = "dev.1" // exercise subject escaping
	return m
}

type recordingSink struct {
	mu  sync.Mutex
	got []*Message
	err error
}

func (r *recordingSink) Write(_ context.Context, m *Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, m)
	return r.err
}

func TestFanOutDeliversToAllDespiteFailure(t *testing.T) {
	a, b, c := &recordingSink{}, &recordingSink{err: errors.New("down")}, &recordingSink{}
	m := verifiedMessage(t)
	err := FanOut{a, b, c}.Write(context.Background(), m)
	if err == nil || !strings.Contains(err.Error(), "sink 1: down") {
		t.Fatalf("error %v", err)
	}
	for i, s := range []*recordingSink{a, b, c} {
		if len(s.got) != 1 || s.got[0] != m {
			t.Fatalf("sink %d got %d messages", i, len(s.got))
		}
	}
}

func TestWebhookSinkOverTLS(t *testing.T) {
	secret := []byte("0123456789abcdef-webhook")
	now := time.Unix(1_800_000_000, 0)
	type delivery struct {
		body   []byte
		header http.Header
	}
	got := make(chan delivery, 4)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- delivery{b, r.Header.Clone()}
		if r.URL.Path == "/fail" {
			http.Error(w, "no", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	tlsConf := &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	s, err := NewWebhookSink(srv.URL+"/hook", secret, WebhookOptions{TLS: tlsConf, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	m := verifiedMessage(t)
	if err := s.Write(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	d := <-got
	if err := VerifyWebhook(secret, d.body, d.header.Get(WebhookSignatureHeader), now, time.Minute); err != nil {
		t.Fatalf("signature: %v", err)
	}
	if err := VerifyWebhook(secret, append(d.body, ' '), d.header.Get(WebhookSignatureHeader), now, time.Minute); err == nil {
		t.Fatal("signature verifies a modified body")
	}
	if err := VerifyWebhook(secret, d.body, d.header.Get(WebhookSignatureHeader), now.Add(time.Hour), time.Minute); err == nil {
		t.Fatal("stale signature accepted")
	}
	var rec Record
	if err := json.Unmarshal(d.body, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Tenant != "acme" || rec.Seq != m.Seq || string(rec.Payload) != `{"temp":21.5}` {
		t.Fatalf("record %+v", rec)
	}
	if d.header.Get("Idempotency-Key") != "acme/dev.1/1" {
		t.Fatalf("idempotency key %q", d.header.Get("Idempotency-Key"))
	}

	fail, _ := NewWebhookSink(srv.URL+"/fail", secret, WebhookOptions{TLS: tlsConf})
	if err := fail.Write(context.Background(), m); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("5xx not reported: %v", err)
	}
	<-got
	// Without the test CA the TLS handshake must fail: no silent downgrade.
	untrusted, _ := NewWebhookSink(srv.URL+"/hook?token=secret-token", secret, WebhookOptions{})
	err = untrusted.Write(context.Background(), m)
	if err == nil {
		t.Fatal("delivered to an untrusted server")
	}
	if strings.Contains(err.Error(), "secret-token") {
		t.Fatalf("error leaks the URL query: %v", err)
	}
	if _, err := NewWebhookSink("http://example.com/x", secret, WebhookOptions{}); err == nil {
		t.Fatal("plain http accepted")
	}
}

func TestWebhookSinkTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	tlsConf := &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	s, _ := NewWebhookSink(srv.URL, []byte("0123456789abcdef"), WebhookOptions{TLS: tlsConf, Timeout: 50 * time.Millisecond})
	if err := s.Write(context.Background(), verifiedMessage(t)); err == nil {
		t.Fatal("hung receiver did not time out")
	}
}

// TestJetStreamSink publishes to a real NATS server with JetStream, named
// by WARD_TEST_NATS (.ci/run sets it).
func TestJetStreamSink(t *testing.T) {
	url := os.Getenv("WARD_TEST_NATS")
	if url == "" {
		t.Skip("WARD_TEST_NATS is empty: set it to a NATS URL with JetStream enabled (e.g. nats-server -js -a 127.0.0.1 -p <port>)")
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	prefix := "wardtest" + strings.ReplaceAll(t.Name()+time.Now().Format("150405.000000"), ".", "")
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: prefix, Subjects: []string{prefix + ".>"}, Storage: jetstream.MemoryStorage, Duplicates: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer js.DeleteStream(context.Background(), prefix)

	s := NewJetStreamSink(js, WithSubjectPrefix(prefix))
	m := verifiedMessage(t)
	for i := 0; i < 3; i++ { // retries of the same message
		if err := s.Write(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1 after de-duplication", info.State.Msgs)
	}
	raw, err := st.GetLastMsgForSubject(ctx, prefix+".>")
	if err != nil {
		t.Fatal(err)
	}
	if want := prefix + ".acme.dev%2E1.env"; raw.Subject != want {
		t.Fatalf("subject %q, want %q", raw.Subject, want)
	}
	if raw.Header.Get(jetstream.MsgIDHeader) != "acme/dev.1/1" || raw.Header.Get("Ward-Schema") != "env/1" {
		t.Fatalf("headers %v", raw.Header)
	}
	var rec Record
	if err := json.Unmarshal(raw.Data, &rec); err != nil {
		t.Fatal(err)
	}
	if string(rec.Payload) != `{"temp":21.5}` {
		t.Fatalf("payload %s: confidential field not redacted", rec.Payload)
	}
}

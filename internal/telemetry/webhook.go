package telemetry

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	// DefaultWebhookTimeout bounds one delivery so a slow receiver cannot
	// hold ingest workers.
	DefaultWebhookTimeout = 10 * time.Second
	// maxWebhookResponse bounds how much of a response is read (and then
	// discarded) so the connection can be reused.
	maxWebhookResponse = 4 << 10
	// WebhookSignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256
	// of "<t>.<body>">". The timestamp lets receivers refuse replays.
	WebhookSignatureHeader = "Ward-Signature"
	// minWebhookSecret: shorter secrets could be brute-forced from one
	// signed request.
	minWebhookSecret = 16
)

// WebhookOptions configure a [WebhookSink].
type WebhookOptions struct {
	// TLS configures the client, e.g. RootCAs for a private receiver.
	TLS                 *tls.Config
	Timeout             time.Duration
	Clock               func() time.Time
	IncludeConfidential bool
}

// WebhookSink POSTs each verified message as a JSON [Record] to an HTTPS
// URL, signed with HMAC-SHA256 in [WebhookSignatureHeader].
type WebhookSink struct {
	url    string
	secret []byte
	client *http.Client
	opts   WebhookOptions
}

// NewWebhookSink returns a sink for an https:// URL.
func NewWebhookSink(rawURL string, secret []byte, opts WebhookOptions) (*WebhookSink, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, errors.New("webhook URL must be an absolute https:// URL")
	}
	if len(secret) < minWebhookSecret {
		return nil, fmt.Errorf("webhook secret must be at least %d bytes", minWebhookSecret)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultWebhookTimeout
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	tr := &http.Transport{TLSClientConfig: opts.TLS, ForceAttemptHTTP2: true}
	if opts.TLS != nil {
		tr.TLSClientConfig = opts.TLS.Clone()
	}
	return &WebhookSink{
		url:    u.String(),
		secret: bytes.Clone(secret),
		opts:   opts,
		client: &http.Client{
			Transport: tr,
			Timeout:   opts.Timeout,
			// A redirect could send signed telemetry to another host.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// SignWebhook returns the signature header value for body at time t.
func SignWebhook(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(webhookMAC(secret, ts, body))
}

func webhookMAC(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// VerifyWebhook checks a signature header for receivers written in Go: the
// MAC must match and the timestamp lie within tolerance of now.
func VerifyWebhook(secret, body []byte, header string, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("webhook signature has no timestamp")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || -d > tolerance {
		return errors.New("webhook signature timestamp outside tolerance")
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, webhookMAC(secret, ts, body)) {
		return errors.New("webhook signature does not match")
	}
	return nil
}

// Write implements [Sink]. Any status other than 2xx is an error.
func (s *WebhookSink) Write(ctx context.Context, m *Message) error {
	body, err := recordOf(m, s.opts.IncludeConfidential)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(WebhookSignatureHeader, SignWebhook(s.secret, body, s.opts.Clock()))
	req.Header.Set("Idempotency-Key", MsgID(m))
	resp, err := s.client.Do(req)
	if err != nil {
		// url.Error repeats the URL, which may hold a token in its query.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("webhook delivery: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxWebhookResponse))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook receiver answered %s", resp.Status)
	}
	return nil
}

var _ Sink = (*WebhookSink)(nil)

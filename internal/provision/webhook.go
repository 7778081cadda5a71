package provision

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Webhook protocol. The server POSTs a WebhookRequest as JSON to the
// group's https URL with two headers:
//
//	Ward-Webhook-Timestamp: <Unix seconds>
//	Ward-Webhook-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//
// The hook authenticates the call with VerifyWebhook and answers 2xx with
// a WebhookResponse as JSON. Anything else (no answer within the timeout,
// a non-2xx status, a body that does not parse, "allow" missing) denies
// the enrollment: a hook that is down must fail closed.
const (
	HeaderWebhookTimestamp = "Ward-Webhook-Timestamp"
	HeaderWebhookSignature = "Ward-Webhook-Signature"
)

// Webhook limits.
const (
	// DefaultWebhookTimeout bounds a webhook call. The device waits on
	// its EST request meanwhile; 5 s is long for a decision service and
	// short enough for an HTTP client's patience.
	DefaultWebhookTimeout = 5 * time.Second
	// MaxWebhookResponseSize bounds a hook's answer (template overrides
	// with twin defaults up to MaxTwinSize, plus room).
	MaxWebhookResponseSize = 64 << 10
	// MaxWebhookSkew is how far a request's timestamp may be from the
	// hook's clock in VerifyWebhook: it bounds replay of a captured call
	// while tolerating unsynchronised clocks.
	MaxWebhookSkew = 5 * time.Minute
	// WebhookSecretSize is the size of secrets made by NewWebhookSecret.
	WebhookSecretSize = 32
)

// WebhookTemplate is a template on the webhook wire; in a response, each
// field present overrides the group's.
type WebhookTemplate struct {
	Policy          *string            `json:"policy,omitempty"`
	Tags            *map[string]string `json:"tags,omitempty"`
	Twin            json.RawMessage    `json:"twin,omitempty"`
	Profile         *string            `json:"profile,omitempty"`
	LifetimeSeconds *int64             `json:"lifetime_seconds,omitempty"`
}

// WebhookRequest is the body the server sends.
type WebhookRequest struct {
	Version     int             `json:"version"` // 1
	ID          string          `json:"id"`      // unique per call, for the hook's logs and replay cache
	Time        time.Time       `json:"time"`
	Tenant      string          `json:"tenant"`
	Group       string          `json:"group"`
	DeviceID    string          `json:"device_id"`
	Mechanism   Mechanism       `json:"mechanism"`
	RemoteAddr  string          `json:"remote_addr,omitempty"`
	Reprovision bool            `json:"reprovision"`
	Template    WebhookTemplate `json:"template"`
}

// WebhookResponse is the hook's answer.
type WebhookResponse struct {
	// Allow must be present; false denies.
	Allow *bool `json:"allow"`
	// Reason is recorded in the audit log on denial (not sent to the
	// device).
	Reason string `json:"reason,omitempty"`
	// Template overrides fields of the group's template.
	Template *WebhookTemplate `json:"template,omitempty"`
}

// ErrWebhookSignature is returned by VerifyWebhook for any bad call.
var ErrWebhookSignature = errors.New("webhook signature invalid or stale")

// NewWebhookSecret returns a random secret for a group's webhook; seal it
// with WebhookSecretAAD before storing it.
func NewWebhookSecret() []byte {
	b := make([]byte, WebhookSecretSize)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

func webhookMAC(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// SignWebhook sets the timestamp and signature headers of a call.
func SignWebhook(h http.Header, secret, body []byte, now time.Time) {
	ts := strconv.FormatInt(now.Unix(), 10)
	h.Set(HeaderWebhookTimestamp, ts)
	h.Set(HeaderWebhookSignature, "v1="+hex.EncodeToString(webhookMAC(secret, ts, body)))
}

// VerifyWebhook is for hook authors: it reports whether a call with
// headers h and body carries a valid signature by secret and a timestamp
// within MaxWebhookSkew of now. Compare in constant time; several "v1="
// values separated by commas are accepted so a secret can be rotated.
// Hooks should also refuse a WebhookRequest.ID they have seen.
func VerifyWebhook(secret []byte, h http.Header, body []byte, now time.Time) error {
	ts := h.Get(HeaderWebhookTimestamp)
	if len(ts) == 0 || len(ts) > 19 {
		return ErrWebhookSignature
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrWebhookSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > MaxWebhookSkew || d < -MaxWebhookSkew {
		return ErrWebhookSignature
	}
	want := webhookMAC(secret, ts, body)
	sigs := h.Get(HeaderWebhookSignature)
	if len(sigs) > 1024 {
		return ErrWebhookSignature
	}
	ok := false
	for _, s := range strings.Split(sigs, ",") {
		v, found := strings.CutPrefix(strings.TrimSpace(s), "v1=")
		if !found {
			continue
		}
		got, err := hex.DecodeString(v)
		if err == nil && hmac.Equal(got, want) {
			ok = true
		}
	}
	if !ok {
		return ErrWebhookSignature
	}
	return nil
}

// ParseWebhookResponse decodes and checks a hook's answer.
func ParseWebhookResponse(b []byte) (*WebhookResponse, error) {
	if len(b) > MaxWebhookResponseSize {
		return nil, fmt.Errorf("webhook response is over %d bytes", MaxWebhookResponseSize)
	}
	var r WebhookResponse
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		return nil, errors.New("webhook response is not a valid JSON answer")
	}
	if d.More() {
		return nil, errors.New("webhook response has trailing data")
	}
	if r.Allow == nil {
		return nil, errors.New(`webhook response lacks "allow"`)
	}
	if len(r.Reason) > 1024 {
		r.Reason = r.Reason[:1024]
	}
	if r.Template != nil {
		var t Template
		if err := r.Template.Apply(&t); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

// Apply overrides t with the fields present in w and validates the result.
func (w *WebhookTemplate) Apply(t *Template) error {
	if w.Policy != nil {
		t.Policy = *w.Policy
	}
	if w.Tags != nil {
		t.Tags = *w.Tags
	}
	if len(w.Twin) > 0 && string(w.Twin) != "null" {
		t.Twin = append(json.RawMessage(nil), w.Twin...)
	}
	if w.Profile != nil {
		t.Profile = *w.Profile
	}
	if w.LifetimeSeconds != nil {
		s := *w.LifetimeSeconds
		if s < 0 || s > int64(MaxLifetime/time.Second) {
			return fmt.Errorf("webhook lifetime must be between 0 and %d seconds", int64(MaxLifetime/time.Second))
		}
		t.Lifetime = time.Duration(s) * time.Second
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("webhook template: %w", err)
	}
	return nil
}

func webhookTemplate(t Template) WebhookTemplate {
	secs := int64(t.Lifetime / time.Second)
	w := WebhookTemplate{Policy: &t.Policy, Profile: &t.Profile, LifetimeSeconds: &secs, Twin: t.Twin}
	if t.Tags != nil {
		w.Tags = &t.Tags
	}
	return w
}

// callWebhook asks g's hook about e and returns the effective template.
func (p *Provisioner) callWebhook(ctx context.Context, g *Group, e *Enrollment, remote string) (Template, error) {
	sealer, err := p.cfg.Sealers(ctx, g.Tenant)
	if err != nil {
		return Template{}, err
	}
	secret, err := sealer.Open(g.Webhook.SealedSecret, WebhookSecretAAD(g.ID))
	if err != nil {
		return Template{}, fmt.Errorf("open webhook secret of group %q: %w", g.Name, err)
	}
	var id [12]byte
	if _, err := rand.Read(id[:]); err != nil {
		return Template{}, err
	}
	now := p.now()
	body, err := json.Marshal(&WebhookRequest{Version: 1, ID: hex.EncodeToString(id[:]), Time: now.UTC(), Tenant: g.Tenant,
		Group: g.Name, DeviceID: e.DeviceID, Mechanism: e.Mechanism, RemoteAddr: remote, Reprovision: e.Reprovisioned,
		Template: webhookTemplate(e.Template)})
	if err != nil {
		return Template{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.WebhookTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, g.Webhook.URL, bytes.NewReader(body))
	if err != nil {
		return Template{}, &Error{Reason: ReasonWebhookFailed, Detail: "bad webhook URL"}
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("User-Agent", "ward-provision-webhook/1")
	SignWebhook(hr.Header, secret, body, now)
	client := *p.cfg.HTTPClient
	// A redirect would re-send the signed body to wherever the hook
	// points; refuse instead.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(hr)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return Template{}, Refuse(ReasonWebhookTimeout, "no answer within %v", p.cfg.WebhookTimeout)
		}
		return Template{}, Refuse(ReasonWebhookFailed, "webhook call failed: %s", clip(err.Error()))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxWebhookResponseSize+1))
	if err != nil {
		if ctx.Err() != nil {
			return Template{}, Refuse(ReasonWebhookTimeout, "no complete answer within %v", p.cfg.WebhookTimeout)
		}
		return Template{}, Refuse(ReasonWebhookFailed, "reading webhook answer: %s", clip(err.Error()))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return Template{}, Refuse(ReasonWebhookFailed, "webhook answered status %d", resp.StatusCode)
	}
	wr, err := ParseWebhookResponse(b)
	if err != nil {
		return Template{}, &Error{Reason: ReasonWebhookFailed, Err: err}
	}
	if !*wr.Allow {
		return Template{}, Refuse(ReasonWebhookDenied, "hook says: %s", clip(wr.Reason))
	}
	t := cloneTemplate(e.Template)
	if wr.Template != nil {
		if err := wr.Template.Apply(&t); err != nil {
			return Template{}, &Error{Reason: ReasonWebhookFailed, Err: err}
		}
	}
	return t, nil
}

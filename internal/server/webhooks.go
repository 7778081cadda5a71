package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/wardiot/ward/internal/telemetry"
)

// webhookQueue bounds messages waiting for a slow receiver; beyond it they
// are dropped and counted, so a slow webhook never slows devices down.
const webhookQueue = 4096

// tenantWebhook forwards one tenant's verified telemetry to a webhook,
// asynchronously.
type tenantWebhook struct {
	s      *Server
	tenant string
	sink   *telemetry.WebhookSink
	q      chan *telemetry.Message
}

func (w *tenantWebhook) Write(ctx context.Context, m *telemetry.Message) error {
	if m.Tenant != w.tenant {
		return nil
	}
	select {
	case w.q <- m:
	default:
		w.s.log.Warn("telemetry webhook queue full; message dropped", "tenant", w.tenant)
	}
	return nil
}

func (w *tenantWebhook) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-w.q:
			if err := w.sink.Write(ctx, m); err != nil {
				w.s.log.Warn("telemetry webhook delivery failed", "tenant", w.tenant, "err", err)
			}
		}
	}
}

// openWebhooks builds the configured telemetry webhooks.
func (s *Server) openWebhooks() ([]telemetry.Sink, error) {
	var sinks []telemetry.Sink
	for _, c := range s.cfg.TelemetryWebhooks {
		secret, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("telemetry webhook of %s: %w", c.Tenant, err)
		}
		opts := telemetry.WebhookOptions{Clock: s.now}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("telemetry webhook of %s: %s holds no certificate", c.Tenant, c.CAFile)
			}
			opts.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		sink, err := telemetry.NewWebhookSink(c.URL, []byte(strings.TrimSpace(string(secret))), opts)
		if err != nil {
			return nil, fmt.Errorf("telemetry webhook of %s: %w", c.Tenant, err)
		}
		w := &tenantWebhook{s: s, tenant: c.Tenant, sink: sink, q: make(chan *telemetry.Message, webhookQueue)}
		go w.run(s.bgCtx)
		sinks = append(sinks, w)
	}
	return sinks, nil
}

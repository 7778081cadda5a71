// Package client is the Go client of Ward's REST API, used by the operator
// CLI and the demo.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Client calls the API at Addr with Token, trusting only the CA bundle it
// was given (never the system roots: Ward's API certificate is issued by
// the installation's own platform CA).
type Client struct {
	Base  string // https://host:port
	Token string
	HTTP  *http.Client
}

// New returns a client for addr (host:port or https URL).
func New(addr, token string, caPEM []byte) (*Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("the CA bundle holds no PEM certificate")
	}
	base := addr
	if !strings.HasPrefix(base, "https://") {
		if strings.HasPrefix(base, "http://") {
			return nil, errors.New("the API is served over HTTPS only; use an https:// address")
		}
		base = "https://" + base
	}
	return &Client{
		Base:  strings.TrimRight(base, "/"),
		Token: strings.TrimSpace(token),
		HTTP: &http.Client{
			Timeout: 60 * time.Second,
			Transport: &http.Transport{
				TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				ForceAttemptHTTP2:   true,
				MaxIdleConnsPerHost: 64,
			},
		},
	}, nil
}

// FromFiles builds a client from an address, a token file and a CA file.
func FromFiles(addr, tokenFile, caFile string) (*Client, error) {
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	return New(addr, string(tok), ca)
}

// Problem is an API error (RFC 9457).
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return fmt.Sprintf("%s (HTTP %d): %s", p.Title, p.Status, p.Detail)
	}
	return fmt.Sprintf("%s (HTTP %d)", p.Title, p.Status)
}

// maxResponse bounds what the client reads from the server.
const maxResponse = 64 << 20

// Do sends method path with body (JSON-encoded unless nil) and decodes the
// JSON response into out (if non-nil). Non-2xx responses become *Problem.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	return c.DoWithHeaders(ctx, method, path, body, nil, out)
}

// DoWithHeaders is Do with extra request headers (If-Match, say).
func (c *Client) DoWithHeaders(ctx context.Context, method, path string, body any, headers map[string]string, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the Ward API at %s: %w", c.Base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		p := &Problem{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode)}
		_ = json.Unmarshal(data, p)
		return p
	}
	if out != nil && len(data) > 0 {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = append((*raw)[:0], data...)
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}

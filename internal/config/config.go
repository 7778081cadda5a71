// Package config holds the server's typed configuration. Flags and an
// optional YAML file fill a Config; Validate reports every problem at once
// before anything starts.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the server configuration.
type Config struct {
	// DataDir holds the database (SQLite), keys, CA bundle and admin token.
	DataDir string `yaml:"data"`
	// APIAddr serves the REST API, EST and OTA over HTTPS.
	APIAddr string `yaml:"api_addr"`
	// MQTTAddr serves MQTT over mutual TLS to devices.
	MQTTAddr string `yaml:"mqtt_addr"`
	// HTTPAddr serves CRLs and OCSP over plain HTTP (the responses are
	// signed; relying parties fetch them over HTTP by convention).
	HTTPAddr string `yaml:"http_addr"`
	// Database is "" (SQLite in DataDir) or a postgres:// URL.
	Database string `yaml:"database"`
	// PublicURL is the base URL of the plain-HTTP listener as relying
	// parties reach it; it goes into certificates (CRL, OCSP). Default:
	// http://<http_addr>.
	PublicURL string `yaml:"public_url"`
	// Hostnames are extra DNS names or IPs for the API/MQTT server
	// certificate (localhost and 127.0.0.1 are always included).
	Hostnames []string `yaml:"hostnames"`
	// CAAlgorithm is the key algorithm of new tenant CAs: ecdsa-p256
	// (default), ecdsa-p384, rsa-3072 or ed25519.
	CAAlgorithm string `yaml:"ca_algorithm"`
	// CAKeys says where tenant CA keys live: "file" (sealed with the
	// tenant's data key, in the database) or "pkcs11" (generated in and
	// never leaving a PKCS#11 token).
	CAKeys        string `yaml:"ca_keys"`
	PKCS11Module  string `yaml:"pkcs11_module"`
	PKCS11Token   string `yaml:"pkcs11_token"`
	PKCS11PINFile string `yaml:"pkcs11_pin_file"`
	// RenewGrace lets a device whose certificate expired re-enroll with it
	// for this long after notAfter (0, the default: never).
	RenewGrace time.Duration `yaml:"renew_grace"`
	// DeviceRate and TenantRate limit what one device, and all devices of
	// a tenant together, may send through the gateway (zero fields: the
	// gateway's defaults).
	DeviceRate Rate `yaml:"device_rate"`
	TenantRate Rate `yaml:"tenant_rate"`
	// CloneAction is what a cloned certificate (two live sessions with one
	// certificate) triggers: "refuse-newcomer" (default) or "cut-both";
	// CloneActionTenants overrides it per tenant.
	CloneAction        string            `yaml:"clone_action"`
	CloneActionTenants map[string]string `yaml:"clone_action_tenants"`
	// TelemetryWebhooks receive a tenant's verified telemetry as signed
	// HTTPS POSTs (HMAC-SHA256 of the body with the secret in SecretFile).
	TelemetryWebhooks []Webhook `yaml:"telemetry_webhooks"`
	// EKRoots is a PEM file of the TPM manufacturers' EK roots (and their
	// issuing CAs) that attestation keys are enrolled against; without it
	// no AK can be enrolled and only the software tier is available.
	EKRoots string `yaml:"ek_roots"`
	// NATS is an optional nats:// URL for JetStream (several nodes).
	NATS string `yaml:"nats"`
	// LogLevel is debug, info, warn or error; LogFormat is text or json.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`
}

// Webhook is a telemetry webhook of one tenant.
type Webhook struct {
	Tenant     string `yaml:"tenant"`
	URL        string `yaml:"url"`
	SecretFile string `yaml:"secret_file"`
	// CAFile optionally names the PEM roots that sign the receiver's
	// certificate (default: the system roots).
	CAFile string `yaml:"ca_file"`
}

// Rate is a set of gateway rate limits.
type Rate struct {
	MessagesPerSecond float64 `yaml:"messages_per_second"`
	BytesPerSecond    float64 `yaml:"bytes_per_second"`
	ConnectsPerMinute float64 `yaml:"connects_per_minute"`
}

// Default returns the defaults: loopback listeners, SQLite, info logs.
func Default() Config {
	return Config{
		APIAddr:     "127.0.0.1:8443",
		MQTTAddr:    "127.0.0.1:8883",
		HTTPAddr:    "127.0.0.1:8080",
		LogLevel:    "info",
		LogFormat:   "text",
		CAAlgorithm: "ecdsa-p256",
		CAKeys:      "file",
	}
}

// maxConfigSize bounds the config file we are willing to parse.
const maxConfigSize = 1 << 20

// LoadFile overlays the YAML file at path onto c. Unknown keys are errors,
// so a typo does not silently fall back to a default.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	if len(b) > maxConfigSize {
		return fmt.Errorf("config file %s is larger than %d bytes", path, maxConfigSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// Problem is one thing wrong with a Config, with a hint to fix it.
type Problem struct {
	Field, Msg, Hint string
}

func (p Problem) Error() string { return p.Field + ": " + p.Msg }

// Problems is every problem Validate found.
type Problems []Problem

func (ps Problems) Error() string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.Error())
	}
	return b.String()
}

// Validate checks everything and returns Problems (nil if none).
func (c *Config) Validate() error {
	var ps Problems
	add := func(field, msg, hint string) { ps = append(ps, Problem{field, msg, hint}) }
	if c.DataDir == "" {
		add("data", "no data directory given", "pass --data DIR (created on first start)")
	} else if fi, err := os.Stat(c.DataDir); err == nil && !fi.IsDir() {
		add("data", c.DataDir+" exists and is not a directory", "pick a directory path")
	}
	addrs := map[string]string{}
	for _, a := range []struct{ name, v string }{{"api_addr", c.APIAddr}, {"mqtt_addr", c.MQTTAddr}, {"http_addr", c.HTTPAddr}} {
		host, port, err := net.SplitHostPort(a.v)
		if err != nil || port == "" {
			add(a.name, fmt.Sprintf("%q is not host:port", a.v), "for example 127.0.0.1:8443 or :8443")
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			add(a.name, fmt.Sprintf("%q has an invalid port", a.v), "use a port number from 0 to 65535")
			continue
		}
		if host != "" && net.ParseIP(host) == nil && host != "localhost" {
			if strings.ContainsAny(host, " /") {
				add(a.name, fmt.Sprintf("%q has an invalid host", a.v), "use an IP address or a host name")
			}
		}
		if other, dup := addrs[a.v]; dup && !strings.HasSuffix(a.v, ":0") {
			add(a.name, "same address as "+other, "give each listener its own port")
		}
		addrs[a.v] = a.name
	}
	if c.Database != "" {
		u, err := url.Parse(c.Database)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			add("database", "must be empty (SQLite in the data directory) or a postgres:// URL", "for example postgres://ward@db:5432/ward")
		}
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("public_url", fmt.Sprintf("%q is not an http(s) URL", c.PublicURL), "for example http://pki.example.com:8080")
		}
	}
	if c.NATS != "" {
		u, err := url.Parse(c.NATS)
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") {
			add("nats", fmt.Sprintf("%q is not a nats:// URL", c.NATS), "for example nats://127.0.0.1:4222")
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("log_level", fmt.Sprintf("unknown level %q", c.LogLevel), "use debug, info, warn or error")
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		add("log_format", fmt.Sprintf("unknown format %q", c.LogFormat), "use text or json")
	}
	if c.RenewGrace < 0 || c.RenewGrace > 90*24*time.Hour {
		add("renew_grace", "must be between 0 and 2160h", "for example 168h, or 0 to refuse expired certificates")
	}
	for name, r := range map[string]Rate{"device_rate": c.DeviceRate, "tenant_rate": c.TenantRate} {
		if r.MessagesPerSecond < 0 || r.BytesPerSecond < 0 || r.ConnectsPerMinute < 0 {
			add(name, "rates must not be negative", "use 0 for the default")
		}
	}
	for i, w := range c.TelemetryWebhooks {
		u, err := url.Parse(w.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			add(fmt.Sprintf("telemetry_webhooks[%d].url", i), fmt.Sprintf("%q is not an https:// URL", w.URL), "webhooks are HTTPS only")
		}
		if w.Tenant == "" || w.SecretFile == "" {
			add(fmt.Sprintf("telemetry_webhooks[%d]", i), "tenant and secret_file are required", "a 0600 file with at least 16 random bytes")
		}
	}
	validClone := func(v string) bool { return v == "" || v == "refuse-newcomer" || v == "cut-both" }
	if !validClone(c.CloneAction) {
		add("clone_action", fmt.Sprintf("unknown action %q", c.CloneAction), "use refuse-newcomer or cut-both")
	}
	for t, v := range c.CloneActionTenants {
		if !validClone(v) {
			add("clone_action_tenants", fmt.Sprintf("tenant %s: unknown action %q", t, v), "use refuse-newcomer or cut-both")
		}
	}
	switch c.CAAlgorithm {
	case "ecdsa-p256", "ecdsa-p384", "rsa-3072", "ed25519":
	default:
		add("ca_algorithm", fmt.Sprintf("unknown algorithm %q", c.CAAlgorithm), "use ecdsa-p256, ecdsa-p384, rsa-3072 or ed25519")
	}
	switch c.CAKeys {
	case "file":
	case "pkcs11":
		if c.PKCS11Module == "" {
			add("pkcs11_module", "ca_keys is pkcs11 but no module is given", "for example /usr/lib/softhsm/libsofthsm2.so")
		}
		if c.PKCS11Token == "" {
			add("pkcs11_token", "ca_keys is pkcs11 but no token label is given", "the label the token was initialised with")
		}
		if c.PKCS11PINFile == "" {
			add("pkcs11_pin_file", "ca_keys is pkcs11 but no PIN file is given", "a 0600 file holding the user PIN")
		}
		if c.CAAlgorithm == "ed25519" {
			add("ca_algorithm", "ed25519 CA keys are not supported in PKCS#11 tokens", "use ecdsa-p256")
		}
	default:
		add("ca_keys", fmt.Sprintf("unknown key store %q", c.CAKeys), "use file or pkcs11")
	}
	for _, h := range c.Hostnames {
		if h == "" || strings.ContainsAny(h, " /:") && net.ParseIP(h) == nil {
			add("hostnames", fmt.Sprintf("%q is not a host name or IP", h), "for example ward.example.com")
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return ps
}

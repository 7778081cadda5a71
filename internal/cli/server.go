package cli

import (
	"io"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/server"
)

func (a *app) serverCmd() *cobra.Command {
	cfg := config.Default()
	var file string
	c := &cobra.Command{
		Use:   "server",
		Short: "Run the Ward server",
		Long: `Run the Ward server. The first start initialises the data directory: the
key-encryption key, the platform CA, ca.pem (the bundle API clients trust) and
admin.token (the first admin token, mode 0600, written once and never logged).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			final := config.Default()
			if file != "" {
				if err := final.LoadFile(file); err != nil {
					return usageError{err}
				}
			}
			// Flags given on the command line override the file.
			c.Flags().Visit(func(f *pflag.Flag) {
				switch f.Name {
				case "api-addr":
					final.APIAddr = cfg.APIAddr
				case "mqtt-addr":
					final.MQTTAddr = cfg.MQTTAddr
				case "http-addr":
					final.HTTPAddr = cfg.HTTPAddr
				case "database":
					final.Database = cfg.Database
				case "public-url":
					final.PublicURL = cfg.PublicURL
				case "hostname":
					final.Hostnames = cfg.Hostnames
				case "renew-grace":
					final.RenewGrace = cfg.RenewGrace
				case "ca-algorithm":
					final.CAAlgorithm = cfg.CAAlgorithm
				case "ca-keys":
					final.CAKeys = cfg.CAKeys
				case "pkcs11-module":
					final.PKCS11Module = cfg.PKCS11Module
				case "pkcs11-token":
					final.PKCS11Token = cfg.PKCS11Token
				case "pkcs11-pin-file":
					final.PKCS11PINFile = cfg.PKCS11PINFile
				case "nats":
					final.NATS = cfg.NATS
				case "log-level":
					final.LogLevel = cfg.LogLevel
				case "log-format":
					final.LogFormat = cfg.LogFormat
				}
			})
			if a.dataDir != "" {
				final.DataDir = abs(a.dataDir)
			}
			if err := final.Validate(); err != nil {
				return err
			}
			// WARD_CPUPROFILE names a file for a CPU profile of the whole
			// run, written at shutdown: for benchmarks, not production.
			if p := os.Getenv("WARD_CPUPROFILE"); p != "" {
				f, err := os.Create(p)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer func() { pprof.StopCPUProfile(); f.Close() }()
			}
			log := NewLogger(a.stderr, final.LogLevel, final.LogFormat)
			srv, err := server.Open(c.Context(), final, log)
			if err != nil {
				return err
			}
			return srv.Run(c.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&file, "config", "", "YAML config file (flags override it)")
	f.StringVar(&cfg.APIAddr, "api-addr", cfg.APIAddr, "HTTPS API, EST and OTA listener")
	f.StringVar(&cfg.MQTTAddr, "mqtt-addr", cfg.MQTTAddr, "MQTT over mutual TLS listener")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "plain HTTP listener for CRLs and OCSP")
	f.StringVar(&cfg.Database, "database", "", "postgres:// URL (default: SQLite in the data directory)")
	f.StringVar(&cfg.PublicURL, "public-url", "", "base URL of the plain-HTTP listener as relying parties see it")
	f.StringSliceVar(&cfg.Hostnames, "hostname", nil, "extra host names or IPs for the server certificate")
	f.StringVar(&cfg.NATS, "nats", "", "nats:// URL of NATS JetStream (several nodes)")
	f.DurationVar(&cfg.RenewGrace, "renew-grace", 0, "let expired device certificates re-enroll for this long (default: never)")
	f.StringVar(&cfg.CAAlgorithm, "ca-algorithm", cfg.CAAlgorithm, "key algorithm of new tenant CAs: ecdsa-p256, ecdsa-p384, rsa-3072, ed25519")
	f.StringVar(&cfg.CAKeys, "ca-keys", cfg.CAKeys, "where tenant CA keys live: file (sealed in the database) or pkcs11")
	f.StringVar(&cfg.PKCS11Module, "pkcs11-module", "", "PKCS#11 library (with --ca-keys pkcs11)")
	f.StringVar(&cfg.PKCS11Token, "pkcs11-token", "", "PKCS#11 token label (with --ca-keys pkcs11)")
	f.StringVar(&cfg.PKCS11PINFile, "pkcs11-pin-file", "", "file holding the PKCS#11 user PIN (with --ca-keys pkcs11)")
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	f.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "text or json")
	return c
}

// NewLogger returns the server's structured logger.
func NewLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

package cli

import (
	"io"
	"log/slog"

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

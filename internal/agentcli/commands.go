package agentcli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/agent"
)

func (a *app) enrollCmd() *cobra.Command {
	var server, caFile, tenant, device, label, token, tokenFile, bootstrap, ks, state, mqttAddr, otaDir string
	var basic bool
	c := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll the device with a bootstrap credential",
		Long: `enroll fetches the tenant's CA certificates, generates a key in the keystore,
and gets the device's first certificate over EST, authenticated by a
bootstrap credential: an enrollment token from --token-file,
$WARD_ENROLL_TOKEN or --token (visible to other users in ps), or one of
--bootstrap x509:CERT.pem,KEY.pem (manufacturer certificate), tpm (the
TPM's endorsement key; needs --keystore tpm:...), symmetric:KEYFILE (the
device key derived from a group key; needs --label TENANT.GROUP) or
token:TOKEN.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := required(c, "server", "ca", "tenant", "device", "state"); err != nil {
				return err
			}
			if mqttAddr != "" {
				if err := checkHostPort(mqttAddr); err != nil {
					return usageError{fmt.Errorf("enroll: --mqtt %w", err)}
				}
			}
			var cred agent.Credential
			if bootstrap != "" {
				if token != "" || tokenFile != "" || os.Getenv("WARD_ENROLL_TOKEN") != "" {
					return usageError{errors.New("enroll: give --bootstrap or an enrollment token (--token, --token-file, WARD_ENROLL_TOKEN), not both")}
				}
				spec, err := parseBootstrap(bootstrap)
				if err != nil {
					return usageError{err}
				}
				if spec.kind == "tpm" && !strings.HasPrefix(ks, "tpm:") {
					return usageError{withHint(errors.New("enroll: --bootstrap tpm needs the TPM keystore"), "add --keystore tpm:/dev/tpmrm0 (the device key must be in the TPM that proves itself)")}
				}
				if cred, err = spec.credential(basic); err != nil {
					return usageError{err}
				}
			} else {
				secret, err := enrollToken(token, tokenFile)
				if err != nil {
					return err
				}
				cred = agent.Token(secret)
				if basic {
					cred = agent.BasicToken(secret)
				}
			}
			if ks == "" {
				ks = "file:" + filepath.Join(state, "keys")
			}
			if err := checkSpec(ks); err != nil {
				return err
			}
			bundle, err := readFileLimited(caFile, maxCAFileSize, "CA bundle")
			if err != nil {
				return usageError{err}
			}
			if err := os.MkdirAll(state, 0o700); err != nil {
				return err
			}
			store, err := openKeystore(ks, state)
			if err != nil {
				return err
			}
			defer store.Close()
			id, err := agent.Enroll(c.Context(), agent.Config{
				Server: server, CABundle: bundle, Tenant: tenant, Device: device, Label: label,
				Keystore: store, StateDir: state, Logger: a.logger("info"),
			}, cred)
			if err != nil {
				return err
			}
			if err := writeSettings(state, settings{Keystore: ks, MQTT: mqttAddr, OTADir: otaDir}); err != nil {
				return fmt.Errorf("enrolled, but saving the keystore setting failed: %w", err)
			}
			fmt.Fprintf(a.stdout, "enrolled %s/%s: certificate %x valid until %s, key %s in the %s keystore\n",
				id.Tenant, id.Device, id.Certificate.SerialNumber, id.Certificate.NotAfter.UTC().Format(time.RFC3339), id.KeyName, store.Kind())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&server, "server", "", "Ward server URL, https://host:port")
	f.StringVar(&caFile, "ca", "", "PEM file of the CA(s) that sign the server's certificate; nothing else is trusted")
	f.StringVar(&tenant, "tenant", "", "tenant ID")
	f.StringVar(&device, "device", "", "device ID")
	f.StringVar(&label, "label", "", "EST label (default: the tenant)")
	f.StringVar(&token, "token", "", "enrollment token (prefer --token-file or $WARD_ENROLL_TOKEN)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the enrollment token")
	f.StringVar(&bootstrap, "bootstrap", "", "bootstrap credential: x509:CERT.pem,KEY.pem | tpm | symmetric:KEYFILE | token:TOKEN (instead of the --token flags)")
	f.BoolVar(&basic, "basic", false, "send the token with HTTP Basic (user = device ID) instead of Bearer")
	f.StringVar(&ks, "keystore", "", "keystore spec: file:DIR, pkcs11:module=...;token=...;pin-source=FILE, tpm:/dev/tpmrm0 (default file:STATE/keys)")
	f.StringVar(&state, "state", "", "state directory (identity.json, agent.json)")
	f.StringVar(&mqttAddr, "mqtt", "", "gateway address HOST:PORT, saved as the default of run --mqtt")
	f.StringVar(&otaDir, "ota-dir", "", "update engine directory, saved as the default of run and status --ota-dir")
	return c
}

// enrollToken picks the token from exactly one source.
func enrollToken(token, file string) (string, error) {
	env := os.Getenv("WARD_ENROLL_TOKEN")
	n := 0
	for _, s := range []string{token, file, env} {
		if s != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return "", usageError{withHint(errors.New("enroll: no enrollment token"), "give --token-file FILE, set WARD_ENROLL_TOKEN, or --token TOKEN")}
	case n > 1:
		return "", usageError{errors.New("enroll: give the token one way only: --token, --token-file or WARD_ENROLL_TOKEN")}
	case file != "":
		b, err := readFileLimited(file, maxTokenFileSize, "token file")
		if err != nil {
			return "", usageError{err}
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", usageError{fmt.Errorf("token file %s is empty", file)}
		}
		return t, nil
	case env != "":
		return env, nil
	}
	return token, nil
}

// loadAgent opens the keystore named in the state dir and the agent.
func (a *app) loadAgent(state, level string) (*agent.Agent, func(), error) {
	s, err := readSettings(state)
	if err != nil {
		return nil, nil, err
	}
	store, err := openKeystore(s.Keystore, state)
	if err != nil {
		return nil, nil, err
	}
	ag, err := agent.New(agent.Config{StateDir: state, Keystore: store, Logger: a.logger(level)})
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	return ag, func() { ag.Close(); store.Close() }, nil
}

func (a *app) logger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: l}))
}

func (a *app) renewCmd() *cobra.Command {
	var state string
	c := &cobra.Command{
		Use:   "renew",
		Short: "Renew the certificate now, with a new key",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := required(c, "state"); err != nil {
				return err
			}
			ag, closeFn, err := a.loadAgent(state, "warn")
			if err != nil {
				return err
			}
			defer closeFn()
			if err := ag.Renew(c.Context()); err != nil {
				return err
			}
			s := ag.Status()
			fmt.Fprintf(a.stdout, "renewed %s/%s: certificate %s valid until %s, key %s\n", s.Tenant, s.Device, s.Serial, s.NotAfter.UTC().Format(time.RFC3339), s.KeyName)
			return nil
		},
	}
	c.Flags().StringVar(&state, "state", "", "state directory written by enroll")
	return c
}

func (a *app) statusCmd() *cobra.Command {
	var state, output, otaDir string
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the device's identity, certificate, keystore and update state",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := required(c, "state"); err != nil {
				return err
			}
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("--output must be text or json, not %q", output)}
			}
			now := time.Now()
			s, err := agent.ReadStatus(state, now)
			if err != nil {
				return err
			}
			out := fullStatus{Status: s}
			if otaDir == "" {
				if set, err := readSettings(state); err == nil {
					otaDir = set.OTADir
				}
			}
			if otaDir != "" {
				out.OTA = readOTAStatus(state, otaDir)
			}
			if output == "json" {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			printStatus(a.stdout, s, now)
			if out.OTA != nil {
				printOTAStatus(a.stdout, out.OTA)
			}
			return nil
		},
	}
	c.Flags().StringVar(&state, "state", "", "state directory written by enroll")
	c.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	c.Flags().StringVar(&otaDir, "ota-dir", "", "update engine directory, to show the update state (default: as saved by enroll)")
	return c
}

func printStatus(w io.Writer, s agent.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	expiry := "expires in " + roundDur(s.NotAfter.Sub(now))
	if s.Expired {
		expiry = "EXPIRED " + roundDur(now.Sub(s.NotAfter)) + " ago"
	}
	fmt.Fprintf(tw, "tenant:\t%s\n", s.Tenant)
	fmt.Fprintf(tw, "device:\t%s\n", s.Device)
	fmt.Fprintf(tw, "server:\t%s\n", s.Server)
	fmt.Fprintf(tw, "keystore:\t%s (key %s, generation %d)\n", s.KeystoreKind, s.KeyName, s.Generation)
	fmt.Fprintf(tw, "certificate:\tserial %s, issued by %s\n", s.Serial, s.Issuer)
	fmt.Fprintf(tw, "valid:\t%s to %s (%s)\n", s.NotBefore.UTC().Format(time.RFC3339), s.NotAfter.UTC().Format(time.RFC3339), expiry)
	fmt.Fprintf(tw, "renewal due:\t%s\n", s.NextRenewal.UTC().Format(time.RFC3339))
	tw.Flush()
}

func roundDur(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	case d >= time.Minute:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Millisecond).String()
}

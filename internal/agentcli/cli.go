// Package agentcli implements the ward-agent command: enroll, run, renew,
// status and simulate. It is a thin layer over package agent: flags in,
// agent calls, human or JSON output and "ward-agent: error/hint" lines out.
package agentcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad flags or arguments
)

// usageError marks errors that mean "you called it wrong".
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// hintError carries a hint printed after the error.
type hintError struct {
	err  error
	hint string
}

func (h *hintError) Error() string { return h.err.Error() }
func (h *hintError) Unwrap() error { return h.err }

func withHint(err error, hint string) error { return &hintError{err: err, hint: hint} }

type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// cmdline is the kernel command line file run reads the booted slot
	// from; tests point it elsewhere.
	cmdline string
}

// Main runs the CLI and returns the process exit code. SIGINT and SIGTERM
// stop it cleanly.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, stdin, stdout, stderr)
}

// run is Main with the context given, so tests can stop "run".
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runApp(ctx, &app{stdin: stdin, stdout: stdout, stderr: stderr, cmdline: defaultCmdline}, args)
}

// runApp runs the CLI with a prepared app.
func runApp(ctx context.Context, a *app, args []string) int {
	root := a.root()
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		return a.report(err)
	}
	return exitOK
}

func (a *app) report(err error) int {
	code := exitFailure
	if _, ok := errors.AsType[usageError](err); ok {
		code = exitUsage
	}
	fmt.Fprintf(a.stderr, "ward-agent: error: %s\n", err)
	if hint := hintFor(err); hint != "" {
		fmt.Fprintf(a.stderr, "ward-agent: hint: %s\n", hint)
	}
	return code
}

// hintFor says what to do about the errors users meet most.
func hintFor(err error) string {
	if he, ok := errors.AsType[*hintError](err); ok {
		return he.hint
	}
	if se, ok := errors.AsType[*agent.ServerError](err); ok {
		switch se.Status {
		case http.StatusUnauthorized, http.StatusForbidden:
			if se.Op == "simplereenroll" {
				return "the server refused the current certificate; the device may be revoked, disabled or quarantined (ask the operator), or it must enroll again with a bootstrap credential"
			}
			return "the server refused the enrollment credential: check that the token is valid, unused, not expired and issued for this device and tenant"
		case http.StatusNotFound:
			return "the server knows no such EST label: check --tenant (or --label)"
		}
	}
	switch {
	case errors.Is(err, agent.ErrServerNotTrusted):
		return "--ca must hold the CA certificate that signed the server's TLS certificate (on the server host: DATA/ca.pem), and --server must use a name in that certificate"
	case errors.Is(err, agent.ErrAlreadyEnrolled):
		return "see it with 'ward-agent status --state DIR'; to enroll again from scratch, remove the state directory first"
	case errors.Is(err, agent.ErrNotEnrolled):
		return "enroll first: ward-agent enroll --server URL --ca CA.pem --tenant T --device D --token-file FILE --state DIR"
	case errors.Is(err, keystore.ErrInvalidSpec):
		return "keystore specs: file:DIR, pkcs11:module=PATH;token=LABEL;pin-source=FILE, tpm:/dev/tpmrm0"
	}
	return ""
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "ward-agent",
		Short: "The Ward device agent",
		Long: `ward-agent gives a device its Ward identity and keeps it fresh.

  ward-agent enroll    get the first certificate with a bootstrap credential
  ward-agent run       the device daemon: renewal, MQTT session, twin,
                       attestation and A/B updates
  ward-agent renew     renew now (rotates the key)
  ward-agent status    show identity, certificate expiry, keystore and update state
  ward-agent simulate  enroll N virtual devices, for load tests`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.enrollCmd(), a.runCmd(), a.renewCmd(), a.statusCmd(), a.simulateCmd())
	return root
}

// settingsFile holds what the agent package does not keep in identity.json:
// how to open the keystore, and the defaults of run given at enrollment.
const settingsFile = "agent.json"

type settings struct {
	Keystore string `json:"keystore"`
	// MQTT is the gateway address run connects to (--mqtt).
	MQTT string `json:"mqtt,omitempty"`
	// OTADir is run's and status's --ota-dir.
	OTADir string `json:"ota_dir,omitempty"`
}

// maxSettingsSize bounds agent.json: a spec string of at most 4 KiB and
// two more short strings.
const maxSettingsSize = 16 << 10

func writeSettings(dir string, s settings) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+settingsFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, settingsFile))
}

func readSettings(dir string) (settings, error) {
	var s settings
	f, err := os.Open(filepath.Join(dir, settingsFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("%w: no %s in %s", agent.ErrNotEnrolled, settingsFile, dir)
	}
	if err != nil {
		return s, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSettingsSize+1))
	if err != nil {
		return s, err
	}
	if len(b) > maxSettingsSize {
		return s, fmt.Errorf("%s is larger than %d bytes", settingsFile, maxSettingsSize)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", settingsFile, err)
	}
	return s, nil
}

// openKeystore opens spec, keeping TPM key blobs under the state dir.
func openKeystore(spec, stateDir string) (keystore.Keystore, error) {
	return keystore.Open(spec, keystore.WithStateDir(filepath.Join(stateDir, "tpm-keys")))
}

// checkSpec refuses specs that would put a secret in agent.json.
func checkSpec(spec string) error {
	s, err := keystore.ParseSpec(spec)
	if err != nil {
		return usageError{err}
	}
	if s.PIN != "" {
		return usageError{withHint(errors.New("--keystore holds an inline PIN, which would be saved in the state directory"),
			"put the PIN in a 0600 file and use pin-source=FILE instead of pin=...")}
	}
	return nil
}

func readFileLimited(path string, limit int64, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s %s is larger than %d bytes", what, path, limit)
	}
	return b, nil
}

// maxCAFileSize bounds --ca; see agent's CA bundle limit.
const maxCAFileSize = 256 << 10

// maxTokenFileSize bounds a --token-file with a single token.
const maxTokenFileSize = 4 << 10

func required(c *cobra.Command, names ...string) error {
	var missing []string
	for _, n := range names {
		if !c.Flags().Changed(n) {
			missing = append(missing, "--"+n)
		}
	}
	if len(missing) > 0 {
		return usageError{fmt.Errorf("%s: missing %s", c.Name(), strings.Join(missing, ", "))}
	}
	return nil
}

// Package cli implements the ward command: `ward server`, `ward demo` and
// the operator commands (`ward <noun> <verb>`) that call the REST API.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/internal/config"
	"github.com/wardiot/ward/internal/server"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad flags, arguments or configuration
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
	// client flags
	addr, cacert, dataDir, output string
}

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.root()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	return a.report(err)
}

func (a *app) report(err error) int {
	code := exitFailure
	var ue usageError
	if errors.As(err, &ue) {
		code = exitUsage
	}
	var ps config.Problems
	if errors.As(err, &ps) {
		fmt.Fprintf(a.stderr, "ward: error: the configuration has %d problem(s):\n", len(ps))
		for _, p := range ps {
			fmt.Fprintf(a.stderr, "ward: error:   %s: %s\n", p.Field, p.Msg)
			if p.Hint != "" {
				fmt.Fprintf(a.stderr, "ward: hint:      %s\n", p.Hint)
			}
		}
		return exitUsage
	}
	fmt.Fprintf(a.stderr, "ward: error: %s\n", err)
	var he *hintError
	if errors.As(err, &he) {
		fmt.Fprintf(a.stderr, "ward: hint: %s\n", he.hint)
	}
	var p *client.Problem
	if errors.As(err, &p) && p.Status == 401 {
		fmt.Fprintln(a.stderr, "ward: hint: set WARD_TOKEN to a valid token (or use --data DIR on the server host)")
	}
	return code
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "ward",
		Short: "Ward: a self-hosted security platform for IoT fleets",
		Long: `Ward runs a fleet's certificate authorities, enrollment, MQTT-over-mTLS gateway,
audit log and more, as one server. The same binary is the operator CLI.

Operator commands talk to the API. They read:
  WARD_ADDR    API address (host:port), or --addr
  WARD_TOKEN   API token
  WARD_CACERT  CA bundle that signs the API certificate, or --cacert
On the server host, --data DIR finds all three in the data directory.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.addr, "addr", "", "API address (default $WARD_ADDR)")
	pf.StringVar(&a.cacert, "cacert", "", "CA bundle file (default $WARD_CACERT)")
	pf.StringVar(&a.dataDir, "data", "", "data directory (server: where state lives; CLI on the server host: where to find address, CA and admin token)")
	pf.StringVarP(&a.output, "output", "o", "text", "output format of read commands: text or json")
	root.AddCommand(a.serverCmd(), a.demoCmd(), a.tenantCmd(), a.tokenCmd(), a.auditCmd(), a.whoamiCmd(), a.versionCmd(), a.caCmd(), a.certCmd(), a.eventCmd(), a.deviceCmd(), a.schemaCmd(), a.twinCmd(), a.policyCmd(), a.groupCmd(), a.releaseCmd(), a.rolloutCmd())
	return root
}

// Version is set at build time with -ldflags "-X ...cli.Version=v1.2.3".
var Version = "dev"

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { fmt.Fprintln(a.stdout, "ward", Version); return nil }}
}

// client builds an API client from flags, environment and --data.
func (a *app) client() (*client.Client, error) {
	addr, cacert := a.addr, a.cacert
	if addr == "" {
		addr = os.Getenv("WARD_ADDR")
	}
	if cacert == "" {
		cacert = os.Getenv("WARD_CACERT")
	}
	token := os.Getenv("WARD_TOKEN")
	if a.dataDir != "" {
		if st, err := server.ReadState(a.dataDir); err == nil && addr == "" {
			addr = st.APIAddr
		}
		if cacert == "" {
			cacert = server.CABundlePath(a.dataDir)
		}
		if token == "" {
			b, err := os.ReadFile(server.AdminTokenPath(a.dataDir))
			if err != nil {
				return nil, withHint(fmt.Errorf("read admin token: %w", err), "set WARD_TOKEN, or run on the server host as the user that owns the data directory")
			}
			token = strings.TrimSpace(string(b))
		}
	}
	if addr == "" {
		return nil, usageError{withHint(errors.New("no API address"), "set WARD_ADDR=host:port, pass --addr, or --data DIR on the server host")}
	}
	if cacert == "" {
		return nil, usageError{withHint(errors.New("no CA bundle"), "set WARD_CACERT to the server's ca.pem, or pass --cacert")}
	}
	if token == "" {
		return nil, usageError{withHint(errors.New("no API token"), "set WARD_TOKEN")}
	}
	ca, err := os.ReadFile(cacert)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	return client.New(addr, token, ca)
}

// emit prints v as JSON with -o json, otherwise calls text.
func (a *app) emit(v any, text func(w *tabwriter.Writer)) error {
	switch a.output {
	case "json":
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "text", "":
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		text(tw)
		return tw.Flush()
	default:
		return usageError{fmt.Errorf("unknown output format %q (want text or json)", a.output)}
	}
}

func abs(p string) string {
	if q, err := filepath.Abs(p); err == nil {
		return q
	}
	return p
}

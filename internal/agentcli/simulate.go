package agentcli

import (
	"bufio"
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
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/wire"
)

const (
	// maxSimTokenFileSize bounds --token-file for simulate: a line is at
	// most a 128-byte device ID and a token, so this is room for about a
	// hundred thousand devices, more than one process should simulate.
	maxSimTokenFileSize = 16 << 20
	// maxAPIResponseSize bounds a token-minting response; it is one small
	// JSON object.
	maxAPIResponseSize = 64 << 10
	// maxSimWorkers bounds --workers: every worker holds TLS connections
	// and goroutines, and the point is to load the server, not the host.
	maxSimWorkers = 1024
	// maxReportedErrors is how many distinct failure messages are shown.
	maxReportedErrors = 5
)

type simOptions struct {
	server, caFile, tenant, label string
	tokenFile, apiToken, prefix   string
	groupKeyFile                  string
	groupKey                      []byte
	state                         string
	count, workers                int
	basic                         bool
}

func (a *app) simulateCmd() *cobra.Command {
	var o simOptions
	c := &cobra.Command{
		Use:   "simulate",
		Short: "Enroll N virtual devices concurrently, for load tests",
		Long: `simulate runs N virtual devices in one process, each with its own software
key, and enrolls them concurrently against the server. Tokens come from
--token-file (one "device-id token" pair per line) or are minted per device
through the API with --api-token (or $WARD_TOKEN), an API token allowed to
create enrollment tokens for the tenant.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := required(c, "server", "ca", "tenant"); err != nil {
				return err
			}
			if o.groupKeyFile != "" {
				if o.tokenFile != "" || o.apiToken != "" {
					return usageError{errors.New("simulate: --group-key excludes --token-file and --api-token")}
				}
				if !strings.Contains(o.label, ".") {
					return usageError{withHint(errors.New("simulate: --group-key needs --label <tenant>.<group>"),
						"the symmetric key MAC covers the tenant and the group")}
				}
				k, err := readSymmetricKey(o.groupKeyFile)
				if err != nil {
					return usageError{err}
				}
				o.groupKey = k
				return a.simulate(c.Context(), o, c.Flags().Changed("count"))
			}
			if o.apiToken == "" && o.tokenFile == "" {
				o.apiToken = os.Getenv("WARD_TOKEN")
			}
			if (o.apiToken == "") == (o.tokenFile == "") {
				return usageError{withHint(errors.New("simulate: give exactly one of --token-file and --api-token"),
					"--token-file FILE lists \"device-id token\" pairs; --api-token T (or $WARD_TOKEN) mints one token per device")}
			}
			if o.workers < 1 || o.workers > maxSimWorkers {
				return usageError{fmt.Errorf("--workers must be 1 to %d", maxSimWorkers)}
			}
			return a.simulate(c.Context(), o, c.Flags().Changed("count"))
		},
	}
	f := c.Flags()
	f.StringVar(&o.server, "server", "", "Ward server URL, https://host:port")
	f.StringVar(&o.caFile, "ca", "", "PEM file of the CA(s) that sign the server's certificate")
	f.StringVar(&o.tenant, "tenant", "", "tenant ID")
	f.StringVar(&o.label, "label", "", "EST label (default: the tenant)")
	f.IntVar(&o.count, "count", 0, "number of devices (default: every line of --token-file)")
	f.IntVar(&o.workers, "workers", 32, "concurrent enrollments")
	f.StringVar(&o.tokenFile, "token-file", "", `file of "device-id token" lines`)
	f.StringVar(&o.apiToken, "api-token", "", "API token that mints enrollment tokens (default $WARD_TOKEN)")
	f.StringVar(&o.prefix, "device-prefix", "sim-", "device ID prefix with --api-token (IDs are PREFIX00001...)")
	f.BoolVar(&o.basic, "basic", false, "send tokens with HTTP Basic instead of Bearer")
	f.StringVar(&o.groupKeyFile, "group-key", "", "symmetric-key group: the group key file; each device's key is derived from it (needs --label <tenant>.<group>)")
	f.StringVar(&o.state, "state", "", "keep each device's state under DIR/<device> (default: a temporary directory, removed)")
	return c
}

type simDevice struct{ id, token string }

type simResult struct {
	latency time.Duration
	err     error
}

func (a *app) simulate(ctx context.Context, o simOptions, countSet bool) error {
	bundle, err := readFileLimited(o.caFile, maxCAFileSize, "CA bundle")
	if err != nil {
		return usageError{err}
	}
	devices, err := simDevices(o, countSet)
	if err != nil {
		return err
	}
	base := o.state
	if base == "" {
		if base, err = os.MkdirTemp("", "ward-agent-simulate-"); err != nil {
			return err
		}
		defer os.RemoveAll(base)
	}
	var minter *tokenMinter
	if o.apiToken != "" {
		if minter, err = newTokenMinter(o.server, bundle, o.apiToken); err != nil {
			return usageError{err}
		}
	}

	results := make([]simResult, len(devices))
	var done, failed atomic.Int64
	stopProgress := a.progress(len(devices), &done, &failed)
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(o.workers, len(devices)) {
		wg.Go(func() {
			for i := range jobs {
				results[i] = a.simulateOne(ctx, o, bundle, base, minter, devices[i])
				if results[i].err != nil {
					failed.Add(1)
				}
				done.Add(1)
			}
		})
	}
feed:
	for i := range devices {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()

	var lat []time.Duration
	errCount := map[string]int{}
	var errOrder []string
	for _, r := range results {
		if r.err == nil && r.latency > 0 {
			lat = append(lat, r.latency)
		} else if r.err != nil {
			msg := r.err.Error()
			if errCount[msg] == 0 {
				errOrder = append(errOrder, msg)
			}
			errCount[msg]++
		}
	}
	slices.Sort(lat)
	ok := len(lat)
	nFailed := int(failed.Load())
	notRun := len(devices) - ok - nFailed
	fmt.Fprintf(a.stdout, "simulate: %d devices: %d enrolled, %d failed", len(devices), ok, nFailed)
	if notRun > 0 {
		fmt.Fprintf(a.stdout, ", %d not started", notRun)
	}
	fmt.Fprintf(a.stdout, " in %s (%.1f enrollments/s); latency p50 %s p99 %s\n",
		roundDur(elapsed), float64(ok)/elapsed.Seconds(), roundDur(percentile(lat, 0.50)), roundDur(percentile(lat, 0.99)))
	if nFailed == 0 && notRun == 0 {
		return nil
	}
	for i, msg := range errOrder {
		if i == maxReportedErrors {
			fmt.Fprintf(a.stderr, "ward-agent: error:   ... and %d other kinds of failure\n", len(errOrder)-i)
			break
		}
		fmt.Fprintf(a.stderr, "ward-agent: error:   %d x %s\n", errCount[msg], msg)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("simulate: interrupted after %d of %d devices", ok+nFailed, len(devices))
	}
	return fmt.Errorf("simulate: %d of %d enrollments failed", nFailed, len(devices))
}

// simulateOne mints a token if needed and enrolls one device. Only the
// enrollment is timed: that is what a device in the field would wait for.
func (a *app) simulateOne(ctx context.Context, o simOptions, bundle []byte, base string, minter *tokenMinter, d simDevice) simResult {
	if ctx.Err() != nil {
		return simResult{err: ctx.Err()}
	}
	if minter != nil {
		tok, err := minter.mint(ctx, o.tenant, d.id)
		if err != nil {
			return simResult{err: err}
		}
		d.token = tok
	}
	cred := agent.Token(d.token)
	if o.basic {
		cred = agent.BasicToken(d.token)
	}
	if o.groupKey != nil {
		cred = agent.Symmetric(wire.DeriveSymmetricDeviceKey(o.groupKey, d.id))
	}
	start := time.Now()
	_, err := agent.Enroll(ctx, agent.Config{
		Server: o.server, CABundle: bundle, Tenant: o.tenant, Device: d.id, Label: o.label,
		Keystore: newMemKeystore(), StateDir: filepath.Join(base, d.id),
	}, cred)
	if err != nil {
		return simResult{err: fmt.Errorf("%s: %w", d.id, err)}
	}
	return simResult{latency: time.Since(start)}
}

// simDevices builds the device list from the token file or the prefix.
func simDevices(o simOptions, countSet bool) ([]simDevice, error) {
	if o.tokenFile == "" {
		if o.count < 1 {
			return nil, usageError{errors.New("simulate: --count must be at least 1 with --api-token or --group-key")}
		}
		ds := make([]simDevice, o.count)
		for i := range ds {
			ds[i].id = fmt.Sprintf("%s%05d", o.prefix, i+1)
			if err := wire.ValidateDeviceID(ds[i].id); err != nil {
				return nil, usageError{fmt.Errorf("--device-prefix: %w", err)}
			}
		}
		return ds, nil
	}
	b, err := readFileLimited(o.tokenFile, maxSimTokenFileSize, "token file")
	if err != nil {
		return nil, usageError{err}
	}
	ds, err := parseTokenFile(b)
	if err != nil {
		return nil, usageError{fmt.Errorf("token file %s: %w", o.tokenFile, err)}
	}
	if countSet {
		if o.count < 1 || o.count > len(ds) {
			return nil, usageError{fmt.Errorf("--count %d, but the token file has %d devices", o.count, len(ds))}
		}
		ds = ds[:o.count]
	}
	return ds, nil
}

// parseTokenFile reads "device-id token" lines; blank lines and lines
// starting with # are skipped. Errors name the line, never the token.
func parseTokenFile(b []byte) ([]simDevice, error) {
	var ds []simDevice
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want \"device-id token\"", n)
		}
		if err := wire.ValidateDeviceID(fields[0]); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if seen[fields[0]] {
			return nil, fmt.Errorf("line %d: device %s listed twice", n, fields[0])
		}
		seen[fields[0]] = true
		ds = append(ds, simDevice{id: fields[0], token: fields[1]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(ds) == 0 {
		return nil, errors.New("no devices")
	}
	return ds, nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// progress draws a bar on stderr when it is a terminal, and returns a
// function that stops and clears it.
func (a *app) progress(total int, done, failed *atomic.Int64) (stop func()) {
	f, ok := a.stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func() {}
	}
	const width = 40
	draw := func() {
		d := int(done.Load())
		filled := width * d / max(total, 1)
		fmt.Fprintf(f, "\r[%s%s] %d/%d enrolled, %d failed ", strings.Repeat("#", filled), strings.Repeat(".", width-filled), d-int(failed.Load()), total, failed.Load())
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				draw()
				fmt.Fprintln(f)
				return
			case <-t.C:
				draw()
			}
		}
	})
	return func() { close(quit); wg.Wait() }
}

// tokenMinter creates enrollment tokens through the Ward API.
type tokenMinter struct {
	url, apiToken string
	client        *http.Client
}

func newTokenMinter(server string, bundle []byte, apiToken string) (*tokenMinter, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return nil, errors.New("CA bundle: no PEM certificates")
	}
	return &tokenMinter{
		url:      strings.TrimRight(server, "/") + "/api/v1/tokens",
		apiToken: apiToken,
		client: &http.Client{
			Timeout: time.Minute,
			Transport: &http.Transport{
				TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				MaxIdleConnsPerHost: maxSimWorkers,
				ForceAttemptHTTP2:   true,
			},
		},
	}, nil
}

// mint asks for a one-hour enrollment token for device.
func (m *tokenMinter) mint(ctx context.Context, tenant, device string) (string, error) {
	body, _ := json.Marshal(map[string]string{"kind": "enroll", "tenant": tenant, "device": device, "ttl": "1h"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+m.apiToken)
	resp, err := m.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("minting a token for %s: %w", device, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponseSize+1))
	if err != nil {
		return "", fmt.Errorf("minting a token for %s: %w", device, err)
	}
	if len(b) > maxAPIResponseSize {
		return "", fmt.Errorf("minting a token for %s: response over %d bytes", device, maxAPIResponseSize)
	}
	if resp.StatusCode/100 != 2 {
		var p struct {
			Title, Detail string
		}
		json.Unmarshal(b, &p)
		msg := strings.TrimSpace(p.Title + ": " + p.Detail)
		if p.Title == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return "", fmt.Errorf("minting a token for %s: API answered %d: %s", device, resp.StatusCode, truncate(msg, 256))
	}
	var out struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Token == "" {
		return "", fmt.Errorf("minting a token for %s: the API response has no token", device)
	}
	return out.Token, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// readSymmetricKey reads a symmetric key file (raw, hex or base64).
func readSymmetricKey(path string) ([]byte, error) {
	raw, err := readFileLimited(path, maxKeyFileSize, "group key file")
	if err != nil {
		return nil, err
	}
	k, err := parseSymKey(raw)
	if err != nil {
		return nil, fmt.Errorf("group key file %s: %w", path, err)
	}
	return k, nil
}

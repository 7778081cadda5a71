// Command est measures EST enrollment against a real ward server: it
// starts `ward server` on a fresh SQLite data directory (the durable,
// fsync-on-commit default), mints one-time tokens, then runs C concurrent
// clients that each open a NEW TLS connection per enrollment (handshake
// included) and POST simpleenroll. It prints enrollments per second,
// server CPU per enrollment (from /proc, user+system) and latency.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardiot/ward/bench/internal/proc"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/wire"
)

func main() {
	ward := flag.String("ward", "", "path of the ward binary")
	n := flag.Int("n", 1000, "enrollments")
	pq := flag.Bool("pq", false, "offer the X25519MLKEM768 hybrid key exchange like a Go client (default: X25519, like device TLS stacks)")
	conc := flag.Int("c", 50, "concurrent clients")
	flag.Parse()
	if *pq {
		curves = []tls.CurveID{tls.X25519MLKEM768, tls.X25519}
	}
	if err := run(*ward, *n, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "bench/est:", err)
		os.Exit(1)
	}
}

var curves = []tls.CurveID{tls.X25519, tls.CurveP256}

func run(ward string, n, conc int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "ward-bench-est-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command(ward, "server", "--data", dir, "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--mqtt-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "warn")
	stderr, _ := cmd.StderrPipe()
	cmd.Stdout = io.Discard
	// warn level hides the "listening" line; read the address from ward.json.
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	go io.Copy(os.Stderr, bufio.NewReader(stderr))
	addr, err := waitAddr(dir)
	if err != nil {
		return err
	}
	admin, err := client.FromFiles(addr, filepath.Join(dir, "admin.token"), filepath.Join(dir, "ca.pem"))
	if err != nil {
		return err
	}
	if err := admin.Do(ctx, "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: "bench"}, nil); err != nil {
		return err
	}
	type job struct {
		token string
		csr   []byte
	}
	jobs := make([]job, n)
	fmt.Fprintf(os.Stderr, "preparing %d tokens and CSRs...\n", n)
	var wg sync.WaitGroup
	var prepErr atomic.Value
	sem := make(chan struct{}, 8)
	for i := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dev := fmt.Sprintf("b-%06d", i)
			var tk api.CreatedToken
			if err := admin.Do(ctx, "POST", "/api/v1/tokens", api.CreateTokenRequest{Kind: "enroll", Tenant: "bench", Device: dev, TTL: "1h"}, &tk); err != nil {
				prepErr.Store(err)
				return
			}
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			u, _ := url.Parse(wire.DeviceURI("bench", dev))
			csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: dev}, URIs: []*url.URL{u}}, key)
			jobs[i] = job{tk.Secret, wire.EncodeBase64Body(csr)}
		}()
	}
	wg.Wait()
	if e := prepErr.Load(); e != nil {
		return e.(error)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	endpoint := "https://" + addr + wire.ESTPath("bench", wire.ESTSimpleEnroll)

	cpu0, err := proc.CPU(cmd.Process.Pid)
	if err != nil {
		return err
	}
	lat := make([]time.Duration, n)
	var next, failed atomic.Int64
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				// A new transport per enrollment: every enrollment pays a
				// full TLS handshake, as a device would.
				// Devices' TLS stacks (mbedTLS, wolfSSL) offer X25519 or
				// P-256, not the post-quantum hybrid Go offers by default.
				tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, CurvePreferences: curves}, DisableKeepAlives: true}
				hc := &http.Client{Transport: tr, Timeout: 60 * time.Second}
				t0 := time.Now()
				req, _ := http.NewRequest("POST", endpoint, bytes.NewReader(jobs[i].csr))
				req.Header.Set("Content-Type", wire.ESTContentTypePKCS10)
				req.Header.Set("Authorization", "Bearer "+jobs[i].token)
				resp, err := hc.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					fmt.Fprintln(os.Stderr, "enroll:", err)
				}
				tr.CloseIdleConnections()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := proc.CPU(cmd.Process.Pid)
	slices.Sort(lat)
	ok := n - int(failed.Load())
	cpuPer := (cpu1 - cpu0) / time.Duration(max(ok, 1))
	res := map[string]any{
		"enrollments": ok, "failed": failed.Load(), "concurrency": conc, "seconds": elapsed.Seconds(),
		"enrollments_per_s": float64(ok) / elapsed.Seconds(), "server_cpu_ms_per_enrollment": float64(cpuPer.Microseconds()) / 1000,
		"p50_ms": float64(lat[n/2].Microseconds()) / 1000, "p99_ms": float64(lat[n*99/100].Microseconds()) / 1000,
	}
	fmt.Printf("EST simpleenroll, %d clients, new TLS 1.3 connection each (key exchange %v), SQLite (synchronous=FULL):\n", conc, curves[0])
	fmt.Printf("  %d enrolled (%d failed) in %.2fs: %.0f enrollments/s\n", ok, failed.Load(), elapsed.Seconds(), res["enrollments_per_s"])
	fmt.Printf("  server CPU per enrollment: %.3f ms (user+system, handshake included; goal <= 1 ms)\n", res["server_cpu_ms_per_enrollment"])
	fmt.Printf("  latency p50 %.1f ms, p99 %.1f ms\n", res["p50_ms"], res["p99_ms"])
	b, _ := json.Marshal(res)
	fmt.Println("  json:", string(b))
	if failed.Load() > 0 {
		return fmt.Errorf("%d enrollments failed", failed.Load())
	}
	return nil
}

func waitAddr(dir string) (string, error) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join(dir, "ward.json"))
		if err == nil {
			var st struct {
				API string `json:"api_addr"`
			}
			if json.Unmarshal(b, &st) == nil && st.API != "" && !strings.HasSuffix(st.API, ":0") {
				return st.API, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("server did not start")
}

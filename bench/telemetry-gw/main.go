// Command telemetry-gw measures server CPU per verified telemetry message
// through the MQTT gateway: it starts a real `ward server` (SQLite), enrolls
// devices with the agent package, and has them publish pre-made envelopes
// at QoS 1, first COSE_Mac0 (epoch keys), then COSE_Sign1 with Ed25519 device
// keys. Server CPU comes from /proc (user+system) over the publishing window
// only; the figure includes TLS record handling, MQTT parsing, policy,
// rate limits, verification, replay checks, schema validation and the
// batched store of the recent window.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/bench/internal/proc"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/wire"
)

func main() {
	ward := flag.String("ward", "", "path of the ward binary")
	devices := flag.Int("devices", 20, "devices")
	msgs := flag.Int("messages", 2000, "messages per device per run")
	flag.Parse()
	if err := run(*ward, *devices, *msgs); err != nil {
		fmt.Fprintln(os.Stderr, "bench/telemetry-gw:", err)
		os.Exit(1)
	}
}

const schema = `{"type":"object","properties":{"celsius":{"type":"number"},"rh":{"type":"number"}},"required":["celsius"]}`

func run(ward string, nDev, nMsg int) error {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "ward-bench-tel-*")
	defer os.RemoveAll(dir)
	cmd := exec.Command(ward, "server", "--data", filepath.Join(dir, "data"), "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--mqtt-addr", "127.0.0.1:0", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	// The defaults are conservative per-device rates; a benchmark device
	// sends much faster.
	cfg := filepath.Join(dir, "ward.yaml")
	os.WriteFile(cfg, []byte("device_rate: {messages_per_second: 100000, bytes_per_second: 100000000}\ntenant_rate: {messages_per_second: 1000000, bytes_per_second: 1000000000}\n"), 0o600)
	cmd.Args = append(cmd.Args, "--config", cfg)
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	var st struct {
		API  string `json:"api_addr"`
		MQTT string `json:"mqtt_addr"`
	}
	for i := 0; ; i++ {
		b, err := os.ReadFile(filepath.Join(dir, "data", "ward.json"))
		if err == nil && json.Unmarshal(b, &st) == nil && st.API != "" && !strings.HasSuffix(st.API, ":0") && !strings.HasSuffix(st.MQTT, ":0") {
			break
		}
		if i > 600 {
			return fmt.Errorf("server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	admin, err := client.FromFiles(st.API, filepath.Join(dir, "data", "admin.token"), filepath.Join(dir, "data", "ca.pem"))
	if err != nil {
		return err
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "data", "ca.pem"))
	if err := admin.Do(ctx, "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: "bench"}, nil); err != nil {
		return err
	}
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/bench/schemas", api.RegisterSchemaRequest{ID: "env", Version: 1, Schema: []byte(schema)}, nil); err != nil {
		return err
	}
	type dev struct {
		a    *agent.Agent
		conn *agent.Conn
	}
	devs := make([]dev, nDev)
	for i := range devs {
		id := fmt.Sprintf("d%03d", i)
		var tok api.CreatedToken
		if err := admin.Do(ctx, "POST", "/api/v1/tokens", api.CreateTokenRequest{Kind: "enroll", Tenant: "bench", Device: id, TTL: "1h"}, &tok); err != nil {
			return err
		}
		ks, err := keystore.Open("file:" + filepath.Join(dir, id, "keys"))
		if err != nil {
			return err
		}
		c := agent.Config{Server: "https://" + st.API, CABundle: caPEM, Tenant: "bench", Device: id, Keystore: ks,
			StateDir: filepath.Join(dir, id, "state"), Algorithm: keystore.Ed25519}
		if _, err := agent.Enroll(ctx, c, agent.Token(tok.Secret)); err != nil {
			return fmt.Errorf("enroll %s: %w", id, err)
		}
		a, err := agent.New(agent.Config{Keystore: ks, StateDir: c.StateDir})
		if err != nil {
			return err
		}
		conn, err := a.ConnectMQTT(ctx, st.MQTT)
		if err != nil {
			return err
		}
		if err := conn.SyncMAC(); err != nil {
			return err
		}
		if err := admin.Do(ctx, "POST", "/api/v1/tenants/bench/devices/"+id+"/mac-secret", struct{}{}, nil); err != nil {
			return err
		}
		devs[i] = dev{a, conn}
	}
	for _, d := range devs {
		for d.a.MACEpoch() == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	payload := []byte(`{"celsius":21.25,"rh":48.5}`)
	for _, kind := range []string{"COSE_Mac0 (HMAC-SHA256, epoch key)", "COSE_Sign1 (EdDSA, device key)"} {
		envs := make([][][]byte, nDev)
		for i, d := range devs {
			envs[i] = make([][]byte, nMsg)
			for j := range envs[i] {
				var e []byte
				var err error
				if strings.HasPrefix(kind, "COSE_Mac0") {
					e, err = d.a.MacTelemetry("env", 1, payload)
				} else {
					e, err = d.a.SignTelemetry("env", 1, payload)
				}
				if err != nil {
					return err
				}
				envs[i][j] = e
			}
		}
		cpu0, _ := proc.CPU(cmd.Process.Pid)
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, nDev)
		for i, d := range devs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, e := range envs[i] {
					if err := d.conn.Publish(wire.TopicTelemetry+"/env", e, 1); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		cpu1, _ := proc.CPU(cmd.Process.Pid)
		close(errs)
		for err := range errs {
			return fmt.Errorf("%s: %w", kind, err)
		}
		total := nDev * nMsg
		fmt.Printf("%s: %d messages at QoS 1 from %d devices in %.2fs (%.0f msg/s); server CPU %.1f µs per verified message\n",
			kind, total, nDev, elapsed.Seconds(), float64(total)/elapsed.Seconds(), float64((cpu1-cpu0).Microseconds())/float64(total))
	}
	// Every message was verified and stored (none refused).
	var rs []api.Reading
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/bench/devices/d000/telemetry?limit=10000", nil, &rs); err != nil {
		return err
	}
	fmt.Printf("check: device d000 has %d verified readings stored (want %d)\n", len(rs), 2*nMsg)
	io.Discard.Write(nil)
	return nil
}

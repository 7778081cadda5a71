// Package e2e runs the real ward binary as a separate process, the way an
// operator would, and checks what survives crashes and restarts.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/client"
)

var wardBin, agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ward-e2e-bin-*")
	if err != nil {
		panic(err)
	}
	wardBin, agentBin = filepath.Join(dir, "ward"), filepath.Join(dir, "ward-agent")
	build := exec.Command("go", "build", "-o", dir, "github.com/wardiot/ward/cmd/ward", "github.com/wardiot/ward/cmd/ward-agent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building ward and ward-agent:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running `ward server`.
type proc struct {
	cmd      *exec.Cmd
	apiAddr  string
	mqttAddr string
	dir      string
}

// startServer runs `ward server` on random loopback ports and waits for its
// "listening" log line, which carries the bound addresses.
func startServer(t *testing.T, dir string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"server", "--data", dir, "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--mqtt-addr", "127.0.0.1:0", "--log-format", "json"}, extra...)
	cmd := exec.Command(wardBin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, dir: dir}
	t.Cleanup(func() { p.kill() })
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				API  string `json:"api"`
				MQTT string `json:"mqtt"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "ward server listening" && !sent {
				p.mqttAddr = strings.TrimPrefix(line.MQTT, "mqtts://")
				found <- strings.TrimPrefix(line.API, "https://")
				sent = true
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case p.apiAddr = <-found:
	case <-time.After(60 * time.Second):
		t.Fatal("ward server did not report listening within 60 s")
	}
	return p
}

func (p *proc) kill() {
	if p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

func (p *proc) admin(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.FromFiles(p.apiAddr, filepath.Join(p.dir, "admin.token"), filepath.Join(p.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ward(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(wardBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

var bg = context.Background()

// Package tpmtest runs a software TPM 2.0 (swtpm) for tests: a real TPM
// implementation that go-tpm, go-attestation and tpm2-tools can all talk
// to, so tests prove interoperability with code no one here wrote.
//
// Tests skip when swtpm is not installed (Debian package swtpm, plus
// swtpm-tools for [Manufactured]) unless the environment variable CI is
// non-empty, in which case they fail.
package tpmtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/wardiot/ward/agent/internal/peertest"
)

const (
	// startTimeout bounds waiting for swtpm to accept connections.
	startTimeout = 15 * time.Second
	// startAttempts retries when a port picked free was taken meanwhile.
	startAttempts = 20
)

// Sim is a running swtpm.
type Sim struct {
	// Addr is the TPM command port, "127.0.0.1:PORT". It takes raw TPM
	// commands, one connection at a time.
	Addr string
	// CtrlAddr is swtpm's control port (power, reset, locality), always
	// the port after Addr's.
	CtrlAddr string
	// StateDir holds the TPM's persistent state.
	StateDir string
	// EKCADir is set by [Manufactured]: the local CA that signed the EK
	// certificate (issuercert.pem and swtpm-localca-rootca-cert.pem).
	EKCADir string
}

// Spec returns the keystore spec for this TPM: "tpm:tcp://127.0.0.1:PORT".
func (s *Sim) Spec() string { return "tpm:tcp://" + s.Addr }

// TCTI returns the TPM2TOOLS_TCTI value that points tpm2-tools at this
// TPM. tpm2-tools and Go code cannot talk to it at the same time: swtpm
// serves one connection at a time.
func (s *Sim) TCTI() string {
	host, port, _ := net.SplitHostPort(s.Addr)
	return fmt.Sprintf("swtpm:host=%s,port=%s", host, port)
}

// Start starts a fresh swtpm (no EK certificate) for the duration of the
// test and returns its command address, "127.0.0.1:PORT".
func Start(t testing.TB) string {
	t.Helper()
	return StartSim(t).Addr
}

// StartSim is Start returning the whole [Sim].
func StartSim(t testing.TB) *Sim {
	t.Helper()
	peertest.Require(t, "swtpm", "swtpm")
	dir := t.TempDir()
	return run(t, dir)
}

// Manufactured starts a swtpm provisioned like a real device by swtpm_setup:
// an RSA EK at 0x81010001 with its certificate in NV 0x01c00002, an ECC
// P-384 EK at 0x81010016, a platform certificate, SHA-256 PCR bank, all
// signed by a private local CA in EKCADir. Provisioning takes about two
// seconds.
func Manufactured(t testing.TB) *Sim {
	t.Helper()
	peertest.Require(t, "swtpm", "swtpm")
	peertest.Require(t, "swtpm_setup", "swtpm-tools")
	peertest.Require(t, "swtpm_localca", "swtpm-tools")
	root := t.TempDir()
	state := filepath.Join(root, "state")
	ca := filepath.Join(root, "localca")
	for _, d := range []string{state, ca} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		p := filepath.Join(root, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caConf := write("swtpm-localca.conf", fmt.Sprintf(
		"statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca))
	caOpts := write("swtpm-localca.options", "--platform-manufacturer Ward\n--platform-version 2.1\n--platform-model wardtest\n")
	setupConf := write("swtpm_setup.conf", fmt.Sprintf(
		"create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", caConf, caOpts))
	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", state, "--config", setupConf,
		"--create-ek-cert", "--create-platform-cert", "--ecc", "--lock-nvram",
		"--pcr-banks", "sha256", "--overwrite")
	// swtpm_setup also reads XDG_CONFIG_HOME/swtpm_setup.conf; keep it away
	// from the developer's own configuration.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+root, "HOME="+root)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	s := run(t, state)
	s.EKCADir = ca
	return s
}

// StartState starts another swtpm on an existing state directory, such
// as a copy of a running Sim's StateDir: the same TPM (same seeds, EK,
// NV and counters) powered on again, or its state rolled back to the
// copy. swtpm issues TPM2_Startup(CLEAR) itself.
func StartState(t testing.TB, stateDir string) *Sim {
	t.Helper()
	peertest.Require(t, "swtpm", "swtpm")
	return run(t, stateDir)
}

// freePorts returns a free loopback port P whose neighbour P+1 is free
// too: tpm2-tools' swtpm TCTI expects the control port right after the
// command port. Both are released before returning, so a collision with
// another process is possible and run retries.
func freePorts(t testing.TB) (cmd, ctrl int, ok bool) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := l.Addr().(*net.TCPAddr).Port
	if p >= 65535 {
		return 0, 0, false
	}
	l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
	if err != nil {
		return 0, 0, false
	}
	l2.Close()
	return p, p + 1, true
}

func run(t testing.TB, state string) *Sim {
	t.Helper()
	var lastErr error
	for range startAttempts {
		port, ctrl, ok := freePorts(t)
		if !ok {
			lastErr = errors.New("no free pair of adjacent loopback ports")
			continue
		}
		s := &Sim{
			Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			CtrlAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ctrl)),
			StateDir: state,
		}
		var stderr bytes.Buffer
		cmd := exec.Command("swtpm", "socket", "--tpm2",
			"--tpmstate", "dir="+state,
			"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port),
			"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(ctrl),
			"--flags", "not-need-init,startup-clear")
		cmd.Stdout = &stderr
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatalf("start swtpm: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if err := waitReady(s.Addr, exited); err != nil {
			cmd.Process.Kill()
			<-exited
			// A port collision shows up as an early exit; try new ports.
			lastErr = fmt.Errorf("%v: %s", err, stderr.String())
			continue
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		return s
	}
	t.Fatalf("swtpm did not start after %d attempts: %v", startAttempts, lastErr)
	return nil
}

// waitReady polls until addr accepts a connection or swtpm exits.
func waitReady(addr string, exited <-chan error) error {
	deadline := time.Now().Add(startTimeout)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swtpm not accepting on %s after %v", addr, startTimeout)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("swtpm exited: %v", err)
		case <-poll.C:
		}
	}
}

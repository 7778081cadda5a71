// Package swtpm runs a software TPM 2.0 (swtpm) as a child process: a
// real TPM implementation that go-tpm, go-attestation and tpm2-tools can
// all talk to. The test helper package tpmtest and `ward demo` both use
// it, so there is one way to manufacture and start a simulator.
//
// [Manufacture] provisions a TPM the way a device maker does, with
// swtpm_setup: endorsement keys, an EK certificate and a platform
// certificate signed by a private local CA. [Start] runs swtpm on a state
// directory, listening on loopback only.
package swtpm

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

const (
	// startTimeout bounds waiting for swtpm to accept connections.
	startTimeout = 15 * time.Second
	// startAttempts retries when a port picked free was taken meanwhile.
	startAttempts = 20
	// maxOutput bounds the swtpm output kept for error messages.
	maxOutput = 8 << 10
)

// Programs are the executables Manufacture and Start need: swtpm (Debian
// package swtpm), swtpm_setup and swtpm_localca (package swtpm-tools).
var Programs = []string{"swtpm", "swtpm_setup", "swtpm_localca"}

// Missing returns the [Programs] not found on PATH.
func Missing() []string {
	var missing []string
	for _, p := range Programs {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	return missing
}

// Local CA file names swtpm_localca writes in the EK CA directory.
const (
	// RootCertFile is the local CA's self-signed root.
	RootCertFile = "swtpm-localca-rootca-cert.pem"
	// IssuerCertFile is the intermediate that signs EK certificates.
	IssuerCertFile = "issuercert.pem"
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
	// EKCADir is the local CA that signed the EK certificate
	// ([RootCertFile] and [IssuerCertFile]) when the TPM was made by
	// [Manufacture]; empty otherwise.
	EKCADir string

	stopOnce sync.Once
	cmd      *exec.Cmd
	exited   chan struct{} // closed when swtpm has exited
	waitErr  error         // swtpm's exit status, set before exited closes
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

// EKRootsPEM returns the local CA's root and issuer certificates, PEM,
// ready for a verifier's EK roots.
func (s *Sim) EKRootsPEM() ([]byte, error) {
	if s.EKCADir == "" {
		return nil, errors.New("swtpm: this TPM was not manufactured, it has no EK certificate")
	}
	var out []byte
	for _, name := range []string{RootCertFile, IssuerCertFile} {
		b, err := os.ReadFile(filepath.Join(s.EKCADir, name))
		if err != nil {
			return nil, fmt.Errorf("swtpm: read EK CA: %w", err)
		}
		out = append(out, b...)
	}
	return out, nil
}

// Stop kills swtpm and waits for it to exit. The state directory stays.
// Stop may be called more than once.
func (s *Sim) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd == nil {
			return
		}
		s.cmd.Process.Kill()
		<-s.exited
	})
}

// Manufacture provisions a TPM in dir like a device maker would, with
// swtpm_setup: an RSA EK at 0x81010001 with its certificate in NV
// 0x01c00002, an ECC P-384 EK at 0x81010016, a platform certificate, the
// SHA-256 PCR bank, NV locked, all signed by a private local CA. It
// creates dir/state (the TPM state, for [Start]) and dir/localca (the CA)
// and returns their paths. It takes about two seconds.
func Manufacture(dir string) (stateDir, ekCADir string, err error) {
	state := filepath.Join(dir, "state")
	ca := filepath.Join(dir, "localca")
	for _, d := range []string{state, ca} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", "", fmt.Errorf("swtpm: %w", err)
		}
	}
	write := func(name, content string) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, []byte(content), 0o600)
	}
	caConf, err := write("swtpm-localca.conf", fmt.Sprintf(
		"statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca))
	if err != nil {
		return "", "", fmt.Errorf("swtpm: %w", err)
	}
	caOpts, err := write("swtpm-localca.options", "--platform-manufacturer Ward\n--platform-version 2.1\n--platform-model wardtest\n")
	if err != nil {
		return "", "", fmt.Errorf("swtpm: %w", err)
	}
	setupConf, err := write("swtpm_setup.conf", fmt.Sprintf(
		"create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", caConf, caOpts))
	if err != nil {
		return "", "", fmt.Errorf("swtpm: %w", err)
	}
	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", state, "--config", setupConf,
		"--create-ek-cert", "--create-platform-cert", "--ecc", "--lock-nvram",
		"--pcr-banks", "sha256", "--overwrite")
	// swtpm_setup also reads XDG_CONFIG_HOME/swtpm_setup.conf; keep it away
	// from the user's own configuration.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("swtpm_setup: %v\n%s", err, tail(out))
	}
	return state, ca, nil
}

// StartManufactured is [Manufacture] then [Start].
func StartManufactured(dir string) (*Sim, error) {
	state, ca, err := Manufacture(dir)
	if err != nil {
		return nil, err
	}
	s, err := Start(state)
	if err != nil {
		return nil, err
	}
	s.EKCADir = ca
	return s, nil
}

// Start runs swtpm on stateDir (fresh, or made by [Manufacture], or a
// copy of another TPM's state) on two adjacent free loopback ports, and
// returns once it accepts connections. swtpm issues TPM2_Startup(CLEAR)
// itself. Call [Sim.Stop] when done.
func Start(stateDir string) (*Sim, error) {
	var lastErr error
	for range startAttempts {
		port, ctrl, err := freePorts()
		if err != nil {
			lastErr = err
			continue
		}
		s := &Sim{
			Addr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			CtrlAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ctrl)),
			StateDir: stateDir,
			exited:   make(chan struct{}),
		}
		var out bytes.Buffer
		s.cmd = exec.Command("swtpm", "socket", "--tpm2",
			"--tpmstate", "dir="+stateDir,
			"--server", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(port),
			"--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+strconv.Itoa(ctrl),
			"--flags", "not-need-init,startup-clear")
		s.cmd.Stdout = &out
		s.cmd.Stderr = &out
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start swtpm: %w", err)
		}
		go func() {
			s.waitErr = s.cmd.Wait()
			close(s.exited)
		}()
		if err := s.waitReady(); err != nil {
			s.cmd.Process.Kill()
			<-s.exited
			// A port collision shows up as an early exit; try new ports.
			lastErr = fmt.Errorf("%v: %s", err, tail(out.Bytes()))
			continue
		}
		return s, nil
	}
	return nil, fmt.Errorf("swtpm did not start after %d attempts: %v", startAttempts, lastErr)
}

// freePorts returns a free loopback port P whose neighbour P+1 is free
// too: tpm2-tools' swtpm TCTI expects the control port right after the
// command port. Both are released before returning, so a collision with
// another process is possible and Start retries.
func freePorts() (cmd, ctrl int, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer l.Close()
	p := l.Addr().(*net.TCPAddr).Port
	if p >= 65535 {
		return 0, 0, errors.New("no free pair of adjacent loopback ports")
	}
	l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
	if err != nil {
		return 0, 0, errors.New("no free pair of adjacent loopback ports")
	}
	l2.Close()
	return p, p + 1, nil
}

// waitReady polls until swtpm accepts connections or exits.
func (s *Sim) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swtpm not accepting on %s after %v", s.Addr, startTimeout)
		}
		select {
		case <-s.exited:
			return fmt.Errorf("swtpm exited: %v", s.waitErr)
		case <-poll.C:
		}
	}
}

// tail keeps the end of a program's output for an error message.
func tail(b []byte) []byte {
	if len(b) > maxOutput {
		return b[len(b)-maxOutput:]
	}
	return b
}

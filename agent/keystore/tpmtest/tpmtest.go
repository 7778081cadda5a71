// Package tpmtest runs a software TPM 2.0 (swtpm) for tests: a real TPM
// implementation that go-tpm, go-attestation and tpm2-tools can all talk
// to, so tests prove interoperability with code no one here wrote. The
// simulator itself is run by package swtpm; this package ties it to a
// test's lifetime.
//
// Tests skip when swtpm is not installed (Debian package swtpm, plus
// swtpm-tools for [Manufactured]) unless the environment variable CI is
// non-empty, in which case they fail.
package tpmtest

import (
	"testing"

	"github.com/wardiot/ward/agent/internal/peertest"
	"github.com/wardiot/ward/agent/keystore/swtpm"
)

// Sim is a running swtpm; it is stopped when the test ends.
type Sim = swtpm.Sim

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
	return start(t, t.TempDir())
}

// Manufactured starts a swtpm provisioned like a real device by swtpm_setup
// (see [swtpm.Manufacture]): an RSA EK at 0x81010001 with its certificate
// in NV 0x01c00002, an ECC P-384 EK at 0x81010016, a platform certificate,
// SHA-256 PCR bank, all signed by a private local CA in EKCADir.
// Provisioning takes about two seconds.
func Manufactured(t testing.TB) *Sim {
	t.Helper()
	peertest.Require(t, "swtpm", "swtpm")
	peertest.Require(t, "swtpm_setup", "swtpm-tools")
	peertest.Require(t, "swtpm_localca", "swtpm-tools")
	state, ca, err := swtpm.Manufacture(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, state)
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
	return start(t, stateDir)
}

func start(t testing.TB, state string) *Sim {
	t.Helper()
	s, err := swtpm.Start(state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Package peertest decides what a test does when an external program it
// needs (swtpm, softhsm2, tpm2-tools, openssl) is missing: skip on a
// developer's machine, fail in CI (env CI non-empty), where every peer is
// mandatory.
package peertest

import (
	"os"
	"os/exec"
	"testing"
)

// Require returns the path of program, or skips t naming the Debian
// package to install; if CI is set it fails t instead.
func Require(t testing.TB, program, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(program)
	if err == nil {
		return p
	}
	Missing(t, program+" not found; install the Debian package "+debianPackage)
	return ""
}

// Missing skips t with msg, or fails it when CI is set.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (mandatory because CI is set)", msg)
	}
	t.Skip(msg)
}

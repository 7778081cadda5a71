package swtpm_test

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/wardiot/ward/agent/keystore/swtpm"
)

// TestMissingWithoutSwtpmOnPath: with a PATH that holds none of the
// programs, Missing names every one of them.
func TestMissingWithoutSwtpmOnPath(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if got := swtpm.Missing(); !slices.Equal(got, swtpm.Programs) {
		t.Fatalf("Missing() = %v, want %v", got, swtpm.Programs)
	}
}

// TestStartManufacturedAndStop: a manufactured TPM answers on its port,
// its EK roots parse as CA certificates, and Stop frees the port.
func TestStartManufacturedAndStop(t *testing.T) {
	if m := swtpm.Missing(); len(m) > 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v not found (mandatory because CI is set)", m)
		}
		t.Skipf("%v not found; install the Debian packages swtpm and swtpm-tools", m)
	}
	s, err := swtpm.StartManufactured(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	roots, err := s.EKRootsPEM()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for b, rest := pem.Decode(roots); b != nil; b, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || !c.IsCA {
			t.Fatalf("EK root %d: %v (CA %v)", n, err, c != nil && c.IsCA)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d EK CA certificates, want root and issuer", n)
	}
	c, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.Stop()
	s.Stop() // idempotent
	if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("swtpm still listening after Stop")
	}
}

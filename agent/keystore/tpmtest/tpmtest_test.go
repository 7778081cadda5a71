package tpmtest

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/wardiot/ward/agent/internal/peertest"
	"github.com/wardiot/ward/agent/internal/tpmconn"
)

// TestStartAnswersTPMCommands checks the simulator speaks TPM 2.0 on the
// returned address: TPM2_GetRandom through go-tpm.
func TestStartAnswersTPMCommands(t *testing.T) {
	addr := Start(t)
	tpm, err := tpmconn.Open("tcp://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	rsp, err := tpm2.GetRandom{BytesRequested: 16}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	if len(rsp.RandomBytes.Buffer) != 16 {
		t.Fatalf("GetRandom returned %d bytes", len(rsp.RandomBytes.Buffer))
	}
}

// TestManufacturedHasEKCertificate reads the RSA EK certificate from NV
// with tpm2-tools and has openssl verify it against the local CA.
func TestManufacturedHasEKCertificate(t *testing.T) {
	peertest.Require(t, "tpm2_nvread", "tpm2-tools")
	openssl := peertest.Require(t, "openssl", "openssl")
	sim := Manufactured(t)
	dir := t.TempDir()
	ekDER := filepath.Join(dir, "ek.der")
	cmd := exec.Command("tpm2_nvread", "-C", "o", "-o", ekDER, "0x1c00002")
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+sim.TCTI())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_nvread: %v\n%s", err, out)
	}
	der, err := os.ReadFile(ekDER)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("EK certificate: %v", err)
	}
	ekPEM := filepath.Join(dir, "ek.pem")
	if err := os.WriteFile(ekPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(sim.EKCADir, "swtpm-localca-rootca-cert.pem")
	issuer := filepath.Join(sim.EKCADir, "issuercert.pem")
	t.Logf("EK certificate valid from %v to %v; now %v", cert.NotBefore, cert.NotAfter, time.Now().UTC())
	out, err := exec.Command(openssl, "verify", "-CAfile", root, "-untrusted", issuer, ekPEM).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl verify EK certificate: %v\n%s", err, out)
	}
}

package pki_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/pki/pkitest"
)

// interop runs the end-to-end checks against openssl: chain verification,
// OCSP good then revoked (with and without nonce), and the CRL. It returns
// the directory where it wrote its files.
func interop(t *testing.T, e *env, alg pki.Algorithm) string {
	needTool(t, "openssl")
	ctx := context.Background()
	dir := t.TempDir()
	tcas, err := e.a.CreateTenantCAs(ctx, "acme", alg, e.km)
	if err != nil {
		t.Fatal(err)
	}
	root := mustParseCert(t, tcas.Root.CertDER)
	iss := mustParseCert(t, tcas.Issuing.CertDER)
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "dev-1", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "dev-1")})
	if err != nil {
		t.Fatal(err)
	}
	writeCertPEM(t, dir, "root.pem", root)
	writeCertPEM(t, dir, "issuing.pem", iss)
	writeCertPEM(t, dir, "device.pem", is.Cert)

	out, err := runTool(t, dir, "openssl", "verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "device.pem")
	if err != nil || !strings.Contains(out, "device.pem: OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	out, _ = runTool(t, dir, "openssl", "x509", "-in", "device.pem", "-noout", "-text")
	for _, want := range []string{"URI:urn:ward:acme:device:dev-1", "TLS Web Client Authentication", "CA Issuers - URI:" + e.srv.URL + "/ca/",
		"OCSP - URI:" + e.a.OCSPURL(tcas.Issuing.ID), "URI:" + e.a.CRLURL(tcas.Issuing.ID), "Subject: O = acme, CN = dev-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("device certificate lacks %q:\n%s", want, out)
		}
	}
	if len(is.Cert.OCSPServer) != 1 {
		t.Fatalf("OCSP URLs %v", is.Cert.OCSPServer)
	}
	aia := is.Cert.OCSPServer[0]

	ocspCheck := func(want string, extra ...string) string {
		t.Helper()
		args := append([]string{"ocsp", "-issuer", "issuing.pem", "-cert", "device.pem", "-url", aia,
			"-CAfile", "root.pem", "-verify_other", "issuing.pem"}, extra...)
		out, err := runTool(t, dir, "openssl", args...)
		if err != nil || !strings.Contains(out, "device.pem: "+want) || !strings.Contains(out, "Response verify OK") || strings.Contains(out, "WARNING") {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	ocspCheck("good")
	ocspCheck("good", "-no_nonce")
	ocspCheck("good", "-no_nonce") // served from the cache

	// Subscribers hear about the revocation (the gateway cuts sessions).
	heard := make(chan pki.Revoked, 1)
	cancel := e.a.Revocations().Subscribe(func(r pki.Revoked) { heard <- r })
	defer cancel()
	if _, err := e.a.Revoke(ctx, is.Record.Serial, pki.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if r := <-heard; r.Serial != is.Record.Serial || r.Reason != pki.ReasonKeyCompromise {
		t.Fatalf("subscriber heard %+v", r)
	}
	if _, ok := e.a.Revocations().Lookup(is.Cert.SerialNumber); !ok {
		t.Fatal("revocation set does not know the revoked serial")
	}
	for _, extra := range [][]string{nil, {"-no_nonce"}} {
		out := ocspCheck("revoked", extra...)
		if !strings.Contains(out, "Reason: keyCompromise") {
			t.Fatalf("OCSP revoked response lacks the reason:\n%s", out)
		}
	}

	// The CRL is regenerated in the background; poll the handler.
	crlURL := is.Cert.CRLDistributionPoints[0]
	serialHex := fmt.Sprintf("%X", is.Cert.SerialNumber.Bytes()) // openssl prints whole octets
	var crlText string
	waitFor(t, "the CRL to list the revoked serial", func() bool {
		resp, err := http.Get(crlURL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "application/pkix-crl" {
			t.Fatalf("CRL Content-Type %q", ct)
		}
		b, _ := io.ReadAll(resp.Body)
		if err := os.WriteFile(filepath.Join(dir, "crl.der"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		crlText, err = runTool(t, dir, "openssl", "crl", "-in", "crl.der", "-inform", "DER", "-text", "-noout")
		if err != nil {
			t.Fatalf("openssl crl: %v\n%s", err, crlText)
		}
		return strings.Contains(crlText, "Serial Number: "+serialHex)
	})
	if !regexp.MustCompile(`(?s)Serial Number: ` + serialHex + `.*Key Compromise`).MatchString(crlText) {
		t.Fatalf("CRL lacks the reason:\n%s", crlText)
	}
	out, err = runTool(t, dir, "openssl", "crl", "-in", "crl.der", "-inform", "DER", "-CAfile", "issuing.pem", "-verify", "-noout")
	if err != nil || !strings.Contains(out, "verify OK") {
		t.Fatalf("openssl crl -verify: %v\n%s", err, out)
	}
	return dir
}

func TestInteropFile(t *testing.T) {
	km := pki.NewFileKeyManager(pkitest.NewSealer())
	e := newEnv(t, km, func(c *pki.Config) { c.IssuerURLs = true })
	interop(t, e, pki.ECDSAP256)
}

// TestAlgorithms issues a device certificate under CAs of every supported
// algorithm and has openssl verify the chain and the CRL.
func TestAlgorithms(t *testing.T) {
	needTool(t, "openssl")
	for _, alg := range []pki.Algorithm{pki.ECDSAP256, pki.ECDSAP384, pki.RSA3072, pki.Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, pki.NewFileKeyManager(pkitest.NewSealer()), nil)
			tcas, err := e.a.CreateTenantCAs(ctx, "acme", alg, e.km)
			if err != nil {
				t.Fatal(err)
			}
			is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")})
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			writeCertPEM(t, dir, "root.pem", mustParseCert(t, tcas.Root.CertDER))
			writeCertPEM(t, dir, "issuing.pem", mustParseCert(t, tcas.Issuing.CertDER))
			writeCertPEM(t, dir, "device.pem", is.Cert)
			if out, err := runTool(t, dir, "openssl", "verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem", "device.pem"); err != nil {
				t.Fatalf("openssl verify: %v\n%s", err, out)
			}
			if _, err := e.a.Revoke(ctx, is.Record.Serial, pki.ReasonSuperseded); err != nil {
				t.Fatal(err)
			}
			if err := e.a.RefreshCRL(ctx, tcas.Issuing.ID); err != nil {
				t.Fatal(err)
			}
			crl, _ := e.a.CRL(tcas.Issuing.ID)
			os.WriteFile(filepath.Join(dir, "crl.der"), crl, 0o600)
			out, err := runTool(t, dir, "openssl", "crl", "-in", "crl.der", "-inform", "DER", "-CAfile", "issuing.pem", "-verify", "-text", "-noout")
			if err != nil || !strings.Contains(out, "verify OK") || !strings.Contains(out, strings.ToUpper(is.Record.Serial)) {
				t.Fatalf("openssl crl: %v\n%s", err, out)
			}
			fmt.Fprint(io.Discard, out)
		})
	}
}

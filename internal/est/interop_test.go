package est_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/est"
	"github.com/wardiot/ward/internal/est/esttest"
	"github.com/wardiot/ward/wire"
)

// peerTimeout bounds each run of an external program, so a hung peer fails
// the test instead of stalling the suite.
const peerTimeout = 60 * time.Second

// estServer runs the handler over real TLS on 127.0.0.1:0, configured as
// the Ward server will configure it, and writes the server's certificate to
// dir/server.pem for clients to trust.
func estServer(t *testing.T, ca est.CA, dir string, opts ...est.Option) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(wire.ESTPrefix, mustNew(t, ca, opts...))
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{}
	est.ConfigureTLS(srv.TLS)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	writePEM(t, filepath.Join(dir, "server.pem"), "CERTIFICATE", srv.Certificate().Raw)
	return srv.Listener.Addr().String()
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeKey(t *testing.T, path string) *ecdsa.PrivateKey {
	t.Helper()
	k := newKey(t)
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "EC PRIVATE KEY", der)
	return k
}

func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		t.Fatalf("%s holds no certificate", path)
	}
	return certs
}

// runPeer runs an external program and returns its combined output and
// whether it succeeded.
func runPeer(t *testing.T, dir, bin string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

func mustRun(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	out, ok := runPeer(t, dir, bin, args...)
	if !ok {
		t.Fatalf("%s %s failed:\n%s", filepath.Base(bin), strings.Join(args, " "), out)
	}
	return out
}

// checkIssued verifies that cert chains to ca, names device and certifies
// pub.
func checkIssued(t *testing.T, ca *esttest.CA, cert *x509.Certificate, device string, pub crypto.PublicKey) {
	t.Helper()
	inter := x509.NewCertPool()
	inter.AddCert(ca.Issuing)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != wire.DeviceURI(ca.Label, device) {
		t.Fatalf("issued certificate names %v, want %s", cert.URIs, wire.DeviceURI(ca.Label, device))
	}
	if !samePub(cert.PublicKey, pub) {
		t.Fatal("issued certificate is for another key")
	}
}

func samePub(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// TestEstclient drives the handler with globalsign/est's estclient, an EST
// client no one here wrote: cacerts, enroll with HTTP Basic and with a
// Bearer token, refusals, re-enrollment over mTLS (renew and rekey),
// csrattrs, pending, and serverkeygen.
func TestEstclient(t *testing.T) {
	estclient := esttest.BuildEstclient(t)
	dir := t.TempDir()
	ca := esttest.NewCA(t, label)
	ca.Attrs = mustASN1(t, []any{oidECPublicKey, oidSHA256WithECDSA})
	addr := estServer(t, ca, dir)
	common := []string{"-server", addr, "-aps", label, "-explicit", "server.pem", "-timeout", "20s"}
	cmd := func(op string, args ...string) []string {
		return append(append([]string{op}, common...), args...)
	}

	t.Run("cacerts", func(t *testing.T) {
		mustRun(t, dir, estclient, cmd("cacerts", "-out", "cacerts.pem")...)
		got := readCerts(t, filepath.Join(dir, "cacerts.pem"))
		if len(got) != 2 || !got[0].Equal(ca.Issuing) || !got[1].Equal(ca.Root) {
			t.Fatalf("cacerts returned %d certificates, want issuing CA then root", len(got))
		}
	})

	t.Run("csrattrs", func(t *testing.T) {
		out := mustRun(t, dir, estclient, cmd("csrattrs")...)
		if !strings.Contains(out, "1.2.840.10045.2.1") || !strings.Contains(out, "1.2.840.10045.4.3.2") {
			t.Fatalf("csrattrs output lacks the OIDs served:\n%s", out)
		}
	})

	ca.AddToken("tok-basic", "dev-1")
	key1 := writeKey(t, filepath.Join(dir, "key1.pem"))
	t.Run("enroll/basic", func(t *testing.T) {
		mustRun(t, dir, estclient, cmd("enroll", "-key", "key1.pem", "-cn", "dev-1", "-user", "dev-1", "-pass", "tok-basic", "-out", "cert1.pem")...)
		checkIssued(t, ca, readCerts(t, filepath.Join(dir, "cert1.pem"))[0], "dev-1", key1.Public())
	})

	ca.AddToken("tok-bearer", "dev-2")
	key2 := writeKey(t, filepath.Join(dir, "key2.pem"))
	t.Run("enroll/bearer", func(t *testing.T) {
		mustRun(t, dir, estclient, cmd("enroll", "-key", "key2.pem", "-cn", "dev-2", "-headers", "Authorization:Bearer tok-bearer", "-out", "cert2.pem")...)
		checkIssued(t, ca, readCerts(t, filepath.Join(dir, "cert2.pem"))[0], "dev-2", key2.Public())
	})

	t.Run("enroll/token-reused", func(t *testing.T) {
		out, ok := runPeer(t, dir, estclient, cmd("enroll", "-key", "key2.pem", "-cn", "dev-2", "-headers", "Authorization:Bearer tok-bearer", "-out", "again.pem")...)
		if ok || !strings.Contains(out, "not valid") {
			t.Fatalf("reusing a one-time token: ok=%v\n%s", ok, out)
		}
	})

	t.Run("enroll/no-credentials", func(t *testing.T) {
		out, ok := runPeer(t, dir, estclient, cmd("enroll", "-key", "key2.pem", "-cn", "dev-2", "-out", "none.pem")...)
		if ok || !strings.Contains(out, "authentication required") {
			t.Fatalf("enrolling without credentials: ok=%v\n%s", ok, out)
		}
	})

	t.Run("enroll/pending", func(t *testing.T) {
		ca.AddToken("tok-pending", "dev-p")
		ca.SetPending(30 * time.Second)
		defer ca.SetPending(0)
		out, ok := runPeer(t, dir, estclient, cmd("enroll", "-key", "key2.pem", "-cn", "dev-p", "-headers", "Authorization:Bearer tok-pending", "-out", "pending.pem")...)
		if ok || !strings.Contains(out, "enrollment pending") {
			t.Fatalf("pending enrollment: ok=%v\n%s", ok, out)
		}
	})

	t.Run("reenroll/renew", func(t *testing.T) {
		// estclient copies subject and SAN from the TLS certificate into a
		// CSR signed with the same key.
		mustRun(t, dir, estclient, cmd("reenroll", "-certs", "cert1.pem", "-key", "key1.pem", "-out", "cert1-renewed.pem")...)
		old := readCerts(t, filepath.Join(dir, "cert1.pem"))[0]
		renewed := readCerts(t, filepath.Join(dir, "cert1-renewed.pem"))[0]
		checkIssued(t, ca, renewed, "dev-1", key1.Public())
		if renewed.SerialNumber.Cmp(old.SerialNumber) == 0 {
			t.Fatal("renewal returned the old certificate")
		}
	})

	t.Run("reenroll/rekey", func(t *testing.T) {
		key3 := writeKey(t, filepath.Join(dir, "key3.pem"))
		mustRun(t, dir, estclient, "csr", "-key", "key3.pem", "-cn", "dev-1", "-uris", wire.DeviceURI(label, "dev-1"), "-out", "rekey.csr")
		mustRun(t, dir, estclient, cmd("reenroll", "-certs", "cert1.pem", "-key", "key1.pem", "-csr", "rekey.csr", "-out", "cert1-rekeyed.pem")...)
		checkIssued(t, ca, readCerts(t, filepath.Join(dir, "cert1-rekeyed.pem"))[0], "dev-1", key3.Public())
	})

	t.Run("reenroll/identity-changed", func(t *testing.T) {
		writeKey(t, filepath.Join(dir, "key4.pem"))
		mustRun(t, dir, estclient, "csr", "-key", "key4.pem", "-cn", "dev-1", "-uris", wire.DeviceURI(label, "dev-2"), "-out", "steal.csr")
		out, ok := runPeer(t, dir, estclient, cmd("reenroll", "-certs", "cert1.pem", "-key", "key1.pem", "-csr", "steal.csr", "-out", "stolen.pem")...)
		if ok || !strings.Contains(out, "subjectAltName") {
			t.Fatalf("re-enrolling as another device: ok=%v\n%s", ok, out)
		}
	})

	t.Run("reenroll/foreign-certificate", func(t *testing.T) {
		other := esttest.NewCA(t, label)
		other.AddToken("tok-other", "dev-1")
		odir := t.TempDir()
		oaddr := estServer(t, other, odir)
		writeKey(t, filepath.Join(odir, "key.pem"))
		mustRun(t, odir, estclient, "enroll", "-server", oaddr, "-aps", label, "-explicit", "server.pem",
			"-key", "key.pem", "-cn", "dev-1", "-headers", "Authorization:Bearer tok-other", "-out", "cert.pem")
		foreign, err := os.ReadFile(filepath.Join(odir, "cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		foreignKey, err := os.ReadFile(filepath.Join(odir, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "foreign.pem"), foreign, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "foreign-key.pem"), foreignKey, 0o600); err != nil {
			t.Fatal(err)
		}
		out, ok := runPeer(t, dir, estclient, cmd("reenroll", "-certs", "foreign.pem", "-key", "foreign-key.pem", "-out", "foreign-renewed.pem")...)
		if ok || !strings.Contains(out, "not one this CA issued") {
			t.Fatalf("re-enrolling with another CA's certificate: ok=%v\n%s", ok, out)
		}
	})

	t.Run("serverkeygen", func(t *testing.T) {
		kdir := t.TempDir()
		kaddr := estServer(t, ca, kdir, est.WithServerKeyGen())
		ca.AddToken("tok-keygen", "dev-k")
		mustRun(t, kdir, estclient, "serverkeygen", "-server", kaddr, "-aps", label, "-explicit", "server.pem",
			"-cn", "dev-k", "-headers", "Authorization:Bearer tok-keygen", "-out", "cert.pem", "-keyout", "key.pem")
		cert := readCerts(t, filepath.Join(kdir, "cert.pem"))[0]
		b, err := os.ReadFile(filepath.Join(kdir, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			t.Fatal("serverkeygen wrote no PEM key")
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		checkIssued(t, ca, cert, "dev-k", key.(crypto.Signer).Public())
	})
}

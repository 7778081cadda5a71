package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Only TLS 1.2 with ECDHE+AEAD suites and TLS 1.3 are accepted; checked
// with a Go client for exact suites and with openssl s_client as a peer we
// did not write.
func TestTLSVersionsAndSuites(t *testing.T) {
	pki := newTestPKI(t)
	h := startBroker(t, pki, nil)
	c := pki.device(t, "acme", "d1")
	roots := x509.NewCertPool()
	roots.AddCert(pki.serverCA.cert)
	try := func(cfg *tls.Config) error {
		cfg.RootCAs, cfg.ServerName, cfg.Certificates = roots, "localhost", []tls.Certificate{c.tls}
		conn, err := tls.Dial("tcp", h.addr, cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		return conn.Handshake()
	}
	tests := map[string]struct {
		cfg *tls.Config
		ok  bool
	}{
		"ok/tls13":              {cfg: &tls.Config{MinVersion: tls.VersionTLS13}, ok: true},
		"ok/tls12-ecdhe-gcm":    {cfg: &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, ok: true},
		"ok/tls12-chacha":       {cfg: &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}}, ok: true},
		"fail/tls11":            {cfg: &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}},
		"fail/tls12-cbc":        {cfg: &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}},
		"fail/tls12-static-rsa": {cfg: &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			err := try(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("handshake error %v, want ok=%v", err, tt.ok)
			}
		})
	}

	t.Run("openssl", func(t *testing.T) {
		bin, err := exec.LookPath("openssl")
		if err != nil {
			needTool(t, "openssl")
		}
		run := func(args ...string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			base := []string{"s_client", "-connect", h.addr, "-CAfile", pki.serverCAFile,
				"-cert", c.certFile, "-key", c.keyFile, "-verify_return_error", "-brief"}
			cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
			cmd.Stdin = strings.NewReader("")
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		if out, err := run("-tls1_3"); err != nil || !strings.Contains(out, "TLSv1.3") {
			t.Fatalf("openssl TLS 1.3: %v\n%s", err, out)
		}
		if out, err := run("-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"); err != nil || !strings.Contains(out, "ECDHE-ECDSA-AES256-GCM-SHA384") {
			t.Fatalf("openssl TLS 1.2 ECDHE-GCM: %v\n%s", err, out)
		}
		if out, err := run("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"); err == nil {
			t.Fatalf("openssl TLS 1.2 CBC suite accepted:\n%s", out)
		}
	})
}

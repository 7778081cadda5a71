package pki_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/wardiot/ward/internal/pki"
)

// BenchmarkIssue measures device certificate issuance (CSR checks, P-256
// signature, store record) on one core.
func BenchmarkIssue(b *testing.B) {
	ctx := context.Background()
	e := fileEnv(b, nil)
	mustCreate(b, e, "acme")
	csr := deviceCSR(b, newKey(b), "acme", "d")
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: csr}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}

// BenchmarkOCSPCached measures the handler answering GET requests for a
// cached (no-nonce) response, in parallel on all cores.
func BenchmarkOCSPCached(b *testing.B) {
	ctx := context.Background()
	e := fileEnv(b, nil)
	tc := mustCreate(b, e, "acme")
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(b, newKey(b), "acme", "d")})
	if err != nil {
		b.Fatal(err)
	}
	req, _ := ocsp.CreateRequest(is.Cert, mustParseCert(b, tc.Issuing.CertDER), nil)
	target := "/ocsp/" + tc.Issuing.ID + "/" + url.PathEscape(base64.StdEncoding.EncodeToString(req))
	h := e.a.Handler()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
	if w.Code != 200 {
		b.Fatal(w.Code)
	}
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		r := httptest.NewRequest(http.MethodGet, target, nil)
		for pb.Next() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != 200 {
				b.Fatal(w.Code)
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "responses/s")
}

// BenchmarkCRL1M measures generating and signing the CRL of an issuing CA
// with 1,000,000 revoked certificates, store iteration included.
func BenchmarkCRL1M(b *testing.B) {
	benchCRL(b, 1_000_000)
}

func benchCRL(b *testing.B, n int) {
	ctx := context.Background()
	e := fileEnv(b, nil)
	tc := mustCreate(b, e, "acme")
	now := e.clock.Now()
	e.store.PutRevokedBulk(tc.Issuing.ID, "acme", 1<<62, n, now, now.Add(24*time.Hour))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := e.a.RefreshCRL(ctx, tc.Issuing.ID); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	der, _ := e.a.CRL(tc.Issuing.ID)
	b.ReportMetric(float64(len(der))/1e6, "MB")
	crl, err := x509.ParseRevocationList(der)
	if err != nil || len(crl.RevokedCertificateEntries) != n {
		b.Fatalf("CRL has %d entries: %v", len(crl.RevokedCertificateEntries), err)
	}
}

// BenchmarkCRLStdlib1M is the same CRL through x509.CreateRevocationList,
// for comparison with the encoder BenchmarkCRL1M uses.
func BenchmarkCRLStdlib1M(b *testing.B) {
	now := time.Now()
	k := newKey(b)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now, NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCRLSign | x509.KeyUsageCertSign, SubjectKeyId: []byte{1, 2, 3}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	iss := mustParseCert(b, der)
	entries := make([]x509.RevocationListEntry, 1_000_000)
	for i := range entries {
		entries[i] = x509.RevocationListEntry{SerialNumber: new(big.Int).SetUint64(1<<62 + uint64(i)), RevocationTime: now, ReasonCode: []int{0, 1, 4, 5}[i%4]}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{RevokedCertificateEntries: entries, Number: big.NewInt(int64(i + 1)), ThisUpdate: now, NextUpdate: now.Add(time.Hour)}, iss, k); err != nil {
			b.Fatal(err)
		}
	}
}

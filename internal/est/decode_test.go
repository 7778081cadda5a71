package est

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http"
	"testing"

	"github.com/wardiot/ward/wire"
)

func testCSR(t testing.TB) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// FuzzDecodeCSR feeds arbitrary bodies to the request decoding path. Every
// input must either yield a CSR whose signature verifies or an *Error with a
// 4xx status, never a panic or a 5xx.
func FuzzDecodeCSR(f *testing.F) {
	good := testCSR(f)
	f.Add(wire.EncodeBase64Body(good))
	f.Add(good)
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 1
	f.Add(wire.EncodeBase64Body(bad))
	f.Add([]byte("MIIB\r\n===="))
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := decodeCSR(body)
		if err == nil {
			if csr.CheckSignature() != nil {
				t.Fatal("accepted a CSR whose signature does not verify")
			}
			return
		}
		e, ok := errors.AsType[*Error](err)
		if !ok || e.Status < 400 || e.Status >= 500 {
			t.Fatalf("decode error %v is not a client error", err)
		}
	})
}

func TestDecodeCSRStatuses(t *testing.T) {
	good := testCSR(t)
	if _, err := decodeCSR(wire.EncodeBase64Body(good)); err != nil {
		t.Fatalf("good CSR: %v", err)
	}
	big := make([]byte, MaxRequestBodySize+1)
	if _, err := decodeCSR(big); !errors.Is(err, &Error{Status: http.StatusRequestEntityTooLarge}) {
		t.Fatalf("oversized body: %v", err)
	}
	if _, err := decodeCSR([]byte("%%%")); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("bad base64: %v", err)
	}
}

func BenchmarkDecodeCSR(b *testing.B) {
	body := wire.EncodeBase64Body(testCSR(b))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeCSR(body); err != nil {
			b.Fatal(err)
		}
	}
}

package pki

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"testing"
	"time"
)

// TestCRLEncoderMatchesStdlib shows the fast encoder writes exactly what
// x509.CreateRevocationList writes: Ed25519 signatures are deterministic,
// so the two CRLs must be byte-identical, entries, reasons, times (both
// UTCTime and GeneralizedTime) and extensions included.
func TestCRLEncoderMatchesStdlib(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	tmpl := caTemplate("acme", "Issuing CA", now, DefaultIssuingValidity, 0)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	issuer, _ := x509.ParseCertificate(der)
	for _, n := range []int{0, 1, 3, 200, 5000} {
		enc, err := newCRLEncoder(issuer, key)
		if err != nil {
			t.Fatal(err)
		}
		var entries []x509.RevocationListEntry
		for i := 0; i < n; i++ {
			serial, _ := randomSerial()
			if i%7 == 0 {
				serial = big.NewInt(int64(i + 1)) // short and odd-length serials
			}
			if i%11 == 0 {
				serial = new(big.Int).Lsh(big.NewInt(0xff), 120) // high bit set: needs a 0x00 pad
			}
			at := now.Add(-time.Duration(i) * time.Minute)
			if i%13 == 0 {
				at = time.Date(2051, 1, 1, 0, 0, 0, 0, time.UTC) // GeneralizedTime
			}
			reason := []Reason{0, 1, 2, 3, 4, 5, 9}[i%7]
			if err := enc.add(SerialString(serial), at, reason); err != nil {
				t.Fatal(err)
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: at, ReasonCode: int(reason)})
		}
		this, next := now.Add(-time.Minute), now.Add(24*time.Hour)
		got, err := enc.finish(42+int64(n), this, next)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			RevokedCertificateEntries: entries, Number: big.NewInt(42 + int64(n)), ThisUpdate: this, NextUpdate: next,
		}, issuer, key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%d entries: encoder output differs from x509.CreateRevocationList", n)
		}
		crl, err := x509.ParseRevocationList(got)
		if err != nil || crl.CheckSignatureFrom(issuer) != nil || len(crl.RevokedCertificateEntries) != n {
			t.Fatalf("%d entries: parse back: %v", n, err)
		}
	}
	// Serial 128 (0x80) needs the padding octet too; large numbers work.
	enc, _ := newCRLEncoder(issuer, key)
	if err := enc.add("80", now, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := enc.finish(1<<40, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "xyz", "0g", string(make([]byte, 41))} {
		enc, _ := newCRLEncoder(issuer, key)
		if err := enc.add(bad, now, 0); err == nil {
			t.Errorf("serial %q accepted", bad)
		}
	}
}

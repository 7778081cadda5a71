package pki_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/crypto/ocsp"

	"github.com/wardiot/ward/internal/pki"
)

func ocspGet(t testing.TB, base string, req []byte) []byte {
	t.Helper()
	resp, err := http.Get(base + "/" + url.PathEscape(base64.StdEncoding.EncodeToString(req)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/ocsp-response" {
		t.Fatalf("Content-Type %q", ct)
	}
	b, _ := io.ReadAll(resp.Body)
	return b
}

// withNonce adds a nonce extension to a request made by x/crypto/ocsp,
// which cannot make one itself.
func withNonce(t testing.TB, req []byte, nonce []byte) []byte {
	t.Helper()
	var r struct {
		TBS struct {
			RequestList asn1.RawValue
		}
	}
	if _, err := asn1.Unmarshal(req, &r); err != nil {
		t.Fatal(err)
	}
	val, _ := asn1.Marshal(nonce)
	exts, _ := asn1.Marshal([]pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}, Value: val}})
	tbs := append(bytes.Clone(r.TBS.RequestList.FullBytes), asn1RawExplicit(2, exts)...)
	tbsDER, _ := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: tbs})
	out, _ := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: tbsDER})
	return out
}

func asn1RawExplicit(tag int, inner []byte) []byte {
	b, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, IsCompound: true, Bytes: inner})
	return b
}

func TestOCSPResponder(t *testing.T) {
	ctx := context.Background()
	e := fileEnv(t, nil)
	tc := mustCreate(t, e, "acme")
	other := mustCreate(t, e, "other")
	iss := mustParseCert(t, tc.Issuing.CertDER)
	is, err := e.a.Issue(ctx, pki.IssueRequest{Tenant: "acme", Device: "d", Profile: pki.ProfileDevice, CSR: deviceCSR(t, newKey(t), "acme", "d")})
	if err != nil {
		t.Fatal(err)
	}
	base := e.a.OCSPURL(tc.Issuing.ID)

	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		req, _ := ocsp.CreateRequest(is.Cert, iss, &ocsp.RequestOptions{Hash: h})
		resp, err := ocsp.ParseResponseForCert(ocspGet(t, base, req), is.Cert, iss)
		if err != nil || resp.Status != ocsp.Good {
			t.Fatalf("%v: %v %+v", h, err, resp)
		}
		if resp.Certificate == nil || resp.Certificate.ExtKeyUsage[0] != x509.ExtKeyUsageOCSPSigning {
			t.Fatal("response not signed by a delegated OCSP signer")
		}
		if !resp.ThisUpdate.Equal(e.clock.Now()) {
			t.Errorf("thisUpdate %v not from the injected clock", resp.ThisUpdate)
		}
	}

	// A nonce is echoed in responseExtensions.
	req, _ := ocsp.CreateRequest(is.Cert, iss, nil)
	nonce := []byte("0123456789abcdef")
	nreq := withNonce(t, req, nonce)
	if p, err := pki.ParseOCSPRequest(nreq); err != nil || p.Nonce == nil {
		t.Fatalf("parse own nonce request: %v", err)
	}
	nresp := ocspGet(t, base, nreq)
	resp, err := ocsp.ParseResponseForCert(nresp, is.Cert, iss)
	if err != nil || resp.Status != ocsp.Good {
		t.Fatal(err)
	}
	// x/crypto/ocsp does not expose responseExtensions; look for the
	// exact extension (openssl checks it in TestInteropFile).
	val, _ := asn1.Marshal(nonce)
	ext, _ := asn1.Marshal(pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}, Value: val})
	if !bytes.Contains(nresp, asn1RawExplicit(1, mustMarshal(t, []asn1.RawValue{{FullBytes: ext}}))) {
		t.Fatal("nonce not echoed in responseExtensions")
	}
	// Oversized nonces are refused.
	if _, err := pki.ParseOCSPRequest(withNonce(t, req, make([]byte, 33))); err == nil {
		t.Fatal("33-octet nonce accepted")
	}

	// Unknown serial: unknown.
	fake := *is.Cert
	fake.SerialNumber = big.NewInt(77)
	req, _ = ocsp.CreateRequest(&fake, iss, nil)
	if resp, err := ocsp.ParseResponse(ocspGet(t, base, req), iss); err != nil || resp.Status != ocsp.Unknown {
		t.Fatalf("unknown serial: %v %+v", err, resp)
	}
	// Asking one CA's responder about another CA's certificate: unauthorized.
	req, _ = ocsp.CreateRequest(is.Cert, iss, nil)
	b := ocspGet(t, e.a.OCSPURL(other.Issuing.ID), req)
	if !bytes.Equal(b, ocsp.UnauthorizedErrorResponse) {
		t.Fatalf("cross-CA query answered: %x", b)
	}
	// Garbage: malformedRequest.
	if b := ocspGet(t, base, []byte{0x30, 0x03, 0x02, 0x01}); !bytes.Equal(b, ocsp.MalformedRequestErrorResponse) {
		t.Fatalf("garbage answered: %x", b)
	}
	// POST needs the right content type and a bounded body.
	r, _ := http.Post(base, "text/plain", bytes.NewReader(req))
	r.Body.Close()
	if r.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("POST text/plain: %d", r.StatusCode)
	}
	r, _ = http.Post(base, "application/ocsp-request", strings.NewReader(strings.Repeat("x", pki.MaxOCSPRequestSize+1)))
	r.Body.Close()
	if r.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized POST: %d", r.StatusCode)
	}
	// Revocation replaces the cached good response at once.
	if _, err := e.a.Revoke(ctx, is.Record.Serial, pki.ReasonCessationOfOperation); err != nil {
		t.Fatal(err)
	}
	resp, err = ocsp.ParseResponseForCert(ocspGet(t, base, req), is.Cert, iss)
	if err != nil || resp.Status != ocsp.Revoked || resp.RevocationReason != int(pki.ReasonCessationOfOperation) {
		t.Fatalf("after revoke: %v %+v", err, resp)
	}
}

func FuzzParseOCSPRequest(f *testing.F) {
	e := fileEnv(f, nil)
	tc := mustCreate(f, e, "acme")
	iss := mustParseCert(f, tc.Issuing.CertDER)
	req, _ := ocsp.CreateRequest(iss, iss, nil)
	f.Add(req)
	f.Add(withNonce(f, req, []byte("nonce")))
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := pki.ParseOCSPRequest(b)
		if err == nil && (r.SerialNumber == nil || r.SerialNumber.Sign() <= 0) {
			t.Fatal("accepted a request without a positive serial")
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	f.Add(deviceCSR(f, newKey(f), "acme", "d"))
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := pki.ParseCSR(b)
		if err == nil && csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

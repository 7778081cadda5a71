package wire

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testChain makes n self-signed certificates with distinct subjects.
func testChain(t testing.TB, n int) []*x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for i := 0; i < n; i++ {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 1)),
			Subject:      pkix.Name{CommonName: "cert-" + string(rune('a'+i%26))},
			NotBefore:    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			NotAfter:     time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC),
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return certs
}

// requireTool returns the path of an external program, skipping the test
// when it is absent unless CI is set.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed (apt-get install -y %s); skipping interop test", name, name)
	}
	return p
}

func TestCertsOnlyRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 5, MaxCertsOnlyCerts} {
		certs := testChain(t, n)
		der, err := EncodeCertsOnly(certs)
		if err != nil {
			t.Fatalf("n=%d: encode: %v", n, err)
		}
		got, err := DecodeCertsOnly(der)
		if err != nil {
			t.Fatalf("n=%d: decode: %v", n, err)
		}
		if len(got) != n {
			t.Fatalf("n=%d: decoded %d certificates", n, len(got))
		}
		for i := range got {
			if !got[i].Equal(certs[i]) {
				t.Fatalf("n=%d: certificate %d changed or reordered", n, i)
			}
		}
	}
}

func TestEncodeCertsOnlyLimits(t *testing.T) {
	if _, err := EncodeCertsOnly(nil); err == nil {
		t.Error("encoding zero certificates succeeded")
	}
	if _, err := EncodeCertsOnly(testChain(t, MaxCertsOnlyCerts+1)); !errors.Is(err, ErrESTTooLarge) {
		t.Errorf("too many certificates: got %v, want ErrESTTooLarge", err)
	}
	if _, err := EncodeCertsOnly([]*x509.Certificate{{}}); err == nil {
		t.Error("encoding a certificate without DER succeeded")
	}
}

// certsOnly builds a certs-only ContentInfo from raw SignedData fields, so
// tests can produce the malformed variants an attacker could send.
func certsOnly(version int, signers, certs, trailer []byte) []byte {
	v, _ := asn1.Marshal(version)
	encap, _ := asn1.Marshal(struct{ Type asn1.ObjectIdentifier }{oidData})
	var sd []byte
	sd = append(sd, v...)
	sd = appendTLV(sd, asn1.ClassUniversal, asn1.TagSet, true, nil)
	sd = append(sd, encap...)
	if certs != nil {
		sd = appendTLV(sd, asn1.ClassContextSpecific, 0, true, certs)
	}
	sd = appendTLV(sd, asn1.ClassUniversal, asn1.TagSet, true, signers)
	sd = append(sd, trailer...)
	oid, _ := asn1.Marshal(oidSignedData)
	ci := append(oid, appendTLV(nil, asn1.ClassContextSpecific, 0, true,
		appendTLV(nil, asn1.ClassUniversal, asn1.TagSequence, true, sd))...)
	return appendTLV(nil, asn1.ClassUniversal, asn1.TagSequence, true, ci)
}

func TestDecodeCertsOnlyRejects(t *testing.T) {
	certs := testChain(t, 2)
	raw := append(append([]byte{}, certs[0].Raw...), certs[1].Raw...)
	good, err := EncodeCertsOnly(certs)
	if err != nil {
		t.Fatal(err)
	}
	var many []byte
	for i := 0; i <= MaxCertsOnlyCerts; i++ {
		many = append(many, certs[0].Raw...)
	}
	tests := map[string]struct {
		der  []byte
		want error
	}{
		"fail/empty":              {nil, ErrMalformedEST},
		"fail/trailing-data":      {append(append([]byte{}, good...), 0), ErrMalformedEST},
		"fail/truncated":          {good[:len(good)-1], ErrMalformedEST},
		"fail/has-signers":        {certsOnly(1, []byte{0x30, 0x00}, raw, nil), ErrMalformedEST},
		"fail/no-certificates":    {certsOnly(1, nil, nil, nil), ErrMalformedEST},
		"fail/empty-certificates": {certsOnly(1, nil, []byte{}, nil), ErrMalformedEST},
		"fail/bad-version":        {certsOnly(99, nil, raw, nil), ErrMalformedEST},
		"fail/not-a-certificate":  {certsOnly(1, nil, []byte{0x30, 0x03, 0x02, 0x01, 0x01}, nil), ErrMalformedEST},
		"fail/trailing-element":   {certsOnly(1, nil, raw, []byte{0x05, 0x00}), ErrMalformedEST},
		"fail/too-many":           {certsOnly(1, nil, many, nil), ErrESTTooLarge},
		"fail/too-large":          {make([]byte, MaxCertsOnlySize+1), ErrESTTooLarge},
		"fail/not-signed-data":    {certs[0].Raw, ErrMalformedEST},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := DecodeCertsOnly(tc.der)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %d certs, err %v; want %v", len(got), err, tc.want)
			}
		})
	}
	// The helper itself must build valid messages, or the cases above
	// prove nothing.
	if _, err := DecodeCertsOnly(certsOnly(1, nil, raw, nil)); err != nil {
		t.Fatalf("well-formed message from the test helper: %v", err)
	}
}

func TestBase64Body(t *testing.T) {
	der := bytes.Repeat([]byte{0x30, 0x82, 0xff, 0x00, 0x7f}, 100)
	enc := EncodeBase64Body(der)
	for _, line := range strings.Split(strings.TrimSuffix(string(enc), "\n"), "\n") {
		if len(line) > base64LineLen {
			t.Fatalf("line of %d characters", len(line))
		}
	}
	variants := map[string][]byte{
		"ok/lf":       enc,
		"ok/crlf":     bytes.ReplaceAll(enc, []byte("\n"), []byte("\r\n")),
		"ok/one-line": bytes.ReplaceAll(enc, []byte("\n"), nil),
		"ok/spaces":   append([]byte("  \t"), bytes.ReplaceAll(enc, []byte("\n"), []byte(" \n "))...),
	}
	for name, body := range variants {
		got, err := DecodeBase64Body(body)
		if err != nil || !bytes.Equal(got, der) {
			t.Errorf("%s: got %d bytes, err %v", name, len(got), err)
		}
	}
	fails := map[string]struct {
		body []byte
		want error
	}{
		"fail/empty":      {nil, ErrMalformedEST},
		"fail/blank":      {[]byte(" \r\n"), ErrMalformedEST},
		"fail/not-base64": {[]byte("MII*"), ErrMalformedEST},
		"fail/truncated":  {[]byte("MIIB"[:3]), ErrMalformedEST},
		"fail/too-large":  {bytes.Repeat([]byte("A"), MaxESTBodySize+4), ErrESTTooLarge},
	}
	for name, tc := range fails {
		if _, err := DecodeBase64Body(tc.body); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
}

// TestCertsOnlyOpenSSL proves interop with openssl in both directions:
// openssl reads what we encode, and we read what openssl encodes.
func TestCertsOnlyOpenSSL(t *testing.T) {
	openssl := requireTool(t, "openssl")
	dir := t.TempDir()
	certs := testChain(t, 3)

	// Ours -> openssl, through the base64 body an EST client receives.
	der, err := EncodeCertsOnly(certs)
	if err != nil {
		t.Fatal(err)
	}
	b64 := filepath.Join(dir, "ours.b64")
	if err := os.WriteFile(b64, EncodeBase64Body(der), 0o600); err != nil {
		t.Fatal(err)
	}
	p7 := filepath.Join(dir, "ours.p7")
	run(t, openssl, "base64", "-d", "-in", b64, "-out", p7)
	out := run(t, openssl, "pkcs7", "-inform", "DER", "-in", p7, "-print_certs")
	got := pemCerts(t, out)
	if len(got) != len(certs) {
		t.Fatalf("openssl printed %d certificates, want %d:\n%s", len(got), len(certs), out)
	}
	for i := range certs {
		if !got[i].Equal(certs[i]) {
			t.Fatalf("openssl printed certificate %d differently", i)
		}
	}

	// openssl -> ours.
	var bundle []byte
	for _, c := range certs {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	pemFile := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(pemFile, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "theirs.p7")
	run(t, openssl, "crl2pkcs7", "-nocrl", "-certfile", pemFile, "-outform", "DER", "-out", theirs)
	theirDER, err := os.ReadFile(theirs)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := DecodeCertsOnly(theirDER)
	if err != nil {
		t.Fatalf("decoding openssl's certs-only: %v", err)
	}
	if len(decoded) != len(certs) {
		t.Fatalf("decoded %d certificates from openssl, want %d", len(decoded), len(certs))
	}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func pemCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return certs
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
}

func FuzzDecodeCertsOnly(f *testing.F) {
	certs := testChain(f, 2)
	good, err := EncodeCertsOnly(certs)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(certsOnly(1, []byte{0x30, 0x00}, certs[0].Raw, nil))
	f.Add([]byte{0x30, 0x80, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		got, err := DecodeCertsOnly(der)
		if err != nil {
			return
		}
		if len(got) == 0 || len(got) > MaxCertsOnlyCerts {
			t.Fatalf("decoded %d certificates", len(got))
		}
		// Whatever decodes must re-encode and decode to the same list.
		again, err := EncodeCertsOnly(got)
		if err != nil {
			t.Fatalf("re-encoding decoded certificates: %v", err)
		}
		back, err := DecodeCertsOnly(again)
		if err != nil || len(back) != len(got) {
			t.Fatalf("round trip: %d certs, %v", len(back), err)
		}
	})
}

func FuzzDecodeBase64Body(f *testing.F) {
	f.Add([]byte("MIIB\r\nAAAA\n"))
	f.Add(EncodeBase64Body([]byte("hello, EST")))
	f.Add([]byte("===="))
	f.Fuzz(func(t *testing.T, body []byte) {
		der, err := DecodeBase64Body(body)
		if err != nil {
			return
		}
		back, err := DecodeBase64Body(EncodeBase64Body(der))
		if err != nil || !bytes.Equal(back, der) {
			t.Fatalf("round trip of %d bytes: %v", len(der), err)
		}
	})
}

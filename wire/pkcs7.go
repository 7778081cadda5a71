package wire

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
)

// Limits on EST bodies. Both sides of EST parse bytes the other side sent,
// so every decoder here is bounded before it allocates.
const (
	// MaxCertsOnlySize bounds a DER certs-only structure. A CA bundle with
	// root, intermediates and rollover certificates is a few KiB; 128 KiB
	// leaves room for large RSA chains while keeping a hostile response
	// from costing more than one small allocation.
	MaxCertsOnlySize = 128 << 10

	// MaxCertsOnlyCerts bounds the number of certificates in a certs-only
	// structure, so that a response made of thousands of tiny certificates
	// cannot make the parser do thousands of x509.ParseCertificate calls.
	// RFC 7030 §4.1.3 bundles need at most root, intermediates and the
	// three rollover certificates.
	MaxCertsOnlyCerts = 32

	// MaxESTBodySize bounds any base64 EST body before it is decoded. It
	// is the base64 size of MaxCertsOnlySize with line breaks, rounded up.
	MaxESTBodySize = 256 << 10

	// base64LineLen is the line length of bodies we write. RFC 2045 allows
	// up to 76; 64 is what PEM and openssl use, and "openssl base64 -d"
	// refuses longer lines, so 64 keeps our bodies readable by openssl.
	base64LineLen = 64
)

// Media types and headers of EST bodies (RFC 7030 §3.2.4, §4).
const (
	ESTContentTypePKCS10    = "application/pkcs10"
	ESTContentTypeCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
	ESTContentTypeCSRAttrs  = "application/csrattrs"
	ESTContentTypePKCS8     = "application/pkcs8"
	ESTTransferEncoding     = "Content-Transfer-Encoding"
	ESTEncodingBase64       = "base64"
)

var (
	// ErrMalformedEST is wrapped by every error about an EST body that
	// does not parse.
	ErrMalformedEST = errors.New("malformed EST body")
	// ErrESTTooLarge is wrapped by every error about an EST body or
	// structure over one of the limits above.
	ErrESTTooLarge = errors.New("EST body too large")
)

var (
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
)

// EncodeCertsOnly encodes certs as a degenerate CMS SignedData with no
// signers and no content, the "certs-only" message of RFC 7030 §4.1.3 and
// RFC 5272 §4.1 (a CMC Simple PKI Response). Certificates keep their order
// (leaf or root first, as given): clients read the order, so the SET is not
// sorted, as openssl does not sort it either.
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	if len(certs) == 0 {
		return nil, errors.New("certs-only: no certificates to encode")
	}
	if len(certs) > MaxCertsOnlyCerts {
		return nil, fmt.Errorf("%w: %d certificates, at most %d", ErrESTTooLarge, len(certs), MaxCertsOnlyCerts)
	}
	var raw []byte
	for i, c := range certs {
		if c == nil || len(c.Raw) == 0 {
			return nil, fmt.Errorf("certs-only: certificate %d has no DER encoding", i)
		}
		raw = append(raw, c.Raw...)
		if len(raw) > MaxCertsOnlySize {
			return nil, fmt.Errorf("%w: certificates exceed %d bytes", ErrESTTooLarge, MaxCertsOnlySize)
		}
	}
	version, err := asn1.Marshal(1)
	if err != nil {
		return nil, err
	}
	encap, err := asn1.Marshal(struct{ Type asn1.ObjectIdentifier }{oidData})
	if err != nil {
		return nil, err
	}
	var sd []byte
	sd = append(sd, version...)
	sd = appendTLV(sd, asn1.ClassUniversal, asn1.TagSet, true, nil) // digestAlgorithms
	sd = append(sd, encap...)
	sd = appendTLV(sd, asn1.ClassContextSpecific, 0, true, raw)     // [0] IMPLICIT certificates
	sd = appendTLV(sd, asn1.ClassUniversal, asn1.TagSet, true, nil) // signerInfos
	signedData := appendTLV(nil, asn1.ClassUniversal, asn1.TagSequence, true, sd)

	oid, err := asn1.Marshal(oidSignedData)
	if err != nil {
		return nil, err
	}
	ci := append(oid, appendTLV(nil, asn1.ClassContextSpecific, 0, true, signedData)...)
	out := appendTLV(nil, asn1.ClassUniversal, asn1.TagSequence, true, ci)
	if len(out) > MaxCertsOnlySize {
		return nil, fmt.Errorf("%w: certs-only is %d bytes, at most %d", ErrESTTooLarge, len(out), MaxCertsOnlySize)
	}
	return out, nil
}

// appendTLV appends a DER tag (low tag numbers only), definite length and
// contents to b. Callers bound contents below MaxCertsOnlySize, so three
// length bytes always suffice.
func appendTLV(b []byte, class, tag int, compound bool, contents []byte) []byte {
	id := byte(class<<6 | tag)
	if compound {
		id |= 0x20
	}
	b = append(b, id)
	switch n := len(contents); {
	case n < 0x80:
		b = append(b, byte(n))
	case n < 0x100:
		b = append(b, 0x81, byte(n))
	case n < 0x10000:
		b = append(b, 0x82, byte(n>>8), byte(n))
	default:
		b = append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, contents...)
}

// DecodeCertsOnly decodes a DER certs-only message (see [EncodeCertsOnly])
// and parses its certificates. It rejects messages over MaxCertsOnlySize,
// with more than MaxCertsOnlyCerts certificates, with signers, with
// encapsulated content or with trailing data. CRLs, if any, are ignored.
// BER indefinite lengths are not accepted.
func DecodeCertsOnly(der []byte) ([]*x509.Certificate, error) {
	if len(der) > MaxCertsOnlySize {
		return nil, fmt.Errorf("%w: certs-only is %d bytes, at most %d", ErrESTTooLarge, len(der), MaxCertsOnlySize)
	}
	ci, err := expect(der, asn1.ClassUniversal, asn1.TagSequence, true, true)
	if err != nil {
		return nil, malformed("ContentInfo", err)
	}
	var oid asn1.ObjectIdentifier
	rest, err := asn1.Unmarshal(ci.Bytes, &oid)
	if err != nil {
		return nil, malformed("content type", err)
	}
	if !oid.Equal(oidSignedData) {
		return nil, malformed("content type", fmt.Errorf("%v is not SignedData", oid))
	}
	explicit, err := expect(rest, asn1.ClassContextSpecific, 0, true, true)
	if err != nil {
		return nil, malformed("content", err)
	}
	sd, err := expect(explicit.Bytes, asn1.ClassUniversal, asn1.TagSequence, true, true)
	if err != nil {
		return nil, malformed("SignedData", err)
	}

	rest = sd.Bytes
	var version int
	if rest, err = asn1.Unmarshal(rest, &version); err != nil {
		return nil, malformed("version", err)
	}
	if version < 0 || version > 5 {
		return nil, malformed("version", fmt.Errorf("unknown version %d", version))
	}
	var v asn1.RawValue
	if rest, err = next(rest, &v); err != nil || !is(v, asn1.ClassUniversal, asn1.TagSet, true) {
		return nil, malformed("digestAlgorithms", err)
	}
	if rest, err = next(rest, &v); err != nil || !is(v, asn1.ClassUniversal, asn1.TagSequence, true) {
		return nil, malformed("encapContentInfo", err)
	}
	var eType asn1.ObjectIdentifier
	if eRest, err := asn1.Unmarshal(v.Bytes, &eType); err != nil {
		return nil, malformed("encapContentInfo", err)
	} else if len(eRest) != 0 {
		return nil, malformed("encapContentInfo", errors.New("certs-only must carry no content"))
	}

	var certs []*x509.Certificate
	if rest, err = next(rest, &v); err != nil {
		return nil, malformed("SignedData", err)
	}
	if is(v, asn1.ClassContextSpecific, 0, true) {
		if certs, err = parseCertSet(v.Bytes); err != nil {
			return nil, err
		}
		if rest, err = next(rest, &v); err != nil {
			return nil, malformed("SignedData", err)
		}
	}
	if is(v, asn1.ClassContextSpecific, 1, true) {
		if rest, err = next(rest, &v); err != nil {
			return nil, malformed("SignedData", err)
		}
	}
	if !is(v, asn1.ClassUniversal, asn1.TagSet, true) {
		return nil, malformed("signerInfos", errors.New("missing"))
	}
	if len(v.Bytes) != 0 {
		return nil, malformed("signerInfos", errors.New("certs-only must have no signers"))
	}
	if len(rest) != 0 {
		return nil, malformed("SignedData", errors.New("trailing data"))
	}
	if len(certs) == 0 {
		return nil, malformed("certificates", errors.New("no certificates"))
	}
	return certs, nil
}

func parseCertSet(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for len(b) > 0 {
		if len(certs) == MaxCertsOnlyCerts {
			return nil, fmt.Errorf("%w: more than %d certificates", ErrESTTooLarge, MaxCertsOnlyCerts)
		}
		var v asn1.RawValue
		var err error
		if b, err = next(b, &v); err != nil {
			return nil, malformed("certificates", err)
		}
		// Other CertificateChoices (attribute certificates, "other")
		// have context-specific tags; EST never sends them.
		if !is(v, asn1.ClassUniversal, asn1.TagSequence, true) {
			return nil, malformed("certificates", errors.New("not an X.509 certificate"))
		}
		c, err := x509.ParseCertificate(v.FullBytes)
		if err != nil {
			return nil, malformed(fmt.Sprintf("certificate %d", len(certs)), err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// next reads one TLV from b into v.
func next(b []byte, v *asn1.RawValue) ([]byte, error) {
	if len(b) == 0 {
		return nil, errors.New("unexpected end")
	}
	return asn1.Unmarshal(b, v)
}

// expect reads exactly one TLV of the given kind from b; whole says that
// nothing may follow it.
func expect(b []byte, class, tag int, compound, whole bool) (asn1.RawValue, error) {
	var v asn1.RawValue
	rest, err := next(b, &v)
	if err != nil {
		return v, err
	}
	if !is(v, class, tag, compound) {
		return v, fmt.Errorf("unexpected tag %d (class %d)", v.Tag, v.Class)
	}
	if whole && len(rest) != 0 {
		return v, errors.New("trailing data")
	}
	return v, nil
}

func is(v asn1.RawValue, class, tag int, compound bool) bool {
	return v.Class == class && v.Tag == tag && v.IsCompound == compound
}

func malformed(what string, err error) error {
	if errors.Is(err, ErrESTTooLarge) {
		return err
	}
	if err == nil {
		err = errors.New("unexpected element")
	}
	return fmt.Errorf("%w: certs-only %s: %v", ErrMalformedEST, what, err)
}

// EncodeBase64Body encodes der as an EST body: standard base64 in lines of
// 64 characters, each ending in "\n" (RFC 7030 §4 with RFC 2045 §6.8).
func EncodeBase64Body(der []byte) []byte {
	enc := make([]byte, base64.StdEncoding.EncodedLen(len(der)))
	base64.StdEncoding.Encode(enc, der)
	out := make([]byte, 0, len(enc)+len(enc)/base64LineLen+1)
	for len(enc) > base64LineLen {
		out = append(out, enc[:base64LineLen]...)
		out = append(out, '\n')
		enc = enc[base64LineLen:]
	}
	if len(enc) > 0 {
		out = append(out, enc...)
		out = append(out, '\n')
	}
	return out
}

// DecodeBase64Body decodes an EST body. It tolerates line breaks and other
// ASCII white space anywhere, as RFC 2045 bodies and "base64 -w0" bodies
// both occur in the wild, and requires standard padding. Bodies over
// MaxESTBodySize are refused before decoding.
func DecodeBase64Body(body []byte) ([]byte, error) {
	if len(body) > MaxESTBodySize {
		return nil, fmt.Errorf("%w: body is %d bytes, at most %d", ErrESTTooLarge, len(body), MaxESTBodySize)
	}
	clean := make([]byte, 0, len(body))
	for _, c := range body {
		switch c {
		case ' ', '\t', '\r', '\n', '\f', '\v':
			continue
		}
		clean = append(clean, c)
	}
	if len(clean) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrMalformedEST)
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(out, clean)
	if err != nil {
		// The error holds only an offset, never body bytes.
		return nil, fmt.Errorf("%w: body is not base64: %v", ErrMalformedEST, err)
	}
	return bytes.Clone(out[:n]), nil
}

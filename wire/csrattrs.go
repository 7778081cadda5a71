package wire

import "encoding/asn1"

// DefaultCSRAttrs is the DER CsrAttrs (RFC 7030 §4.5.2) Ward's EST server
// returns: use ECDSA with SHA-256 and a P-256 key.
var DefaultCSRAttrs = func() []byte {
	type attribute struct {
		Type   asn1.ObjectIdentifier
		Values []asn1.ObjectIdentifier `asn1:"set"`
	}
	ecdsaWithSHA256 := asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	idECPublicKey := asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	secp256r1 := asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	b, err := asn1.Marshal([]any{ecdsaWithSHA256, attribute{Type: idECPublicKey, Values: []asn1.ObjectIdentifier{secp256r1}}})
	if err != nil {
		panic(err)
	}
	return b
}()

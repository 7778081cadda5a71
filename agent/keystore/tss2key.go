package keystore

import (
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// The tpm backend stores each key in the "TSS2 PRIVATE KEY" format of
// draft-bottomley-tpm2-keys (the format of the OpenSSL tpm2 provider and
// tpm2-tss-engine) rather than inventing one. Loading these files with
// those tools is not tested here: they are not installed on the build
// machines, and they may derive the owner primary from another template.
//
//	TPMKey ::= SEQUENCE {
//	    type        OBJECT IDENTIFIER,     -- id-loadablekey
//	    emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//	    ...         [1]..[5] policy, secret etc. (not produced, refused)
//	    parent      INTEGER,               -- TPM_RH_OWNER: the SRK template primary
//	    pubkey      OCTET STRING,          -- TPM2B_PUBLIC
//	    privkey     OCTET STRING }         -- TPM2B_PRIVATE, wrapped by the parent
const pemTSS2Key = "TSS2 PRIVATE KEY"

// oidLoadableKey is id-loadablekey, 2.23.133.10.1.3.
var oidLoadableKey = asn1.ObjectIdentifier{2, 23, 133, 10, 1, 3}

type tss2Key struct {
	Type      asn1.ObjectIdentifier
	EmptyAuth bool `asn1:"optional,explicit,tag:0"`
	Parent    int64
	PubKey    []byte
	PrivKey   []byte
}

func (k tss2Key) encode() ([]byte, error) {
	der, err := asn1.Marshal(k)
	if err != nil {
		return nil, fmt.Errorf("keystore: encode TSS2 key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemTSS2Key, Bytes: der}), nil
}

// parseTSS2Key parses a state file. Its input is read from disk under the
// maxKeyFileSize limit and is fuzzed (FuzzParseTSS2Key).
func parseTSS2Key(data []byte) (tss2Key, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemTSS2Key {
		return tss2Key{}, fmt.Errorf("not a %q PEM file", pemTSS2Key)
	}
	return parseTSS2DER(block.Bytes)
}

// parseTSS2DER parses and checks the DER body of a state file.
func parseTSS2DER(der []byte) (tss2Key, error) {
	var k tss2Key
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil {
		return tss2Key{}, errors.New("malformed TSS2 key (policies and secrets are not supported)")
	}
	if len(rest) != 0 {
		return tss2Key{}, errors.New("trailing data after TSS2 key")
	}
	if !k.Type.Equal(oidLoadableKey) {
		return tss2Key{}, fmt.Errorf("TSS2 key type %v is not a loadable key", k.Type)
	}
	if !k.EmptyAuth {
		return tss2Key{}, errors.New("TSS2 key needs an authorization value, which this keystore does not hold")
	}
	if k.Parent != int64(tpm2.TPMRHOwner) {
		return tss2Key{}, fmt.Errorf("TSS2 key parent %#x is not the owner hierarchy primary", k.Parent)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](k.PubKey)
	if err != nil {
		return tss2Key{}, errors.New("malformed TPM2B_PUBLIC in TSS2 key")
	}
	if _, err := checkTPMPublic(*pub); err != nil {
		return tss2Key{}, err
	}
	if _, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](k.PrivKey); err != nil {
		return tss2Key{}, errors.New("malformed TPM2B_PRIVATE in TSS2 key")
	}
	return k, nil
}

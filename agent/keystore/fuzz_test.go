package keystore

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// seedTSS2Key builds a well-formed state file without a TPM: a public area
// from signingTemplate with a real P-256 point, and an opaque private blob.
func seedTSS2Key(tb testing.TB) []byte {
	tb.Helper()
	tmpl, err := signingTemplate(ECDSAP256)
	if err != nil {
		tb.Fatal(err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	raw, err := k.PublicKey.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
		Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
	})
	blob := tss2Key{
		Type: oidLoadableKey, EmptyAuth: true, Parent: int64(tpm2.TPMRHOwner),
		PubKey:  tpm2.Marshal(tpm2.New2B(tmpl)),
		PrivKey: tpm2.Marshal(tpm2.TPM2BPrivate{Buffer: make([]byte, 126)}),
	}
	data, err := blob.encode()
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func TestSeedTSS2KeyParses(t *testing.T) {
	k, err := parseTSS2Key(seedTSS2Key(t))
	if err != nil {
		t.Fatalf("a well-formed state file does not parse: %v", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](k.PubKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := checkTPMPublic(*pub); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseTSS2Key fuzzes the DER body (PEM armour would hide most
// mutations behind base64 errors; pem.Decode is the standard library's).
func FuzzParseTSS2Key(f *testing.F) {
	block, _ := pem.Decode(seedTSS2Key(f))
	f.Add(block.Bytes)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		if len(der) > maxKeyFileSize {
			return // readKeyFile never passes more
		}
		k, err := parseTSS2DER(der)
		if err != nil {
			return
		}
		pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](k.PubKey)
		if err != nil {
			t.Fatalf("accepted a blob whose public area does not unmarshal: %v", err)
		}
		if _, err := checkTPMPublic(*pub); err != nil {
			t.Fatalf("accepted a public area checkTPMPublic refuses: %v", err)
		}
	})
}

func FuzzFileDecode(f *testing.F) {
	seal := make([]byte, SealKeySize)
	plain, err := openFile(f.TempDir()+"/plain", options{})
	if err != nil {
		f.Fatal(err)
	}
	sealed, err := openFile(f.TempDir()+"/sealed", options{sealKey: seal})
	if err != nil {
		f.Fatal(err)
	}
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edk, _ := ed25519.GenerateKey(rand.Reader)
	for _, k := range []any{ek, edk} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}))
		nonce := make([]byte, sealed.seal.NonceSize())
		f.Add(pem.EncodeToMemory(&pem.Block{Type: pemSealedPrivateKey, Bytes: sealed.seal.Seal(nonce, nonce, der, sealAAD("k"))}))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxKeyFileSize {
			return
		}
		for _, s := range []*fileStore{plain, sealed} {
			signer, err := s.decode("k", data)
			if err == nil && signer == nil {
				t.Fatal("nil signer without error")
			}
		}
	})
}

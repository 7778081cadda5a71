package server

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"testing"
)

func FuzzCheckSBOM(f *testing.F) {
	f.Add([]byte(`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"busybox"}]}`))
	f.Add([]byte(`{"bomFormat":"CycloneDX"}`))
	f.Add([]byte(`{"spdxVersion":"SPDX-2.3"}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if checkSBOM(b) == nil && b != nil && len(b) == 0 {
			t.Fatal("accepted an empty SBOM")
		}
	})
}

func FuzzOfflineKey(f *testing.F) {
	der, _ := x509.MarshalPKIXPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	f.Add(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	f.Add("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n")
	f.Add("not a key")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := offlineKey(s)
		if err != nil {
			return
		}
		if k.Type != "ed25519" && k.Type != "ecdsa" {
			t.Fatalf("accepted key type %q", k.Type)
		}
		if _, err := k.ID(); err != nil {
			t.Fatalf("accepted a key without an ID: %v", err)
		}
	})
}

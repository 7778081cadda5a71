package keystore_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/wardiot/ward/agent/keystore"
)

// Open a file keystore, make the device key and sign with it. The same
// code works with "pkcs11:..." or "tpm:..." specs.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "ward-keys-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	ks, err := keystore.Open("file:" + filepath.Join(dir, "keys"))
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()

	ctx := context.Background()
	key, err := ks.Generate(ctx, "device-1", keystore.ECDSAP256)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256([]byte("telemetry"))
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ks.Kind(), key.Name(), ecdsa.VerifyASN1(key.Public().(*ecdsa.PublicKey), digest[:], sig))
	// Output: file device-1 true
}

// Renewal keeps the current key until the new certificate is in hand, then
// deletes the old key.
func Example_renewal() {
	dir, err := os.MkdirTemp("", "ward-keys-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ks, err := keystore.Open("file:" + filepath.Join(dir, "keys"))
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()
	ctx := context.Background()

	if _, err := ks.Generate(ctx, "device-1", keystore.ECDSAP256); err != nil {
		log.Fatal(err)
	}
	// Renewal: a new key beside the old one. The old one still serves
	// the current connection while the CSR for device-2 is enrolled.
	if _, err := ks.Generate(ctx, "device-2", keystore.ECDSAP256); err != nil {
		log.Fatal(err)
	}
	_, err = ks.Generate(ctx, "device-2", keystore.ECDSAP256)
	fmt.Println("generate again:", errors.Is(err, keystore.ErrExists))

	// The new certificate arrived: drop the old key.
	if err := ks.Delete(ctx, "device-1"); err != nil {
		log.Fatal(err)
	}
	_, err = ks.Load(ctx, "device-1")
	fmt.Println("old key gone:", errors.Is(err, keystore.ErrNotFound))
	// Output:
	// generate again: true
	// old key gone: true
}

// A sealed file keystore encrypts each key file with a device-unique key.
func ExampleWithSealKey() {
	dir, err := os.MkdirTemp("", "ward-keys-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// On a device this comes from hardware (an eFuse-derived key, a
	// secure element), never from a file next to the keys.
	sealKey := make([]byte, keystore.SealKeySize)
	rand.Read(sealKey)

	ks, err := keystore.Open("file:"+filepath.Join(dir, "keys"), keystore.WithSealKey(sealKey))
	if err != nil {
		log.Fatal(err)
	}
	defer ks.Close()
	key, err := ks.Generate(context.Background(), "device-1", keystore.Ed25519)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(key.Name())
	// Output: device-1
}

// ParseSpec validates a spec without opening anything, and its String is
// safe to log.
func ExampleParseSpec() {
	s, err := keystore.ParseSpec("pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=ward;pin=1234")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.Kind, s.Token)
	fmt.Println(s)
	// Output:
	// pkcs11 ward
	// pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=ward;pin=REDACTED
}

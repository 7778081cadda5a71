package ota

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
)

// selfSignedRoot returns a version-v root signed by its only root key.
func selfSignedRoot(t testing.TB, v int64) []byte {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	r := metadata.Root(time.Now().Add(time.Hour))
	r.Signed.Version = v
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := r.Signed.AddKey(k, role); err != nil {
			t.Fatal(err)
		}
	}
	s, err := signature.LoadSigner(priv, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Sign(s); err != nil {
		t.Fatal(err)
	}
	b, err := r.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheckRoot(t *testing.T) {
	good := selfSignedRoot(t, 1)
	if err := CheckRoot(good); err != nil {
		t.Fatalf("good root: %v", err)
	}
	if _, err := trustedmetadata.New(good); err != nil {
		t.Fatalf("go-tuf refuses what CheckRoot accepts: %v", err)
	}
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"fail/version-2":  {selfSignedRoot(t, 2), "version 2"},
		"fail/unsigned":   {[]byte(strings.Replace(string(good), `"sig":"`, `"sig":"00`, 1)), "not signed"},
		"fail/not-json":   {[]byte("<html>"), "root"},
		"fail/too-large":  {make([]byte, maxRootSize+1), "larger"},
		"fail/empty-json": {[]byte(`{}`), "root"},
	} {
		t.Run(name, func(t *testing.T) {
			err := CheckRoot(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckRoot = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func FuzzCheckRoot(f *testing.F) {
	f.Add(selfSignedRoot(f, 1))
	f.Add([]byte(`{"signed":{"_type":"root","version":1},"signatures":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if CheckRoot(b) == nil {
			if _, err := trustedmetadata.New(b); err != nil {
				t.Fatalf("CheckRoot accepted a root go-tuf refuses: %v", err)
			}
		}
	})
}

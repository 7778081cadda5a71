package tufrepo

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"
)

func TestDirStore(t *testing.T) {
	ctx := context.Background()
	s := DirStore{Dir: t.TempDir()}
	if err := s.Put(ctx, "image/1.root.json", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Get(ctx, "image/1.root.json"); err != nil || string(b) != "a" {
		t.Fatalf("%q %v", b, err)
	}
	if _, err := s.Get(ctx, "image/2.root.json"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	for _, bad := range []string{"../x", "/etc/passwd", "a/../../b", ""} {
		if err := s.Put(ctx, bad, nil); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func TestKeyFileRoundTripAndNoOverwrite(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	p := filepath.Join(t.TempDir(), "targets.pem")
	if err := WriteKeyFile(p, priv); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyFile(p, priv); err == nil {
		t.Fatal("offline key overwritten")
	}
	s, err := LoadKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := NewSigner(priv)
	a, _ := KeyID(s)
	b, _ := KeyID(want)
	if a != b {
		t.Fatal("key changed through the file")
	}
	if _, err := parseKey([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")); err == nil {
		t.Fatal("garbage key accepted")
	}
}

func FuzzSign(f *testing.F) {
	s, _, _ := GenerateKey()
	f.Add([]byte(`{"signed":{"_type":"targets","spec_version":"1.0.31","version":1,"expires":"2030-01-01T00:00:00Z","targets":{}},"signatures":[]}`))
	f.Add([]byte(`{"signed":{"_type":"root"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		Sign(b, s) // must not panic on untrusted metadata
	})
}

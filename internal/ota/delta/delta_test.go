package delta

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// goImage returns up to n bytes of the Go toolchain's own binaries (real
// machine code, as in a firmware image), padded with seeded noise.
func goImage(tb testing.TB, n int) []byte {
	tb.Helper()
	dir := filepath.Join(runtime.GOROOT(), "pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH)
	ents, _ := os.ReadDir(dir)
	names := []string{}
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, name := range names {
		if b.Len() >= n {
			break
		}
		f, err := os.ReadFile(filepath.Join(dir, name))
		if err == nil {
			b.Write(f)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for b.Len() < n {
		b.WriteByte(byte(r.Uint32()))
	}
	return b.Bytes()[:n]
}

// nextVersion imitates a rebuild: an inserted block shifts everything
// after it, and scattered small edits stand for changed addresses.
func nextVersion(old []byte) []byte {
	mid := len(old) / 3
	ins := bytes.Repeat([]byte("ward v2 "), 12_800) // 100 KiB
	out := append(append(append([]byte{}, old[:mid]...), ins...), old[mid:]...)
	for i := 4096; i+64 < len(out); i += 4096 {
		for j := range 16 {
			out[i+j] ^= 0xA5
		}
	}
	return out
}

func TestRoundTripHashEquality(t *testing.T) {
	old := goImage(t, 8<<20)
	img := nextVersion(old)
	var patch bytes.Buffer
	if err := Make(&patch, old, img); err != nil {
		t.Fatal(err)
	}
	if patch.Len() >= len(img)/2 {
		t.Fatalf("patch %d bytes for a %d-byte image", patch.Len(), len(img))
	}
	h := sha256.New()
	n, err := Apply(h, old, bytes.NewReader(patch.Bytes()), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(img)
	if n != int64(len(img)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("reconstructed image hash differs")
	}
	t.Logf("image %d B, patch %d B (%.2f%%)", len(img), patch.Len(), 100*float64(patch.Len())/float64(len(img)))
}

func TestApplyRefusals(t *testing.T) {
	old := goImage(t, 1<<20)
	img := nextVersion(old)
	var patch bytes.Buffer
	if err := Make(&patch, old, img); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(t *testing.T){
		"fail/longer-than-signed": func(t *testing.T) {
			if _, err := Apply(io.Discard, old, bytes.NewReader(patch.Bytes()), int64(len(img)-1)); err == nil || !strings.Contains(err.Error(), "signed length") {
				t.Fatalf("err %v", err)
			}
		},
		"fail/wrong-base": func(t *testing.T) {
			other := append([]byte{}, old...)
			other[100] ^= 1
			h := sha256.New()
			_, err := Apply(h, other, bytes.NewReader(patch.Bytes()), int64(len(img)))
			want := sha256.Sum256(img)
			if err == nil && bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatal("wrong base reconstructed the right image")
			}
		},
		"fail/truncated-patch": func(t *testing.T) {
			if _, err := Apply(io.Discard, old, bytes.NewReader(patch.Bytes()[:patch.Len()/2]), int64(len(img))); err == nil {
				t.Fatal("truncated patch applied")
			}
		},
		"fail/base-too-large": func(t *testing.T) {
			if err := Make(io.Discard, make([]byte, MaxBaseSize+1), nil); err != ErrBaseTooLarge {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, f)
	}
}

func FuzzApply(f *testing.F) {
	old := bytes.Repeat([]byte("firmware "), 1000)
	var p bytes.Buffer
	Make(&p, old, append([]byte("v2 "), old...))
	f.Add(p.Bytes())
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, patch []byte) {
		n, err := Apply(io.Discard, old, bytes.NewReader(patch), 1<<20)
		if err == nil && n > 1<<20 {
			t.Fatal("wrote past the limit")
		}
	})
}

func benchPair(b *testing.B) (old, img []byte) {
	if o, n := os.Getenv("WARD_DELTA_OLD"), os.Getenv("WARD_DELTA_NEW"); o != "" && n != "" {
		var err1, err2 error
		old, err1 = os.ReadFile(o)
		img, err2 = os.ReadFile(n)
		if err1 != nil || err2 != nil {
			b.Fatal(err1, err2)
		}
		return old, img
	}
	old = goImage(b, 32<<20)
	return old, nextVersion(old)
}

// BenchmarkMake: patch size and make-time for a 32 MiB image (bench/
// ota-delta.sh sets WARD_DELTA_OLD/NEW to a real pair of Go builds).
func BenchmarkMake(b *testing.B) {
	old, img := benchPair(b)
	var size int
	for b.Loop() {
		var p bytes.Buffer
		if err := Make(&p, old, img); err != nil {
			b.Fatal(err)
		}
		size = p.Len()
	}
	b.ReportMetric(float64(size), "patch-bytes")
	b.SetBytes(int64(len(img)))
}

func BenchmarkApply(b *testing.B) {
	old, img := benchPair(b)
	var p bytes.Buffer
	if err := Make(&p, old, img); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := Apply(io.Discard, old, bytes.NewReader(p.Bytes()), int64(len(img))); err != nil {
			b.Fatal(err)
		}
	}
}

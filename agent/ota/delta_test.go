package ota

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/agent/internal/peertest"
)

func TestApplyDelta(t *testing.T) {
	base, target := images(5, 256<<10)
	for _, id := range []uint32{0, 1, 0x5741} {
		patch := makeDelta(t, base, target, id)
		var out bytes.Buffer
		n, err := ApplyDelta(&out, bytes.NewReader(patch), base, int64(len(target)))
		if err != nil || n != int64(len(target)) || !bytes.Equal(out.Bytes(), target) {
			t.Fatalf("dict id %d: n=%d err=%v equal=%v", id, n, err, bytes.Equal(out.Bytes(), target))
		}
	}
	t.Run("fail/longer-than-target", func(t *testing.T) {
		patch := makeDelta(t, base, target, 0)
		_, err := ApplyDelta(&bytes.Buffer{}, bytes.NewReader(patch), base, int64(len(target))-1)
		if !errors.Is(err, errDeltaTooLong) {
			t.Fatalf("ApplyDelta = %v", err)
		}
	})
	t.Run("fail/garbage", func(t *testing.T) {
		if _, err := ApplyDelta(&bytes.Buffer{}, bytes.NewReader([]byte("not zstd")), base, 100); err == nil {
			t.Fatal("garbage patch applied")
		}
	})
}

// TestApplyDeltaFromZstdCLI applies a patch made by the reference zstd
// (`zstd --patch-from`), so the server may build deltas with either.
func TestApplyDeltaFromZstdCLI(t *testing.T) {
	peertest.Require(t, "zstd", "zstd")
	base, target := images(6, 1<<20)
	dir := t.TempDir()
	bp, tp, pp := filepath.Join(dir, "old.img"), filepath.Join(dir, "new.img"), filepath.Join(dir, "patch.zst")
	os.WriteFile(bp, base, 0o600)
	os.WriteFile(tp, target, 0o600)
	if out, err := exec.Command("zstd", "-q", "-19", "--patch-from="+bp, tp, "-o", pp).CombinedOutput(); err != nil {
		t.Fatalf("zstd: %v\n%s", err, out)
	}
	patch, _ := os.ReadFile(pp)
	var out bytes.Buffer
	if _, err := ApplyDelta(&out, bytes.NewReader(patch), base, int64(len(target))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), target) {
		t.Fatal("reconstructed image differs")
	}
	t.Logf("zstd --patch-from: %d-byte patch for a %d-byte image", len(patch), len(target))
}

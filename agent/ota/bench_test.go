package ota

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// deltaChildEnv makes the test binary apply one delta and exit, so that
// its peak RSS measures ApplyDelta alone.
const deltaChildEnv = "WARD_OTA_DELTA_CHILD"

func TestMain(m *testing.M) {
	if args := os.Getenv(deltaChildEnv); args != "" {
		os.Exit(deltaChild(args))
	}
	os.Exit(m.Run())
}

// deltaChild applies dir/patch to dir/base as the engine does (base in
// memory, patch and output streamed) and prints the output's SHA-256.
func deltaChild(dir string) int {
	base, err := os.ReadFile(filepath.Join(dir, "base"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	patch, err := os.Open(filepath.Join(dir, "patch"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	h := sha256.New()
	if _, err := ApplyDelta(io.MultiWriter(out, h), patch, base, 1<<30); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// VmHWM is this process's peak RSS since exec. (rusage's maxrss
	// would not do: on Linux, exec folds the forking parent's peak into
	// it.)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var hwm int64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fmt.Sscanf(strings.TrimSpace(v), "%d kB", &hwm)
		}
	}
	fmt.Printf("%x %d", h.Sum(nil), hwm)
	return 0
}

// firmwareLike returns n bytes of Go toolchain binaries (real machine
// code), and a next version with about a tenth of its bytes changed the
// way a rebuild changes them: shifted runs and rewritten regions.
func firmwareLike(tb testing.TB, n int) (base, target []byte) {
	tb.Helper()
	dir := filepath.Join(os.Getenv("GOROOT"), "pkg", "tool")
	if os.Getenv("GOROOT") == "" {
		out, err := exec.Command("go", "env", "GOROOT").Output()
		if err != nil {
			tb.Skip("no Go toolchain to take binaries from")
		}
		dir = filepath.Join(string(bytes.TrimSpace(out)), "pkg", "tool")
	}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && len(base) < n {
			b, _ := os.ReadFile(p)
			base = append(base, b...)
		}
		return nil
	})
	if len(base) < n {
		tb.Skipf("only %d bytes of binaries found", len(base))
	}
	base = base[:n]
	rng := rand.New(rand.NewPCG(1, 2))
	target = make([]byte, 0, n)
	for off := 0; off < n; {
		run := min(n-off, 4096+rng.IntN(64<<10))
		target = append(target, base[off:off+run]...)
		off += run
		// Rewrite about 10% of the following bytes.
		mod := min(n-off, run/9)
		for range mod {
			target = append(target, byte(rng.Uint32()))
		}
		off += mod
	}
	return base, target[:n]
}

// BenchmarkApplyDelta32MiB applies a zstd raw-dictionary delta to a 32 MiB
// image in a child process and reports its peak RSS (goal: <= 80 MiB).
func BenchmarkApplyDelta32MiB(b *testing.B) {
	base, target := firmwareLike(b, 32<<20)
	// A window covering base and target, as the server and
	// `zstd --patch-from` use.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(0, base), zstd.WithWindowSize(64<<20),
		zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	patch := enc.EncodeAll(target, nil)
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "base"), base, 0o600)
	os.WriteFile(filepath.Join(dir, "patch"), patch, 0o600)
	want := fmt.Sprintf("%x", sha256.Sum256(target))
	exe, _ := os.Executable()
	var peak int64
	b.ResetTimer()
	for b.Loop() {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), deltaChildEnv+"="+dir)
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("child: %v", err)
		}
		var got string
		var hwm int64
		if _, err := fmt.Sscanf(string(out), "%s %d", &got, &hwm); err != nil || got != want || hwm == 0 {
			b.Fatalf("child said %q, want the image's hash and its peak RSS", out)
		}
		peak = max(peak, hwm)
	}
	b.ReportMetric(float64(peak)/1024, "peak-RSS-MiB")
	b.ReportMetric(float64(len(patch))/(1<<20), "patch-MiB")
}

// BenchmarkBootEnvWrite measures one boot environment update (two reads,
// one write, one sync) on the operating system's file system.
func BenchmarkBootEnvWrite(b *testing.B) {
	fsys := DirFS(b.TempDir())
	if err := InitBootEnv(fsys, SlotA); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := WriteBootEnv(fsys, BootEnv{Active: SlotA, Try: SlotB, UpgradeAvailable: true, BootLimit: 2}); err != nil {
			b.Fatal(err)
		}
	}
}

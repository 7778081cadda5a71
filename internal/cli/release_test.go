package cli_test

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/api"
)

// TestReleasePublishListAssign: `ward release publish` uploads images to
// the tenant's Image repository (the second one gets a delta), `list`
// shows them, a second publish of the same version and an assignment to
// an unknown device are refused with a clear message.
func TestReleasePublishListAssign(t *testing.T) {
	dir, _ := startServer(t)
	mustRun(t, "--data", dir, "tenant", "create", "acme")
	img := make([]byte, 32<<10)
	rand.Read(img)
	files := t.TempDir()
	f10, f11 := filepath.Join(files, "1.0.img"), filepath.Join(files, "1.1.img")
	os.WriteFile(f10, img, 0o600)
	img[100] ^= 1
	os.WriteFile(f11, img, 0o600)
	pub := func(v, file string) (int, string, string) {
		return run(t, "--data", dir, "release", "publish", "--tenant", "acme", "--name", "fw", "--version", v,
			"--hw", "board-1", "--security-version", "1", "--image", file)
	}
	if code, out, errs := pub("1.0", f10); code != 0 || !strings.Contains(out, "fw@1.0 for board-1 published") {
		t.Fatalf("publish 1.0: %d %s %s", code, out, errs)
	}
	if code, out, errs := pub("1.1", f11); code != 0 || !strings.Contains(out, "delta") {
		t.Fatalf("publish 1.1: %d %s %s", code, out, errs)
	}
	if code, _, errs := pub("1.1", f11); code != 1 || !strings.Contains(errs, "already published") {
		t.Fatalf("publish 1.1 again: %d %s", code, errs)
	}
	code, _, errs := run(t, "--data", dir, "release", "publish", "--tenant", "acme", "--name", "fw", "--version", "2", "--hw", "board-1", "--image", f11)
	if code != 2 || !strings.Contains(errs, "--security-version is required") {
		t.Fatalf("publish without a security version: %d %s", code, errs)
	}
	var rs []api.Release
	if err := json.Unmarshal([]byte(mustRun(t, "--data", dir, "-o", "json", "release", "list", "--tenant", "acme")), &rs); err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Release != "fw@1.0" || rs[1].ReleaseCounter != 2 || len(rs[1].Deltas) != 1 || rs[1].Length != 32<<10 {
		t.Fatalf("list: %+v", rs)
	}
	code, _, errs = run(t, "--data", dir, "release", "assign", "--tenant", "acme", "--device", "ghost-1", "--release", "fw@1.1")
	if code != 1 || !strings.Contains(errs, "404") {
		t.Fatalf("assign to an unknown device: %d %s", code, errs)
	}
	// The tenant minimum security version: shown, raised, never lowered.
	minSV := func(args ...string) (int, string, string) {
		return run(t, append([]string{"--data", dir, "release", "min-security-version", "--tenant", "acme"}, args...)...)
	}
	if code, out, errs := minSV(); code != 0 || !strings.Contains(out, "minimum security version  0") {
		t.Fatalf("show: %d %q %s", code, out, errs)
	}
	if code, out, errs := minSV("1"); code != 0 || !strings.Contains(out, "minimum security version  1") || !strings.Contains(out, "assignments re-signed     0") {
		t.Fatalf("raise: %d %q %s", code, out, errs)
	}
	if code, _, errs := minSV("0"); code != 1 || !strings.Contains(errs, "only goes up") {
		t.Fatalf("lower: %d %s", code, errs)
	}
	if code, _, errs := minSV("x"); code != 2 || !strings.Contains(errs, "non-negative integer") {
		t.Fatalf("bad N: %d %s", code, errs)
	}
}

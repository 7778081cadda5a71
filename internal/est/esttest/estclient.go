package esttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireTool returns the path of an external program. When it is absent
// the test is skipped, unless the CI environment variable is set, in which
// case the test fails: CI must exercise every peer.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s is not installed; skipping interop test (apt-get install -y %s)", name, name)
	}
	return p
}

// BuildEstclient builds the globalsign/est estclient (pinned in the
// test/interop module) into a temporary directory and returns its path.
// If the build fails (no network for the module download, say) the test
// is skipped, or fails when CI is set.
func BuildEstclient(t testing.TB) string {
	t.Helper()
	goTool := RequireTool(t, "go")
	gomod, err := exec.Command(goTool, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		failOrSkip(t, "cannot locate the main module: %v", err)
	}
	dir := filepath.Join(filepath.Dir(strings.TrimSpace(string(gomod))), "test", "interop")
	bin := filepath.Join(t.TempDir(), "estclient")
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/globalsign/est/cmd/estclient")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		failOrSkip(t, "building estclient in %s: %v\n%s", dir, err, out)
	}
	return bin
}

func failOrSkip(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

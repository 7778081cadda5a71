package agentcli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestShellCmd(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	// The argument comes last and in the environment.
	c := shellCmd{line: "printf '%s|%s' \"$WARD_X\"", out: &out}
	if err := c.run(context.Background(), time.Minute, []string{"WARD_X=env"}, "arg"); err != nil {
		t.Fatal(err)
	}
	if out.String() != "env|arg" {
		t.Fatalf("output %q", out.String())
	}
	// A failure says how the command ended, never the command line.
	secret := filepath.Join(dir, "token-s3cr3t")
	c = shellCmd{line: "test -e " + secret + " || exit 7", out: &out}
	err := c.run(context.Background(), time.Minute, nil)
	if err == nil || err.Error() != "exited with status 7" {
		t.Fatalf("err %v", err)
	}
	os.WriteFile(secret, nil, 0o600)
	if err := c.run(context.Background(), time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	// A command that hangs is killed at the timeout.
	c = shellCmd{line: "sleep 30", out: &out}
	start := time.Now()
	err = c.run(context.Background(), 100*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "did not finish within") || time.Since(start) > 3*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	// Stopping the agent stops the command and says so.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.run(ctx, time.Minute, nil); err != context.Canceled {
		t.Fatalf("err %v", err)
	}
}

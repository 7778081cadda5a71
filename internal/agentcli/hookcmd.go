package agentcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"time"
)

// Bounds on the operator's commands (--twin-hook, --health-cmd,
// --reboot-cmd): a command that hangs must not hang the agent.
const (
	// hookTimeout bounds --twin-hook: applying a configuration file is
	// a reload, not a migration.
	hookTimeout = 2 * time.Minute
	// healthCmdTimeout bounds one run of --health-cmd.
	healthCmdTimeout = 5 * time.Minute
	// rebootCmdTimeout bounds --reboot-cmd; `systemctl reboot` returns
	// as soon as the shutdown is queued.
	rebootCmdTimeout = 2 * time.Minute
	// killGrace is how long the agent waits for a killed command's
	// output to close.
	killGrace = 5 * time.Second
)

// shellCmd runs an operator's command line with /bin/sh -c, as systemd's
// and cron's users expect, with args after it as "$1"... and env added to
// the agent's environment. The command's output goes to out (the agent's
// stderr, so a supervisor's journal keeps it). Errors say how the command
// ended, never the command line itself, which may hold a secret.
type shellCmd struct {
	line string
	out  io.Writer
}

func (c shellCmd) run(parent context.Context, timeout time.Duration, env []string, args ...string) error {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	// "$@" appends the arguments to the operator's line.
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", c.line + ` "$@"`, "ward-agent"}, args...)...)
	cmd.Env = append(cmd.Environ(), env...)
	cmd.Stdout, cmd.Stderr = c.out, c.out
	cmd.WaitDelay = killGrace
	ownGroup(cmd)
	err := cmd.Run()
	if err == nil {
		return nil
	}
	switch {
	case parent.Err() != nil:
		return parent.Err()
	case ctx.Err() != nil:
		return fmt.Errorf("did not finish within %v", timeout)
	}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return fmt.Errorf("exited with status %d", ee.ExitCode())
	}
	return fmt.Errorf("could not run: %w", err)
}

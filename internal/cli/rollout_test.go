package cli_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/fleet"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
)

// TestRolloutCommands: `ward rollout create -f spec.yaml` over a real
// server, approval refused to its creator and accepted from another
// operator's token, per-phase counts in `status`, `list`, `pause`,
// `resume`, `abort`.
func TestRolloutCommands(t *testing.T) {
	ctx := context.Background()
	dir, srv := startServer(t)
	must := func(args ...string) string {
		t.Helper()
		return mustRun(t, append([]string{"--data", dir}, args...)...)
	}
	must("tenant", "create", "acme")
	files := t.TempDir()
	for _, v := range []string{"1.0", "1.1"} {
		img := make([]byte, 4<<10)
		rand.Read(img)
		f := filepath.Join(files, v+".img")
		os.WriteFile(f, img, 0o600)
		must("release", "publish", "--tenant", "acme", "--name", "fw", "--version", v, "--hw", "board-1", "--security-version", "1", "--image", f)
	}
	for _, id := range []string{"d1", "d2", "d3", "d4"} {
		err := srv.Store().InTx(ctx, func(tx store.Tx) error {
			commit, err := srv.Fleet.RegisterTx(ctx, tx, fleet.Registration{Tenant: "acme", Device: id,
				Tags: map[string]string{"hw_model": "board-1", "release": "fw@1.0"}})
			if err == nil {
				defer commit()
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	spec := filepath.Join(files, "spec.yaml")
	os.WriteFile(spec, []byte("release: fw@1.1\ncanary:\n  devices: [d1]\nstages:\n  - percent: 100\ntimeout: 1h\napproval:\n  required: true\n"), 0o600)

	var st api.RolloutStatus
	if err := json.Unmarshal([]byte(must("-o", "json", "rollout", "create", "--tenant", "acme", "-f", spec)), &st); err != nil {
		t.Fatal(err)
	}
	if st.State != "pending_approval" || st.Devices != 4 {
		t.Fatalf("create: %+v", st)
	}
	if code, _, errs := run(t, "--data", dir, "rollout", "approve", "--tenant", "acme", st.ID); code != 1 || !strings.Contains(errs, "creator of a rollout cannot approve") {
		t.Fatalf("self-approval: %d %s", code, errs)
	}
	sec, _, err := srv.Tokens.Create(ctx, nil, tenant.NewTokenRequest{Role: tenant.RoleOperator, Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("WARD_TOKEN", sec)
	out := must("rollout", "approve", "--tenant", "acme", st.ID)
	os.Unsetenv("WARD_TOKEN")
	if !strings.Contains(out, "running") || !strings.Contains(out, "approved by") {
		t.Fatalf("approve: %s", out)
	}
	// The canary device (offline) has its job; the stage waits.
	out = must("rollout", "status", "--tenant", "acme", st.ID)
	for _, want := range []string{"canary *", "stage 1", "approved by", "IN PROGRESS"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}
	var got api.RolloutStatus
	json.Unmarshal([]byte(must("-o", "json", "rollout", "status", "--tenant", "acme", st.ID)), &got)
	if len(got.Phases) != 2 || got.Phases[0].Devices != 1 || got.Phases[0].InProgress != 1 || got.Phases[1].Pending != 3 {
		t.Fatalf("status counts: %+v", got.Phases)
	}
	if out := must("rollout", "pause", "--tenant", "acme", "--reason", "checking dashboards", st.ID); !strings.Contains(out, "checking dashboards") {
		t.Fatalf("pause: %s", out)
	}
	if code, _, errs := run(t, "--data", dir, "rollout", "pause", "--tenant", "acme", st.ID); code != 1 || !strings.Contains(errs, "cannot pause a rollout that is paused") {
		t.Fatalf("pause twice: %d %s", code, errs)
	}
	must("rollout", "resume", "--tenant", "acme", st.ID)
	if out := must("rollout", "list", "--tenant", "acme"); !strings.Contains(out, st.ID) || !strings.Contains(out, "running") {
		t.Fatalf("list: %s", out)
	}
	// status --watch refreshes until the rollout ends: started while it
	// runs, it sees the abort and returns by itself.
	watched := make(chan string, 1)
	go func() {
		_, out, errs := run(t, "--data", dir, "rollout", "status", "--tenant", "acme", "--watch", "100ms", st.ID)
		watched <- out + errs
	}()
	time.Sleep(300 * time.Millisecond)
	if out := must("rollout", "abort", "--tenant", "acme", st.ID); !strings.Contains(out, "aborted") {
		t.Fatalf("abort: %s", out)
	}
	select {
	case out := <-watched:
		if strings.Count(out, "--- ") < 2 || !regexp.MustCompile(`state\s+running`).MatchString(out) || !regexp.MustCompile(`state\s+aborted\n`).MatchString(out) {
			t.Fatalf("status --watch:\n%s", out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("status --watch did not return after the rollout aborted")
	}
	if code, _, errs := run(t, "--data", dir, "rollout", "status", "--tenant", "acme", "--watch", "1ms", st.ID); code != 2 || !strings.Contains(errs, "at least 100ms") {
		t.Fatalf("--watch 1ms: %d %s", code, errs)
	}
	if code, _, errs := run(t, "--data", dir, "rollout", "create", "--tenant", "acme", "-f", filepath.Join(files, "1.0.img")); code != 1 || !strings.Contains(errs, "rollout spec") {
		t.Fatalf("create from a non-YAML file: %d %s", code, errs)
	}
}

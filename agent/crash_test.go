package agent_test

import (
	"bufio"
	"context"
	"crypto"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	"github.com/wardiot/ward/agent/keystore"
)

// Environment of the crash helper process.
const (
	crashHelperEnv = "WARD_AGENT_CRASH_HELPER" // state base directory
	crashServerEnv = "WARD_AGENT_CRASH_SERVER"
	crashAtEnv     = "WARD_AGENT_CRASH_AT" // "step:n": SIGKILL at the n-th time step is reached
)

// renewalSteps are the points where the agent calls its step hook, in
// order. A crash at stateRenamed or later must leave the new credential.
var renewalSteps = []string{"key-generated", "csr-signed", "reenrolled", "state-temp-written", "state-renamed", "state-written", "old-key-deleted"}

const firstCommittedStep = 4 // index of "state-renamed"

// TestCrashHelper is the child process of TestSIGKILLDuringRenewal: it
// loads the agent from the shared state directory and renews over and
// over until it is killed.
func TestCrashHelper(t *testing.T) {
	base := os.Getenv(crashHelperEnv)
	if base == "" {
		t.Skip("helper process for TestSIGKILLDuringRenewal")
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash helper:", err)
		os.Exit(3)
	}
	ks, err := keystore.Open("file:" + filepath.Join(base, "keys"))
	if err != nil {
		fail(err)
	}
	a, err := agent.New(agent.Config{StateDir: filepath.Join(base, "state"), Keystore: ks, Server: os.Getenv(crashServerEnv)})
	if err != nil {
		fail(err)
	}
	if at := os.Getenv(crashAtEnv); at != "" {
		step, nStr, _ := strings.Cut(at, ":")
		n, _ := strconv.Atoi(nStr)
		seen := 0
		agent.SetStepHook(a, func(s string) {
			if s == step {
				if seen++; seen == n {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {} // the signal is on its way
				}
			}
		})
	}
	fmt.Println("ready")
	for {
		if err := a.Renew(context.Background()); err != nil {
			fail(err)
		}
	}
}

// TestSIGKILLDuringRenewal kills a renewing agent process 50 times, half
// at each named step of the renewal (chosen at random), half after a
// random delay, and checks after each kill that a restarted agent loads a
// usable credential: the state names a key that exists, the certificate
// certifies that key and chains to the CA, and no other device key is
// left in the keystore.
func TestSIGKILLDuringRenewal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 50 processes")
	}
	e := newEnv(t, nil)
	e.ca.Now = time.Now // the child runs on the real clock
	e.clock.Set(time.Now())
	base := filepath.Dir(e.cfg.StateDir)
	e.enroll(t)

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	const iterations = 50
	var atStep, timed, newCred, oldCred int
	strayTemp := map[string]bool{}
	for i := range iterations {
		before, err := agent.ReadStatus(e.cfg.StateDir, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashHelperEnv+"="+base, crashServerEnv+"="+e.url)
		step, n := -1, 0
		if i%2 == 0 {
			step, n = rng.IntN(len(renewalSteps)), 1+rng.IntN(3)
			cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%s:%d", crashAtEnv, renewalSteps[step], n))
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if !bufio.NewScanner(out).Scan() {
			t.Fatalf("iteration %d: helper did not start: %s", i, stderr.String())
		}
		if step < 0 {
			// A random point: somewhere in the next few renewals.
			time.Sleep(time.Duration(rng.IntN(30_000)) * time.Microsecond)
			cmd.Process.Signal(syscall.SIGKILL)
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("iteration %d: helper ended with %v, not SIGKILL: %s", i, err, stderr.String())
		}

		// Restart: New must load a valid credential and clean up.
		ks := openFileKeystore(t, filepath.Join(base, "keys"))
		cfg := e.cfg
		cfg.Keystore, cfg.Clock = ks, nil
		a, err := agent.New(cfg)
		if err != nil {
			t.Fatalf("iteration %d (step %d:%d): restart failed: %v", i, step, n, err)
		}
		checkCredential(t, e.ca, a, time.Now())
		gen := a.Identity().Generation
		if key, err := ks.Load(context.Background(), agent.KeyNameForTest(gen)); err != nil || !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(a.Identity().Certificate.PublicKey) {
			t.Fatalf("iteration %d: state names key %d that does not match: %v", i, gen, err)
		}
		entries, _ := os.ReadDir(filepath.Join(base, "keys"))
		var keys []string
		for _, de := range entries {
			if strings.HasPrefix(de.Name(), "device-") {
				keys = append(keys, de.Name())
			} else {
				strayTemp[de.Name()] = true
			}
		}
		if len(keys) != 1 {
			t.Fatalf("iteration %d: keystore holds %v after restart, want only generation %d", i, keys, gen)
		}
		a.Close()

		if step >= 0 {
			atStep++
			want := before.Generation + uint64(n) - 1
			if step >= firstCommittedStep {
				want++
			}
			if gen != want {
				t.Fatalf("iteration %d: killed at %s #%d from generation %d: restarted at %d, want %d", i, renewalSteps[step], n, before.Generation, gen, want)
			}
			if step >= firstCommittedStep {
				newCred++
			} else {
				oldCred++
			}
		} else {
			timed++
		}
	}
	final, _ := agent.ReadStatus(e.cfg.StateDir, time.Now())
	t.Logf("%d SIGKILLs (%d at named steps: %d left the new credential, %d the old; %d at random times); every restart loaded a valid credential; final generation %d",
		iterations, atStep, newCred, oldCred, timed, final.Generation)
	if len(strayTemp) > 0 {
		// Not the agent's files: the file keystore's staging copies of
		// keys whose Generate was killed. They name no key and are never
		// loaded, but hold key material until removed.
		t.Logf("the file keystore left %d staging files after kills inside Generate", len(strayTemp))
	}
}

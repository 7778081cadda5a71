package ota

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
)

func (f *faultFS) isCrashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed
}

func (f *faultFS) stepCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.steps
}

// powerLossRun installs v2 on a device whose power is cut at the
// crashAt-th write (0: never), restarting it through the simulated
// bootloader until the job is over. It checks the invariants at every
// boot and returns the final journal and the number of writes made.
func powerLossRun(t *testing.T, f *fleet, seed uint64, failHealth bool, crashes ...int) (j *Journal, steps, cuts int) {
	t.Helper()
	d := newDevice(t, f, seed)
	if failHealth {
		d.health = func(context.Context) error { return errors.New("unhealthy") }
	}
	d.fs.mu.Lock()
	d.fs.steps = 0
	d.fs.mu.Unlock()
	crashAt := 0
	arm := func() {
		if len(crashes) > 0 {
			crashAt, crashes = crashes[0], crashes[1:]
			d.fs.mu.Lock()
			d.fs.steps, d.fs.crashAt = 0, crashAt
			d.fs.mu.Unlock()
		}
	}
	arm()
	ctx := context.Background()
	version := map[string]uint64{SlotA: 1, SlotB: 2}
	image := map[string][]byte{SlotA: f.v1, SlotB: f.v2}
	last, err := readJournal(d.fs)
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if got := d.slot(d.booted, testImage); !bytes.Equal(got, image[d.booted]) {
			t.Fatalf("crash at %d (%s): booted slot %s does not verify", crashAt, when, d.booted)
		}
		fl, err := d.floor.Floor()
		if err != nil {
			t.Fatalf("crash at %d (%s): floor: %v", crashAt, when, err)
		}
		if fl > version[d.booted] {
			t.Fatalf("crash at %d (%s): floor %d above the booted slot's version %d", crashAt, when, fl, version[d.booted])
		}
		j, err := readJournal(d.fs)
		if err != nil {
			t.Fatalf("crash at %d (%s): journal: %v", crashAt, when, err)
		}
		if !last.notAfter(j) {
			t.Fatalf("crash at %d (%s): journal went back from %d/%s to %d/%s", crashAt, when, last.Seq, last.Phase, j.Seq, j.Phase)
		}
		last = j
	}
	powerCut := func() {
		cuts++
		d.fs.powerCycle()
		s, err := Boot(d.fs)
		if err != nil {
			t.Fatalf("crash at %d: bootloader: %v", crashAt, err)
		}
		d.booted = s
		check("after power cut")
		arm()
	}
	jobs := 0
	for range 30 {
		e, err := d.engine()
		if err == nil {
			err = e.Start(ctx)
		}
		if err == nil {
			j := e.Journal()
			if j.Installed.SHA256 == sha(f.v2) || jobs == 3 {
				if d.fs.isCrashed() {
					t.Fatalf("crash at %d: engine ignored a failed write", crashAt)
				}
				break
			}
			jobs++
			err = e.Handle(ctx, job2)
		}
		switch {
		case d.fs.isCrashed():
			powerCut()
		case errors.Is(err, ErrRebooting):
			d.fs.cleanReboot()
			s, err := Boot(d.fs)
			if d.fs.isCrashed() {
				powerCut()
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			d.booted = s
			check("after reboot")
		case err != nil:
			t.Fatalf("crash at %d: %v", crashAt, err)
		}
	}
	check("end")
	j = last
	env, _, err := ReadBootEnv(d.fs)
	if err != nil {
		t.Fatal(err)
	}
	fl, _ := d.floor.Floor()
	newCommitted := j.Installed.SHA256 == sha(f.v2) && env.Active == SlotB && !env.UpgradeAvailable && d.booted == SlotB && fl == 2
	oldCommitted := j.Installed.SHA256 == sha(f.v1) && env.Active == SlotA && !env.UpgradeAvailable && d.booted == SlotA && fl == 1
	if !newCommitted && !oldCommitted {
		t.Fatalf("crash at %d: mixed end state: journal %+v, boot env %+v, booted %s, floor %d", crashAt, j, env, d.booted, fl)
	}
	return j, d.fs.stepCount(), cuts
}

// TestPowerLoss cuts the power at every write of an update (download,
// install, boot environment, trial boot, commit or rollback), several
// times over with different tears, for full images, deltas and a failing
// health gate. WARD_POWERLOSS_TRIALS changes the number of trials
// (default 600).
func TestPowerLoss(t *testing.T) {
	trials := 600
	if testing.Short() {
		trials = 120
	}
	if s := os.Getenv("WARD_POWERLOSS_TRIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		trials = n
	}
	total := 0
	for _, tc := range []struct {
		name              string
		delta, failHealth bool
	}{{"full", false, false}, {"delta", true, false}, {"unhealthy", false, true}} {
		f := newFleet(t, tc.delta)
		_, steps, _ := powerLossRun(t, f, 0, tc.failHealth)
		ended := map[bool]int{}
		cuts := 0
		for i := range trials / 3 {
			j, _, c := powerLossRun(t, f, uint64(i), tc.failHealth, 1+i%steps)
			cuts += c
			ended[j.Installed.SHA256 == sha(f.v2)]++
		}
		if tc.failHealth && ended[true] > 0 {
			t.Fatalf("%s: %d updates committed despite the health gate", tc.name, ended[true])
		}
		total += cuts
		t.Logf("%s: %d writes per update, %d power cuts: %d ended on v2, %d on v1", tc.name, steps, cuts, ended[true], ended[false])
	}
	t.Logf("%d power cuts in all", total)
}

// TestPowerLossTwice cuts the power twice per update, the second time
// somewhere in the recovery from the first (WARD_POWERLOSS_TRIALS/3
// trials, default 200).
func TestPowerLossTwice(t *testing.T) {
	trials := 200
	if testing.Short() {
		trials = 40
	}
	if s := os.Getenv("WARD_POWERLOSS_TRIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		trials = n / 3
	}
	f := newFleet(t, true)
	_, steps, _ := powerLossRun(t, f, 0, false)
	rng := rand.New(rand.NewPCG(42, 42))
	ended := map[bool]int{}
	cuts := 0
	for i := range trials {
		j, _, c := powerLossRun(t, f, uint64(i), false, 1+rng.IntN(steps), 1+rng.IntN(steps))
		cuts += c
		ended[j.Installed.SHA256 == sha(f.v2)]++
	}
	t.Logf("%d updates, %d power cuts: %d ended on v2, %d on v1", trials, cuts, ended[true], ended[false])
}

package ota

import (
	"bytes"
	"context"
	"errors"
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
func powerLossRun(t *testing.T, f *fleet, seed uint64, crashAt int) (*Journal, int) {
	t.Helper()
	d := newDevice(t, f, seed)
	d.fs.mu.Lock()
	d.fs.steps, d.fs.crashAt = 0, crashAt
	d.fs.mu.Unlock()
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
		d.fs.powerCycle()
		s, err := Boot(d.fs)
		if err != nil {
			t.Fatalf("crash at %d: bootloader: %v", crashAt, err)
		}
		d.booted = s
		check("after power cut")
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
	j := last
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
	return j, d.fs.stepCount()
}

// TestPowerLoss cuts the power at every write of an update (download,
// install, boot environment, trial boot, commit), several times over with
// different tears, for full images and deltas. WARD_POWERLOSS_TRIALS
// changes the number of trials (default 600).
func TestPowerLoss(t *testing.T) {
	trials := 600
	if testing.Short() {
		trials = 100
	}
	if s := os.Getenv("WARD_POWERLOSS_TRIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		trials = n
	}
	for _, delta := range []bool{false, true} {
		f := newFleet(t, delta)
		_, steps := powerLossRun(t, f, 0, 0)
		committed, rolledBack := 0, 0
		for i := range trials / 2 {
			crashAt := 1 + i%steps
			j, _ := powerLossRun(t, f, uint64(i), crashAt)
			if j.Installed.SHA256 == sha(f.v2) {
				committed++
			} else {
				rolledBack++
			}
		}
		t.Logf("delta=%v: %d writes per update, %d power cuts: %d ended on v2, %d on v1", delta, steps, trials/2, committed, rolledBack)
	}
}

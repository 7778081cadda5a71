package agentcli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"text/tabwriter"

	"github.com/wardiot/ward/agent"
	agentota "github.com/wardiot/ward/agent/ota"
)

// maxStateFileSize bounds state.json and floor.log as status reads them
// (the engine's own limits are 16 KiB and 64 KiB).
const maxStateFileSize = 64 << 10

// fullStatus is what `ward-agent status` shows: the identity and, when an
// OTA directory is configured, the update state.
type fullStatus struct {
	agent.Status
	OTA *otaStatus `json:"ota,omitempty"`
}

// otaStatus is the update state read from the OTA directory, without
// opening the engine (a running agent owns it).
type otaStatus struct {
	Dir string `json:"dir"`
	// Installed is the committed slot and what it runs.
	Slot    string `json:"slot,omitempty"`
	Release string `json:"release,omitempty"`
	// Phase, Rollout, Job and Error describe the last job.
	Phase   string `json:"phase,omitempty"`
	Rollout string `json:"rollout,omitempty"`
	Job     string `json:"job_release,omitempty"`
	Error   string `json:"error,omitempty"`
	// Boot is the boot environment: the committed slot and, with an
	// update pending, the slot on trial and its boot count.
	BootActive string `json:"boot_active,omitempty"`
	BootTry    string `json:"boot_try,omitempty"`
	BootCount  uint32 `json:"boot_count,omitempty"`
	// Floor is the anti-rollback floor: "tpm" means it is in the TPM's
	// NV counter, which only the running agent reads.
	FloorKind string  `json:"floor_kind"`
	Floor     *uint64 `json:"floor,omitempty"`
	// Problem says what could not be read.
	Problem string `json:"problem,omitempty"`
}

func readOTAStatus(stateDir, dir string) *otaStatus {
	st := &otaStatus{Dir: dir}
	var problems []error
	b, err := readFileLimited(filepath.Join(dir, "state.json"), maxStateFileSize, "update journal")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st.Phase = string(agentota.PhaseIdle)
	case err != nil:
		problems = append(problems, err)
	default:
		j, err := agentota.ParseJournal(b)
		if err != nil {
			problems = append(problems, err)
			break
		}
		st.Slot, st.Release = j.Installed.Slot, j.Installed.Release
		st.Phase, st.Rollout, st.Job, st.Error = string(j.Phase), j.Rollout, j.Release, j.Error
	}
	if env, _, err := agentota.ReadBootEnv(agentota.DirFS(dir)); err == nil {
		st.BootActive = env.Active
		if env.UpgradeAvailable {
			st.BootTry, st.BootCount = env.Try, env.BootCount
		}
	}
	if s, err := readSettings(stateDir); err == nil && len(s.Keystore) > 4 && s.Keystore[:4] == "tpm:" {
		st.FloorKind = "tpm"
	} else {
		st.FloorKind = "log"
		key, kerr := readFileLimited(filepath.Join(stateDir, floorKeyFile), floorKeySize, "floor key")
		log, lerr := readFileLimited(filepath.Join(dir, "floor.log"), maxStateFileSize, "floor log")
		switch {
		case errors.Is(lerr, fs.ErrNotExist):
			zero := uint64(0)
			st.Floor = &zero
		case kerr != nil:
			problems = append(problems, kerr)
		case lerr != nil:
			problems = append(problems, lerr)
		default:
			vs, _, err := agentota.ParseFloorLog(log, key)
			if err != nil {
				problems = append(problems, err)
				break
			}
			f := uint64(0)
			if len(vs) > 0 {
				f = vs[len(vs)-1]
			}
			st.Floor = &f
		}
	}
	if err := errors.Join(problems...); err != nil {
		st.Problem = err.Error()
	}
	return st
}

func printOTAStatus(w io.Writer, s *otaStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	installed := "unknown release"
	if s.Release != "" {
		installed = s.Release
	}
	if s.Slot != "" {
		installed += " in slot " + s.Slot
	}
	fmt.Fprintf(tw, "update:\t%s (%s)\n", installed, s.Dir)
	job := s.Phase
	if s.Job != "" {
		job = fmt.Sprintf("%s %s", s.Job, s.Phase)
		if s.Rollout != "" {
			job += ", rollout " + s.Rollout
		}
	}
	if s.Error != "" {
		job += ": " + s.Error
	}
	fmt.Fprintf(tw, "last job:\t%s\n", job)
	if s.BootActive != "" {
		boot := "slot " + s.BootActive
		if s.BootTry != "" {
			boot += fmt.Sprintf(", trying slot %s (boot %d)", s.BootTry, s.BootCount)
		}
		fmt.Fprintf(tw, "boot:\t%s\n", boot)
	}
	switch {
	case s.FloorKind == "tpm":
		fmt.Fprintf(tw, "floor:\tin the TPM's NV counter\n")
	case s.Floor != nil:
		fmt.Fprintf(tw, "floor:\tsecurity version %d (MAC-chained log)\n", *s.Floor)
	}
	if s.Problem != "" {
		fmt.Fprintf(tw, "problem:\t%s\n", s.Problem)
	}
	tw.Flush()
}

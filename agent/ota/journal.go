package ota

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"
)

// maxJournalSize bounds state.json: it holds a few names and numbers, and
// a corrupted or planted file must not make the agent allocate without
// bound at start-up.
const maxJournalSize = 16 << 10

// journalName is the engine's journal, relative to its FS.
const journalName = "state.json"

// Phase is a step of an update. Phases of one job only move forward; a
// new job starts with a higher sequence number.
type Phase string

// The phases of an update, in order. Committed, RolledBack and Failed are
// final.
const (
	PhaseIdle        Phase = "idle"
	PhaseDownloading Phase = "downloading"
	PhaseDownloaded  Phase = "downloaded" // staged file verified
	PhaseInstalling  Phase = "installing" // writing the inactive slot
	PhaseInstalled   Phase = "installed"  // slot written, read back, verified
	PhaseRebooting   Phase = "rebooting"  // boot environment says: try the slot
	PhaseTrial       Phase = "trial"      // booted the new slot, health gate running
	PhaseCommitted   Phase = "committed"
	PhaseRolledBack  Phase = "rolled_back"
	PhaseFailed      Phase = "failed"
)

// rank orders phases; final phases share the highest rank.
func (p Phase) rank() int {
	switch p {
	case PhaseIdle:
		return 0
	case PhaseDownloading:
		return 1
	case PhaseDownloaded:
		return 2
	case PhaseInstalling:
		return 3
	case PhaseInstalled:
		return 4
	case PhaseRebooting:
		return 5
	case PhaseTrial:
		return 6
	case PhaseCommitted, PhaseRolledBack, PhaseFailed:
		return 7
	}
	return -1
}

// Final reports whether p ends a job.
func (p Phase) Final() bool { return p.rank() == 7 }

// Installed describes what the committed slot runs.
type Installed struct {
	Slot            string `json:"slot"`
	Target          string `json:"target,omitempty"`
	Release         string `json:"release,omitempty"`
	SHA256          string `json:"sha256,omitempty"`
	Length          int64  `json:"length,omitempty"`
	ReleaseCounter  uint64 `json:"release_counter"`
	SecurityVersion uint64 `json:"security_version"`
}

// Journal is the engine's durable record, state.json. It is replaced
// atomically after every step, so that a restarted agent knows exactly
// where it was.
type Journal struct {
	// Seq counts jobs; (Seq, Phase) never goes backwards.
	Seq     uint64 `json:"seq"`
	Phase   Phase  `json:"phase"`
	Rollout string `json:"rollout,omitempty"`
	// Attempt is the rollout's attempt number for this device (a retry
	// after a failure is a new attempt of the same rollout and release).
	Attempt int `json:"attempt,omitempty"`
	// Release, Target, SHA256 and Length name the full image being
	// installed, as agreed by both repositories.
	Release         string `json:"release,omitempty"`
	Target          string `json:"target,omitempty"`
	SHA256          string `json:"sha256,omitempty"`
	Length          int64  `json:"length,omitempty"`
	ReleaseCounter  uint64 `json:"release_counter,omitempty"`
	SecurityVersion uint64 `json:"security_version,omitempty"`
	// Delta, DeltaSHA256 and DeltaLength name the delta being downloaded
	// instead of the full image, if any.
	Delta       string `json:"delta,omitempty"`
	DeltaSHA256 string `json:"delta_sha256,omitempty"`
	DeltaLength int64  `json:"delta_length,omitempty"`
	// Offset is how many bytes of the staged download are durable.
	Offset int64 `json:"offset,omitempty"`
	// Slot is the slot being written.
	Slot string `json:"slot,omitempty"`
	// HealthWindow is the job's: how long the trial boot must stay
	// healthy. Kept here because the job message is gone after the
	// reboot; the Health function reads it with [Engine.Journal].
	HealthWindow time.Duration `json:"health_window,omitempty"`
	Error        string        `json:"error,omitempty"`
	// Installed is what the committed slot runs.
	Installed Installed `json:"installed"`
}

// ParseJournal parses and checks a state.json.
func ParseJournal(b []byte) (*Journal, error) {
	if len(b) > maxJournalSize {
		return nil, errors.New("ota: journal too large")
	}
	var j Journal
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("ota: parse journal: %w", err)
	}
	if dec.More() {
		return nil, errors.New("ota: parse journal: trailing data")
	}
	if err := j.check(); err != nil {
		return nil, fmt.Errorf("ota: journal: %w", err)
	}
	return &j, nil
}

func (j *Journal) check() error {
	if j.Phase.rank() < 0 {
		return fmt.Errorf("unknown phase %q", j.Phase)
	}
	if j.Offset < 0 || j.Length < 0 || j.HealthWindow < 0 || j.DeltaLength < 0 || j.Installed.Length < 0 {
		return errors.New("negative length")
	}
	if err := checkSlot(j.Installed.Slot); err != nil {
		return fmt.Errorf("installed: %w", err)
	}
	for _, h := range []string{j.SHA256, j.DeltaSHA256, j.Installed.SHA256} {
		if h != "" && !isSHA256Hex(h) {
			return errors.New("malformed sha256")
		}
	}
	if j.Phase != PhaseIdle && j.Phase != PhaseFailed {
		if err := checkSlot(j.Slot); err != nil {
			return err
		}
		if !j.Phase.Final() && j.Slot == j.Installed.Slot {
			return errors.New("job targets the committed slot")
		}
		if !isSHA256Hex(j.SHA256) || j.Length <= 0 {
			return errors.New("job without a verified target")
		}
	}
	limit := j.Length
	if j.Delta != "" {
		limit = j.DeltaLength
	}
	if j.Offset > limit {
		return errors.New("offset past the end of the download")
	}
	return nil
}

func isSHA256Hex(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32
}

// before reports whether j comes strictly before k in (Seq, Phase) order,
// or equals it.
func (j *Journal) notAfter(k *Journal) bool {
	if j.Seq != k.Seq {
		return j.Seq < k.Seq
	}
	return j.Phase.rank() <= k.Phase.rank()
}

// readJournal returns the journal, or a fresh one if there is none.
func readJournal(fsys FS) (*Journal, error) {
	b, err := readFile(fsys, journalName, maxJournalSize)
	if errors.Is(err, fs.ErrNotExist) {
		return &Journal{Phase: PhaseIdle, Installed: Installed{Slot: SlotA}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ota: read journal: %w", err)
	}
	return ParseJournal(b)
}

// writeJournal replaces the journal, refusing to go backwards.
func writeJournal(fsys FS, old, j *Journal) error {
	if old != nil && !old.notAfter(j) {
		return fmt.Errorf("ota: journal would go back from %d/%s to %d/%s", old.Seq, old.Phase, j.Seq, j.Phase)
	}
	if err := j.check(); err != nil {
		return fmt.Errorf("ota: journal: %w", err)
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return writeFileAtomic(fsys, journalName, b)
}

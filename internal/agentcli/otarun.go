package agentcli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/wardiot/ward/agent/keystore"
	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/wire"
)

const (
	// maxOTAJobSize bounds a job message: two short names, a time and a
	// duration.
	maxOTAJobSize = 4 << 10
	// maxReleaseLen bounds the release name in a job.
	maxReleaseLen = 256
	// maxHealthWindow bounds a job's health window: longer than any
	// sensible soak, short enough that a device is not kept on trial
	// for weeks by a typo.
	maxHealthWindow = 7 * 24 * time.Hour
	// healthRecheck is how often --health-cmd runs again during a
	// job's health window.
	healthRecheck = 30 * time.Second
	// otaRetryMin and otaRetryMax bound the wait before an update that
	// failed on I/O or the network is resumed.
	otaRetryMin = 10 * time.Second
	otaRetryMax = 10 * time.Minute
	// maxRootFileSize bounds --image-root and --director-root (go-tuf's
	// own root limit).
	maxRootFileSize = 512 << 10
	// floorKeyFile holds the MAC key of the anti-rollback floor log, in
	// the state directory: made once, never logged.
	floorKeyFile = "ota-floor.key"
	floorKeySize = 32
	// jobQueue is how many jobs may wait while one runs; a newer job
	// supersedes older ones anyway.
	jobQueue = 4
	// flushTimeout bounds waiting for the status reports to leave
	// before rebooting.
	flushTimeout = 10 * time.Second
)

// parseOTAJob decodes a job message from the server. Unknown fields are
// allowed (a newer server may add some); sizes and the health window are
// bounded.
func parseOTAJob(b []byte) (wire.OTAJob, error) {
	var j wire.OTAJob
	if len(b) > maxOTAJobSize {
		return j, fmt.Errorf("OTA job of %d bytes, limit %d", len(b), maxOTAJobSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&j); err != nil {
		return wire.OTAJob{}, fmt.Errorf("OTA job: %w", err)
	}
	if dec.More() {
		return wire.OTAJob{}, errors.New("OTA job: data after the JSON object")
	}
	switch {
	case j.Release == "" || len(j.Release) > maxReleaseLen || !utf8.ValidString(j.Release):
		return wire.OTAJob{}, errors.New("OTA job: missing or malformed release")
	case len(j.Rollout) > maxReleaseLen || !utf8.ValidString(j.Rollout):
		return wire.OTAJob{}, errors.New("OTA job: malformed rollout")
	case j.HealthWindow < 0 || j.HealthWindow > maxHealthWindow:
		return wire.OTAJob{}, fmt.Errorf("OTA job: health window must be between 0 and %v", maxHealthWindow)
	}
	return j, nil
}

// pathSlots are A/B slots at fixed paths: partitions (/dev/mmcblk0p2) or
// files. A partition is opened without truncation (its size is fixed and
// the engine reads back only the image's length); a regular file is
// truncated, so it holds exactly the image.
type pathSlots struct{ a, b string }

var _ agentota.Slots = pathSlots{}

func (p pathSlots) OpenSlot(slot string, write bool) (agentota.File, error) {
	path := p.a
	switch slot {
	case agentota.SlotA:
	case agentota.SlotB:
		path = p.b
	default:
		return nil, fmt.Errorf("unknown slot %q", slot)
	}
	if !write {
		return os.Open(path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// keystoreTPM sends TPM commands through the TPM keystore's own
// connection, so the floor counter and the device key share one channel
// (swtpm serves one connection at a time) and never interleave commands.
type keystoreTPM struct{ ks keystore.Keystore }

func (k keystoreTPM) Send(cmd []byte) ([]byte, error) {
	var rsp []byte
	err := keystore.WithTPM(context.Background(), k.ks, func(a *keystore.TPMAccess) error {
		var err error
		rsp, err = a.TPM.Send(cmd)
		return err
	})
	return rsp, err
}

// floorKey returns the LogFloor MAC key, making it on first use.
func floorKey(stateDir string) ([]byte, error) {
	path := filepath.Join(stateDir, floorKeyFile)
	b, err := readFileLimited(path, floorKeySize, "floor key")
	if err == nil {
		if len(b) != floorKeySize {
			return nil, fmt.Errorf("%s holds %d bytes, want %d; the anti-rollback floor cannot be checked", path, len(b), floorKeySize)
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key := make([]byte, floorKeySize)
	rand.Read(key)
	if err := atomicfile.Write(path, key, 0o600); err != nil {
		return nil, fmt.Errorf("saving the floor key: %w", err)
	}
	return key, nil
}

// Names of the pinned TUF roots in the OTA directory.
const (
	rootsDir         = "roots"
	imageRootFile    = "image.root.json"
	directorRootFile = "director.root.json"
)

// loadRoots returns the trusted roots: from the factory files if given,
// else pinned in the OTA directory, else fetched once over mTLS (trust
// on first use, see agentota.FetchRoots) and pinned.
func loadRoots(ctx context.Context, cfg *otaConfig, httpc *http.Client, server, device string) (img, dir []byte, err error) {
	if cfg.imageRoot != "" {
		if img, err = readFileLimited(cfg.imageRoot, maxRootFileSize, "image root"); err != nil {
			return nil, nil, err
		}
		if dir, err = readFileLimited(cfg.directorRoot, maxRootFileSize, "director root"); err != nil {
			return nil, nil, err
		}
		for _, r := range [][]byte{img, dir} {
			if err := agentota.CheckRoot(r); err != nil {
				return nil, nil, err
			}
		}
		return img, dir, nil
	}
	pinned := filepath.Join(cfg.dir, rootsDir)
	img, ierr := readFileLimited(filepath.Join(pinned, imageRootFile), maxRootFileSize, "pinned image root")
	dir, derr := readFileLimited(filepath.Join(pinned, directorRootFile), maxRootFileSize, "pinned director root")
	if ierr == nil && derr == nil {
		return img, dir, nil
	}
	if ierr != nil && !errors.Is(ierr, fs.ErrNotExist) {
		return nil, nil, ierr
	}
	if derr != nil && !errors.Is(derr, fs.ErrNotExist) {
		return nil, nil, derr
	}
	img, dir, err = agentota.FetchRoots(ctx, httpc, server, device)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(pinned, 0o700); err != nil {
		return nil, nil, err
	}
	// The director root last: both present means both complete.
	if err := atomicfile.Write(filepath.Join(pinned, imageRootFile), img, 0o600); err != nil {
		return nil, nil, err
	}
	if err := atomicfile.Write(filepath.Join(pinned, directorRootFile), dir, 0o600); err != nil {
		return nil, nil, err
	}
	return img, dir, nil
}

// outbox queues what must reach the server over MQTT even if the session
// is down when it happens: OTA statuses in order, and the firmware
// section of the twin. Reports are small; the queue is bounded. Adding
// never waits for the network: the engine reports with its lock held.
type outbox struct {
	mu       sync.Mutex
	statuses []queuedStatus
	next     uint64          // id of the next status queued
	firmware json.RawMessage // the latest, not yet sent
	// askJob asks the server, after the statuses, for the job the device
	// should be running: set on every new session, since a job published
	// while the device was away is not queued for it.
	askJob bool
	// sent is signalled after a flush left the queue empty.
	sent chan struct{}
}

type queuedStatus struct {
	id uint64
	st wire.OTAStatus
}

// maxQueuedStatuses bounds the queue; the oldest go first (the latest
// status is what the rollout needs).
const maxQueuedStatuses = 64

func newOutbox() *outbox { return &outbox{sent: make(chan struct{}, 1)} }

func (o *outbox) addStatus(st wire.OTAStatus) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.statuses) >= maxQueuedStatuses {
		o.statuses = o.statuses[1:]
	}
	o.statuses = append(o.statuses, queuedStatus{o.next, st})
	o.next++
}

func (o *outbox) setFirmware(fw json.RawMessage) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.firmware = fw
}

// requestJob makes the next flush ask for the pending job (ota/get).
func (o *outbox) requestJob() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.askJob = true
}

func (o *outbox) empty() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.statuses) == 0 && o.firmware == nil && !o.askJob
}

// flush sends what is queued on s, stopping at the first failure (the
// rest waits for the next session). Only the session loop calls it.
func (o *outbox) flush(s mqttSession, log *slog.Logger) {
	o.mu.Lock()
	pending := slices.Clone(o.statuses)
	fw := o.firmware
	o.mu.Unlock()
	for _, q := range pending {
		b, err := json.Marshal(q.st)
		if err == nil {
			if err := s.Publish(wire.TopicOTAStatus, b, 1); err != nil {
				log.Warn("OTA status not sent; it will be sent on the next session", "err", err)
				return
			}
		}
		o.mu.Lock()
		for len(o.statuses) > 0 && o.statuses[0].id <= q.id {
			o.statuses = o.statuses[1:]
		}
		o.mu.Unlock()
	}
	if fw != nil {
		b, err := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName, Patch: fw})
		if err == nil {
			if err := s.Publish(wire.TopicTwinReported, b, 1); err != nil {
				log.Warn("firmware report not sent; it will be sent on the next session", "err", err)
				return
			}
		}
		o.mu.Lock()
		if bytes.Equal(o.firmware, fw) {
			o.firmware = nil
		}
		o.mu.Unlock()
	}
	// After the statuses, on the same session: the server has them when
	// it decides whether a job is still pending.
	o.mu.Lock()
	ask := o.askJob
	o.mu.Unlock()
	if ask {
		if err := s.Publish(wire.TopicOTAGet, []byte("{}"), 1); err != nil {
			log.Warn("could not ask for a pending OTA job; asking again on the next session", "err", err)
			return
		}
		o.mu.Lock()
		o.askJob = false
		o.mu.Unlock()
	}
	if o.empty() {
		select {
		case o.sent <- struct{}{}:
		default:
		}
	}
}

// firmwareReport is the firmware section of the default twin's reported
// state: the server selects rollout devices by hw_model and appraises
// attestation against release.
func firmwareReport(hw string, j agentota.Journal, booted string) json.RawMessage {
	fw := map[string]string{"hw_model": hw, "slot": booted}
	if j.Installed.Release != "" && j.Installed.Slot == booted {
		fw["release"] = j.Installed.Release
	}
	b, _ := json.Marshal(map[string]any{firmwareKey: fw})
	return b
}

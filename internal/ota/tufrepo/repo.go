// Package tufrepo keeps one TUF repository (root, targets, snapshot,
// timestamp) in a [Store]: offline-capable root and targets roles whose
// metadata is signed outside the server and imported only when the
// signatures meet the role's threshold, and online snapshot and timestamp
// roles re-signed by the server with short expiry.
//
// Consistent snapshots are off: clients fetch timestamp.json,
// snapshot.json, targets.json and N.root.json by those names, and target
// files by their path, as wire.OTAImagePath documents.
package tufrepo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

const (
	// MaxMetadataSize bounds metadata the repository imports or signs.
	// It equals go-tuf's default client limit for targets.json: anything
	// larger would be refused by every client anyway.
	MaxMetadataSize = 5_000_000

	// MaxRootVersion bounds root rotations; a root version is also a file
	// name clients fetch one by one.
	MaxRootVersion = 1 << 20
)

var (
	// ErrTooLarge is returned for metadata above [MaxMetadataSize].
	ErrTooLarge = errors.New("tufrepo: metadata too large")
	// ErrThreshold is returned when metadata is not signed by enough of
	// its role's keys.
	ErrThreshold = errors.New("tufrepo: signatures do not meet the role's threshold")
	// ErrVersion is returned for metadata whose version does not follow
	// the repository's current one.
	ErrVersion = errors.New("tufrepo: metadata version does not follow the current version")
	// ErrNotInitialized is returned before a root has been imported.
	ErrNotInitialized = errors.New("tufrepo: repository has no root yet")
)

// Expiry is how long each role's metadata stays valid after signing.
type Expiry struct {
	Root, Targets, Snapshot, Timestamp time.Duration
}

// DefaultExpiry: offline roles last long because signing them needs a
// ceremony; the timestamp lasts a day so a frozen mirror is noticed within
// a day (it is refreshed at half life by [Repo.Refresh]).
var DefaultExpiry = Expiry{
	Root:      365 * 24 * time.Hour,
	Targets:   90 * 24 * time.Hour,
	Snapshot:  7 * 24 * time.Hour,
	Timestamp: 24 * time.Hour,
}

// Config configures a [Repo].
type Config struct {
	Store  Store
	Prefix string // names are Prefix + "/" + file
	Now    func() time.Time
	Expiry Expiry
	// Snapshot and Timestamp are the online keys (see [OnlineKey]).
	Snapshot, Timestamp Signer
	// Targets, if it meets the targets threshold, lets the server sign
	// targets itself (the Director, or a development image repository).
	// Otherwise staged targets wait for [Repo.CommitTargets].
	Targets []Signer
}

// Repo is one TUF repository. It is safe for concurrent use.
type Repo struct {
	cfg Config
	mu  sync.Mutex
}

// New returns a repository; it is usable once a root is imported with
// [Repo.ImportRoot] (or already stored).
func New(cfg Config) *Repo {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Expiry == (Expiry{}) {
		cfg.Expiry = DefaultExpiry
	}
	return &Repo{cfg: cfg}
}

func (r *Repo) name(file string) string { return r.cfg.Prefix + "/" + file }

func (r *Repo) now() time.Time { return r.cfg.Now().UTC().Truncate(time.Second) }

// RootSpec describes a root to create with [NewRoot].
type RootSpec struct {
	Version                            int64
	Expires                            time.Time
	Root, Targets, Snapshot, Timestamp []*metadata.Key
	RootThreshold, TargetsThreshold    int
}

// NewRoot builds unsigned root metadata; sign it with [Sign] by the root
// keys (for a rotation: by a threshold of the old AND of the new keys).
func NewRoot(spec RootSpec) ([]byte, error) {
	if spec.RootThreshold < 1 || spec.TargetsThreshold < 1 {
		return nil, errors.New("tufrepo: thresholds must be at least 1")
	}
	if len(spec.Root) < spec.RootThreshold || len(spec.Targets) < spec.TargetsThreshold {
		return nil, errors.New("tufrepo: fewer keys than the threshold")
	}
	if len(spec.Snapshot) == 0 || len(spec.Timestamp) == 0 {
		return nil, errors.New("tufrepo: snapshot and timestamp keys are required")
	}
	if spec.Version < 1 {
		spec.Version = 1
	}
	root := metadata.Root(spec.Expires.UTC())
	root.Signed.Version = spec.Version
	root.Signed.ConsistentSnapshot = false
	add := func(role string, keys []*metadata.Key) error {
		for _, k := range keys {
			if err := root.Signed.AddKey(k, role); err != nil {
				return err
			}
		}
		return nil
	}
	for role, keys := range map[string][]*metadata.Key{
		metadata.ROOT: spec.Root, metadata.TARGETS: spec.Targets,
		metadata.SNAPSHOT: spec.Snapshot, metadata.TIMESTAMP: spec.Timestamp,
	} {
		if err := add(role, keys); err != nil {
			return nil, err
		}
	}
	root.Signed.Roles[metadata.ROOT].Threshold = spec.RootThreshold
	root.Signed.Roles[metadata.TARGETS].Threshold = spec.TargetsThreshold
	return root.ToBytes(true)
}

// Sign adds signatures by signers to any TUF metadata document (root,
// targets, ...) and returns the new document. This is the offline half of
// `ward release sign`: it needs no repository, only the bytes exported by
// [Repo.StageTargets] and a key.
func Sign(data []byte, signers ...Signer) ([]byte, error) {
	if len(data) > MaxMetadataSize {
		return nil, ErrTooLarge
	}
	typ, err := metadataType(data)
	if err != nil {
		return nil, err
	}
	switch typ {
	case metadata.ROOT:
		return signAs[metadata.RootType](data, signers)
	case metadata.TARGETS:
		return signAs[metadata.TargetsType](data, signers)
	case metadata.SNAPSHOT:
		return signAs[metadata.SnapshotType](data, signers)
	case metadata.TIMESTAMP:
		return signAs[metadata.TimestampType](data, signers)
	}
	return nil, fmt.Errorf("tufrepo: unknown metadata type %q", typ)
}

func signAs[T metadata.Roles](data []byte, signers []Signer) ([]byte, error) {
	m, err := (&metadata.Metadata[T]{}).FromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("tufrepo: parse metadata: %w", err)
	}
	for _, s := range signers {
		id, err := KeyID(s)
		if err != nil {
			return nil, err
		}
		// Re-signing with the same key replaces its signature rather than
		// adding a duplicate go-tuf would reject.
		sigs := m.Signatures[:0]
		for _, sig := range m.Signatures {
			if sig.KeyID != id {
				sigs = append(sigs, sig)
			}
		}
		m.Signatures = sigs
		if _, err := m.Sign(s); err != nil {
			return nil, fmt.Errorf("tufrepo: sign: %w", err)
		}
	}
	return m.ToBytes(true)
}

func metadataType(data []byte) (string, error) {
	var env struct {
		Signed struct {
			Type string `json:"_type"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		return "", fmt.Errorf("tufrepo: metadata is not JSON: %w", err)
	}
	return env.Signed.Type, nil
}

// ImportRoot installs a new root. The first root must be signed by its
// own root threshold; a later one must have version current+1 and be
// signed by a threshold of the current root's keys and of its own. Online
// snapshot and timestamp metadata are re-signed so a rotated online key
// takes effect at once.
func (r *Repo) ImportRoot(ctx context.Context, data []byte) error {
	if len(data) > MaxMetadataSize {
		return ErrTooLarge
	}
	nr, err := metadata.Root().FromBytes(data)
	if err != nil {
		return fmt.Errorf("tufrepo: parse root: %w", err)
	}
	if nr.Signed.ConsistentSnapshot {
		return errors.New("tufrepo: consistent snapshots are not served; set consistent_snapshot false")
	}
	if err := r.checkOnlineRoles(&nr.Signed); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, err := r.root(ctx)
	switch {
	case errors.Is(err, ErrNotInitialized):
		if nr.Signed.Version != 1 {
			return fmt.Errorf("%w: the first root must be version 1", ErrVersion)
		}
	case err != nil:
		return err
	default:
		if nr.Signed.Version != cur.Signed.Version+1 {
			return fmt.Errorf("%w: root %d after %d", ErrVersion, nr.Signed.Version, cur.Signed.Version)
		}
		if err := cur.VerifyDelegate(metadata.ROOT, nr); err != nil {
			return fmt.Errorf("%w: by the current root keys: %v", ErrThreshold, err)
		}
	}
	if nr.Signed.Version > MaxRootVersion {
		return fmt.Errorf("%w: root version too large", ErrVersion)
	}
	if err := nr.VerifyDelegate(metadata.ROOT, nr); err != nil {
		return fmt.Errorf("%w: by the new root keys: %v", ErrThreshold, err)
	}
	if err := r.cfg.Store.Put(ctx, r.name(strconv.FormatInt(nr.Signed.Version, 10)+".root.json"), data); err != nil {
		return err
	}
	if err := r.cfg.Store.Put(ctx, r.name("root.json"), data); err != nil {
		return err
	}
	if _, err := r.targets(ctx); errors.Is(err, ErrNotFound) {
		// A new repository starts with empty targets so clients can
		// refresh before the first release; it must be signed by the
		// targets role, which the server may not hold: then publish first.
		t := metadata.Targets(r.now().Add(r.cfg.Expiry.Targets))
		if r.canSignTargets(nr) {
			if err := r.commitTargetsLocked(ctx, nr, t); err != nil {
				return err
			}
		}
		return nil
	}
	return r.resignLocked(ctx, nr, true)
}

func (r *Repo) root(ctx context.Context) (*metadata.Metadata[metadata.RootType], error) {
	b, err := r.cfg.Store.Get(ctx, r.name("root.json"))
	if errors.Is(err, ErrNotFound) {
		return nil, ErrNotInitialized
	}
	if err != nil {
		return nil, err
	}
	return metadata.Root().FromBytes(b)
}

func (r *Repo) targets(ctx context.Context) (*metadata.Metadata[metadata.TargetsType], error) {
	b, err := r.cfg.Store.Get(ctx, r.name("targets.json"))
	if err != nil {
		return nil, err
	}
	return metadata.Targets().FromBytes(b)
}

// Root returns the current root and its version.
func (r *Repo) Root(ctx context.Context) ([]byte, error) {
	return r.cfg.Store.Get(ctx, r.name("root.json"))
}

// Targets returns the committed (served) targets metadata.
func (r *Repo) Targets(ctx context.Context) (*metadata.Metadata[metadata.TargetsType], error) {
	return r.targets(ctx)
}

// File returns a metadata file as clients fetch it: "N.root.json",
// "root.json", "timestamp.json", "snapshot.json" or "targets.json".
// Anything else is [ErrNotFound].
func (r *Repo) File(ctx context.Context, file string) ([]byte, error) {
	switch file {
	case "root.json", "timestamp.json", "snapshot.json", "targets.json":
	default:
		v, ok := strings.CutSuffix(file, ".root.json")
		if !ok {
			return nil, ErrNotFound
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > MaxRootVersion || strconv.FormatInt(n, 10) != v {
			return nil, ErrNotFound
		}
	}
	return r.cfg.Store.Get(ctx, r.name(file))
}

func (r *Repo) canSignTargets(root *metadata.Metadata[metadata.RootType]) bool {
	role := root.Signed.Roles[metadata.TARGETS]
	n := 0
	for _, s := range r.cfg.Targets {
		id, err := KeyID(s)
		if err != nil {
			continue
		}
		for _, k := range role.KeyIDs {
			if k == id {
				n++
			}
		}
	}
	return n >= role.Threshold
}

// StageTargets builds the next targets version from the newest one (the
// pending one if an earlier stage is still unsigned), applies edit, and
// either signs and commits it (the server holds the targets keys) or
// stores it as pending and returns the unsigned document to be signed
// offline with [Sign] and imported with [Repo.CommitTargets].
func (r *Repo) StageTargets(ctx context.Context, edit func(*metadata.TargetsType) error) (pending []byte, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	root, err := r.root(ctx)
	if err != nil {
		return nil, err
	}
	base, err := r.latestTargetsLocked(ctx)
	if err != nil {
		return nil, err
	}
	next := metadata.Targets(r.now().Add(r.cfg.Expiry.Targets))
	next.Signed.Version = base.Version + 1
	next.Signed.Targets = base.Targets
	if next.Signed.Targets == nil {
		next.Signed.Targets = map[string]*metadata.TargetFiles{}
	}
	if err := edit(&next.Signed); err != nil {
		return nil, err
	}
	if r.canSignTargets(root) {
		return nil, r.commitTargetsLocked(ctx, root, next)
	}
	b, err := next.ToBytes(true)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMetadataSize {
		return nil, ErrTooLarge
	}
	return b, r.cfg.Store.Put(ctx, r.name("pending/targets.json"), b)
}

// LatestTargets returns the newest targets content, pending or committed:
// what the next stage builds on.
func (r *Repo) LatestTargets(ctx context.Context) (*metadata.TargetsType, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latestTargetsLocked(ctx)
}

func (r *Repo) latestTargetsLocked(ctx context.Context) (*metadata.TargetsType, error) {
	cur, err := r.targets(ctx)
	if errors.Is(err, ErrNotFound) {
		cur, err = metadata.Targets(r.now()), nil
		cur.Signed.Version = 0
	}
	if err != nil {
		return nil, err
	}
	if b, err := r.cfg.Store.Get(ctx, r.name("pending/targets.json")); err == nil {
		p, err := metadata.Targets().FromBytes(b)
		if err != nil {
			return nil, err
		}
		if p.Signed.Version > cur.Signed.Version {
			return &p.Signed, nil
		}
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	return &cur.Signed, nil
}

// Pending returns the unsigned staged targets awaiting offline signatures,
// or [ErrNotFound].
func (r *Repo) Pending(ctx context.Context) ([]byte, error) {
	b, err := r.cfg.Store.Get(ctx, r.name("pending/targets.json"))
	if err != nil {
		return nil, err
	}
	p, err := metadata.Targets().FromBytes(b)
	if err != nil {
		return nil, err
	}
	if cur, err := r.targets(ctx); err == nil && cur.Signed.Version >= p.Signed.Version {
		return nil, ErrNotFound
	}
	return b, nil
}

// CommitTargets imports targets metadata signed offline. It is refused
// unless the signatures meet the targets threshold of the current root,
// the version is above the served one and it has not expired; check, if
// non-nil, vets the content (e.g. every target's file is stored).
func (r *Repo) CommitTargets(ctx context.Context, signed []byte, check func(*metadata.TargetsType) error) error {
	if len(signed) > MaxMetadataSize {
		return ErrTooLarge
	}
	t, err := metadata.Targets().FromBytes(signed)
	if err != nil {
		return fmt.Errorf("tufrepo: parse targets: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	root, err := r.root(ctx)
	if err != nil {
		return err
	}
	if err := root.VerifyDelegate(metadata.TARGETS, t); err != nil {
		return fmt.Errorf("%w: %v", ErrThreshold, err)
	}
	if cur, err := r.targets(ctx); err == nil && t.Signed.Version <= cur.Signed.Version {
		return fmt.Errorf("%w: targets %d is not above %d", ErrVersion, t.Signed.Version, cur.Signed.Version)
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if t.Signed.IsExpired(r.now()) {
		return errors.New("tufrepo: targets metadata has already expired")
	}
	if check != nil {
		if err := check(&t.Signed); err != nil {
			return err
		}
	}
	if err := r.cfg.Store.Put(ctx, r.name("targets.json"), signed); err != nil {
		return err
	}
	return r.resignLocked(ctx, root, true)
}

func (r *Repo) commitTargetsLocked(ctx context.Context, root *metadata.Metadata[metadata.RootType], t *metadata.Metadata[metadata.TargetsType]) error {
	t.Signatures = nil
	for _, s := range r.cfg.Targets {
		if _, err := t.Sign(s); err != nil {
			return err
		}
	}
	if err := root.VerifyDelegate(metadata.TARGETS, t); err != nil {
		return fmt.Errorf("%w: %v", ErrThreshold, err)
	}
	b, err := t.ToBytes(true)
	if err != nil {
		return err
	}
	if len(b) > MaxMetadataSize {
		return ErrTooLarge
	}
	if err := r.cfg.Store.Put(ctx, r.name("targets.json"), b); err != nil {
		return err
	}
	return r.resignLocked(ctx, root, true)
}

// Refresh re-signs the timestamp (and snapshot) when less than half of its
// lifetime is left. Call it periodically (every hour or so): a client
// refuses an expired timestamp, which is how it detects a frozen mirror.
func (r *Repo) Refresh(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	root, err := r.root(ctx)
	if err != nil {
		return err
	}
	if _, err := r.targets(ctx); errors.Is(err, ErrNotFound) {
		return nil // nothing published yet
	}
	return r.resignLocked(ctx, root, false)
}

// resignLocked writes a new snapshot if targets changed, the snapshot
// nears expiry or force is set, then a new timestamp likewise.
func (r *Repo) resignLocked(ctx context.Context, root *metadata.Metadata[metadata.RootType], force bool) error {
	t, err := r.targets(ctx)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	now := r.now()
	snap, snapVersion := (*metadata.Metadata[metadata.SnapshotType])(nil), int64(0)
	if b, err := r.cfg.Store.Get(ctx, r.name("snapshot.json")); err == nil {
		if snap, err = metadata.Snapshot().FromBytes(b); err != nil {
			return err
		}
		snapVersion = snap.Signed.Version
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	newSnap := force || snap == nil ||
		snap.Signed.Meta["targets.json"].Version != t.Signed.Version ||
		halfLife(now, snap.Signed.Expires, r.cfg.Expiry.Snapshot) ||
		root.VerifyDelegate(metadata.SNAPSHOT, snap) != nil
	if newSnap {
		s := metadata.Snapshot(now.Add(r.cfg.Expiry.Snapshot))
		s.Signed.Version = snapVersion + 1
		s.Signed.Meta["targets.json"] = metadata.MetaFile(t.Signed.Version)
		if _, err := s.Sign(r.cfg.Snapshot); err != nil {
			return err
		}
		b, err := s.ToBytes(true)
		if err != nil {
			return err
		}
		if err := r.cfg.Store.Put(ctx, r.name("snapshot.json"), b); err != nil {
			return err
		}
		snapVersion = s.Signed.Version
	}
	var ts *metadata.Metadata[metadata.TimestampType]
	tsVersion := int64(0)
	if b, err := r.cfg.Store.Get(ctx, r.name("timestamp.json")); err == nil {
		if ts, err = metadata.Timestamp().FromBytes(b); err != nil {
			return err
		}
		tsVersion = ts.Signed.Version
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	if !newSnap && ts != nil && !halfLife(now, ts.Signed.Expires, r.cfg.Expiry.Timestamp) &&
		root.VerifyDelegate(metadata.TIMESTAMP, ts) == nil {
		return nil
	}
	n := metadata.Timestamp(now.Add(r.cfg.Expiry.Timestamp))
	n.Signed.Version = tsVersion + 1
	n.Signed.Meta["snapshot.json"] = metadata.MetaFile(snapVersion)
	if _, err := n.Sign(r.cfg.Timestamp); err != nil {
		return err
	}
	b, err := n.ToBytes(true)
	if err != nil {
		return err
	}
	return r.cfg.Store.Put(ctx, r.name("timestamp.json"), b)
}

// halfLife reports whether less than half of lifetime is left before
// expires.
func halfLife(now, expires time.Time, lifetime time.Duration) bool {
	return expires.Sub(now) < lifetime/2
}

package tufrepo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ErrNoPendingRoot is returned by [Repo.CommitRoot] when no root was
// staged, or the staged one is no longer the next version.
var ErrNoPendingRoot = errors.New("tufrepo: no root awaits signatures")

// ErrRootMismatch is returned by [Repo.CommitRoot] for a root whose
// signed content differs from the staged one.
var ErrRootMismatch = errors.New("tufrepo: the signed root is not the staged root")

// SpecOf returns the spec of a root: its keys per role and thresholds.
func SpecOf(root *metadata.RootType) (RootSpec, error) {
	spec := RootSpec{Version: root.Version, Expires: root.Expires}
	for role, dst := range map[string]*[]*metadata.Key{
		metadata.ROOT: &spec.Root, metadata.TARGETS: &spec.Targets,
		metadata.SNAPSHOT: &spec.Snapshot, metadata.TIMESTAMP: &spec.Timestamp,
	} {
		r := root.Roles[role]
		if r == nil {
			return RootSpec{}, fmt.Errorf("tufrepo: root has no %s role", role)
		}
		for _, id := range r.KeyIDs {
			k := root.Keys[id]
			if k == nil {
				return RootSpec{}, fmt.Errorf("tufrepo: root lists unknown key %s for %s", id, role)
			}
			*dst = append(*dst, k)
		}
		switch role {
		case metadata.ROOT:
			spec.RootThreshold = r.Threshold
		case metadata.TARGETS:
			spec.TargetsThreshold = r.Threshold
		}
	}
	return spec, nil
}

// NextRoot builds the unsigned root that follows the current one: same
// keys and thresholds, version + 1, a fresh expiry, then edit applied.
func (r *Repo) NextRoot(ctx context.Context, edit func(*RootSpec) error) ([]byte, error) {
	r.mu.Lock()
	cur, err := r.root(ctx)
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	spec, err := SpecOf(&cur.Signed)
	if err != nil {
		return nil, err
	}
	spec.Version = cur.Signed.Version + 1
	spec.Expires = r.now().Add(r.cfg.Expiry.Root)
	if edit != nil {
		if err := edit(&spec); err != nil {
			return nil, err
		}
	}
	return NewRoot(spec)
}

// checkOnlineRoles refuses a root whose snapshot or timestamp role the
// server could not sign with its online keys: importing it would stop
// the repository from ever being refreshed.
func (r *Repo) checkOnlineRoles(nr *metadata.RootType) error {
	for role, s := range map[string]Signer{metadata.SNAPSHOT: r.cfg.Snapshot, metadata.TIMESTAMP: r.cfg.Timestamp} {
		if s == nil {
			continue
		}
		id, err := KeyID(s)
		if err != nil {
			return err
		}
		rr := nr.Roles[role]
		if rr == nil || rr.Threshold != 1 || !slices.Contains(rr.KeyIDs, id) {
			return fmt.Errorf("tufrepo: the %s role must be the server's online key %s with threshold 1", role, id)
		}
	}
	return nil
}

// StageRoot stores an unsigned or partly signed next root for offline
// signing: [Repo.PendingRoot] hands it out and [Repo.CommitRoot] imports
// it once signed by a threshold of the current and of its own root keys.
// A newer stage replaces an older one.
func (r *Repo) StageRoot(ctx context.Context, data []byte) error {
	if len(data) > MaxMetadataSize {
		return ErrTooLarge
	}
	nr, err := metadata.Root().FromBytes(data)
	if err != nil {
		return fmt.Errorf("tufrepo: parse root: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, err := r.root(ctx)
	if err != nil {
		return err
	}
	if nr.Signed.Version != cur.Signed.Version+1 {
		return fmt.Errorf("%w: root %d after %d", ErrVersion, nr.Signed.Version, cur.Signed.Version)
	}
	if err := r.checkOnlineRoles(&nr.Signed); err != nil {
		return err
	}
	return r.cfg.Store.Put(ctx, r.name("pending/root.json"), data)
}

// PendingRoot returns the staged root awaiting signatures, or
// [ErrNotFound] if there is none or a root of its version was imported.
func (r *Repo) PendingRoot(ctx context.Context) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, _, err := r.pendingRootLocked(ctx)
	return b, err
}

func (r *Repo) pendingRootLocked(ctx context.Context) ([]byte, *metadata.Metadata[metadata.RootType], error) {
	b, err := r.cfg.Store.Get(ctx, r.name("pending/root.json"))
	if err != nil {
		return nil, nil, err
	}
	p, err := metadata.Root().FromBytes(b)
	if err != nil {
		return nil, nil, err
	}
	cur, err := r.root(ctx)
	if err != nil {
		return nil, nil, err
	}
	if p.Signed.Version != cur.Signed.Version+1 {
		return nil, nil, ErrNotFound
	}
	return b, p, nil
}

// CommitRoot imports the staged root signed offline. Its signed content
// must be exactly the staged one (what the officers were shown is what
// devices will trust), and, as for [Repo.ImportRoot], signed by a
// threshold of the current root keys and of its own.
func (r *Repo) CommitRoot(ctx context.Context, signed []byte) error {
	if len(signed) > MaxMetadataSize {
		return ErrTooLarge
	}
	nr, err := metadata.Root().FromBytes(signed)
	if err != nil {
		return fmt.Errorf("tufrepo: parse root: %w", err)
	}
	r.mu.Lock()
	_, p, err := r.pendingRootLocked(ctx)
	r.mu.Unlock()
	if errors.Is(err, ErrNotFound) {
		return ErrNoPendingRoot
	}
	if err != nil {
		return err
	}
	a, err := json.Marshal(&nr.Signed)
	if err != nil {
		return err
	}
	b, err := json.Marshal(&p.Signed)
	if err != nil {
		return err
	}
	if !bytes.Equal(a, b) {
		return ErrRootMismatch
	}
	if nr.Signed.IsExpired(r.now()) {
		return errors.New("tufrepo: the root has already expired")
	}
	return r.ImportRoot(ctx, signed)
}

// SetTargets replaces the targets keys the server signs with, after a
// root rotation took its own targets key out of the targets role.
func (r *Repo) SetTargets(signers []Signer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cfg.Targets = signers
}

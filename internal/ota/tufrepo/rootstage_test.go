package tufrepo

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func genKeys(t *testing.T, n int) []Signer {
	t.Helper()
	var out []Signer
	for range n {
		s, _, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func pubKeys(t *testing.T, ss ...Signer) []*metadata.Key {
	t.Helper()
	var out []*metadata.Key
	for _, s := range ss {
		k, err := PublicKey(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	return out
}

// TestStageAndCommitRoot: a root moving to two offline keys (threshold 2)
// is staged, and committed only with a threshold of the current root keys
// AND of its own, with exactly the staged content; a root the server
// could no longer refresh (another snapshot key) is refused outright.
func TestStageAndCommitRoot(t *testing.T) {
	ctx := context.Background()
	k := genKeys(t, 6)
	root0, targets, snap, ts, a, b := k[0], k[1], k[2], k[3], k[4], k[5]
	now := time.Now()
	r := New(Config{Store: NewMemStore(), Prefix: "image", Now: func() time.Time { return now },
		Snapshot: snap, Timestamp: ts, Targets: []Signer{targets}})
	raw, err := NewRoot(RootSpec{Version: 1, Expires: now.Add(time.Hour), Root: pubKeys(t, root0), Targets: pubKeys(t, targets),
		Snapshot: pubKeys(t, snap), Timestamp: pubKeys(t, ts), RootThreshold: 1, TargetsThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if raw, err = Sign(raw, root0); err != nil {
		t.Fatal(err)
	}
	if err := r.ImportRoot(ctx, raw); err != nil {
		t.Fatal(err)
	}
	if err := r.CommitRoot(ctx, raw); !errors.Is(err, ErrNoPendingRoot) {
		t.Fatalf("commit with nothing staged: %v", err)
	}

	next, err := r.NextRoot(ctx, func(s *RootSpec) error {
		s.Root, s.RootThreshold = pubKeys(t, a, b), 2
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.StageRoot(ctx, next); err != nil {
		t.Fatal(err)
	}
	if p, err := r.PendingRoot(ctx); err != nil || string(p) != string(next) {
		t.Fatalf("pending root: %v", err)
	}

	// The server must keep its snapshot and timestamp roles.
	other, err := r.NextRoot(ctx, func(s *RootSpec) error {
		s.Snapshot = pubKeys(t, a)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.StageRoot(ctx, other); err == nil {
		t.Fatal("staged a root with a snapshot key the server does not hold")
	}
	if signed, _ := Sign(other, root0); r.ImportRoot(ctx, signed) == nil {
		t.Fatal("imported a root with a snapshot key the server does not hold")
	}
	var m map[string]any
	json.Unmarshal(next, &m)
	m["signed"].(map[string]any)["version"] = 3
	skip, _ := json.Marshal(m)
	if err := r.StageRoot(ctx, skip); !errors.Is(err, ErrVersion) {
		t.Fatalf("staging root 3 after 1: %v", err)
	}

	sign := func(ss ...Signer) []byte {
		t.Helper()
		out, err := Sign(next, ss...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for name, doc := range map[string][]byte{
		"the old key only":              sign(root0),
		"the old key and one new":       sign(root0, a),
		"the new keys only":             sign(a, b),
		"the old key twice and one new": sign(root0, root0, a),
	} {
		if err := r.CommitRoot(ctx, doc); !errors.Is(err, ErrThreshold) {
			t.Fatalf("signed by %s: %v, want ErrThreshold", name, err)
		}
	}
	m["signed"].(map[string]any)["version"] = 2
	m["signed"].(map[string]any)["expires"] = now.Add(100 * 24 * time.Hour).UTC().Format(time.RFC3339)
	changed, _ := json.Marshal(m)
	if changed, err = Sign(changed, root0, a, b); err != nil {
		t.Fatal(err)
	}
	if err := r.CommitRoot(ctx, changed); !errors.Is(err, ErrRootMismatch) {
		t.Fatalf("a root other than the staged one: %v", err)
	}
	if err := r.CommitRoot(ctx, sign(root0, a, b)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PendingRoot(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pending after commit: %v", err)
	}
	if err := r.CommitRoot(ctx, sign(root0, a, b)); !errors.Is(err, ErrNoPendingRoot) {
		t.Fatalf("commit twice: %v", err)
	}
	// The old root key alone can no longer even stage-and-import root 3.
	r3, _ := r.NextRoot(ctx, nil)
	if signed, _ := Sign(r3, root0); !errors.Is(r.ImportRoot(ctx, signed), ErrThreshold) {
		t.Fatal("root 3 imported with the retired key")
	}
}

// FuzzCommitRoot: whatever is offered as a signed root, CommitRoot never
// panics and never imports anything but the staged root signed by both
// thresholds (which the fuzzer cannot forge).
func FuzzCommitRoot(f *testing.F) {
	ctx := context.Background()
	root0, _, _ := GenerateKey()
	snap, _, _ := GenerateKey()
	ts, _, _ := GenerateKey()
	pk := func(s Signer) []*metadata.Key { k, _ := PublicKey(s); return []*metadata.Key{k} }
	now := time.Now()
	raw, _ := NewRoot(RootSpec{Version: 1, Expires: now.Add(time.Hour), Root: pk(root0), Targets: pk(root0),
		Snapshot: pk(snap), Timestamp: pk(ts), RootThreshold: 1, TargetsThreshold: 1})
	raw, _ = Sign(raw, root0)
	f.Add(raw)
	f.Add([]byte(`{"signed":{"_type":"root","version":2},"signatures":[]}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := New(Config{Store: NewMemStore(), Prefix: "image", Now: func() time.Time { return now }, Snapshot: snap, Timestamp: ts})
		if err := r.ImportRoot(ctx, raw); err != nil {
			t.Fatal(err)
		}
		next, _ := r.NextRoot(ctx, nil)
		if err := r.StageRoot(ctx, next); err != nil {
			t.Fatal(err)
		}
		if r.CommitRoot(ctx, b) == nil {
			// Only possible if b is the staged root signed by root0.
			nr, err := metadata.Root().FromBytes(b)
			if err != nil || nr.Signed.Version != 2 {
				t.Fatalf("committed %q", b)
			}
		}
	})
}

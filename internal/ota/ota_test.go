package ota

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/wardiot/ward/internal/ota/delta"
	"github.com/wardiot/ward/internal/ota/tufrepo"
	"github.com/wardiot/ward/wire"
)

// agentCheck is the agreement check the agent performs (notes/ota.md):
// every Director target must exist in the image repository with the same
// length and sha256, for the device's hardware.
func agentCheck(t *testing.T, dir, img *updater.Updater, hw string) map[string]*metadata.TargetFiles {
	t.Helper()
	out := map[string]*metadata.TargetFiles{}
	for name, dt := range dir.GetTopLevelTargets() {
		it, err := img.GetTargetInfo(name)
		if err != nil {
			t.Fatalf("director names %s, image repository does not: %v", name, err)
		}
		if it.Length != dt.Length || !bytes.Equal(it.Hashes["sha256"], dt.Hashes["sha256"]) {
			t.Fatalf("director and image disagree on %s", name)
		}
		dc, err := ParseCustom(*dt.Custom)
		if err != nil {
			t.Fatal(err)
		}
		if dc.HardwareID != hw || dc.MinSecurityVersion == nil {
			t.Fatalf("director custom %+v", dc)
		}
		out[name] = it
	}
	return out
}

func TestPublishAssignVerifiesWithGoTUFUpdater(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	v1 := testImage(1, 1<<20)
	v2 := mutate(v1, 7)
	p1, err := f.publish("fw", "1.0.0", "board-a", 3, v1, f.targetsKeys...)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := f.publish("fw", "1.1.0", "board-a", 4, v2, f.targetsKeys...)
	if err != nil {
		t.Fatal(err)
	}
	if p1.ReleaseCounter != 1 || p2.ReleaseCounter != 2 {
		t.Fatalf("release counters %d, %d", p1.ReleaseCounter, p2.ReleaseCounter)
	}
	if len(p2.Deltas) != 1 {
		t.Fatalf("deltas %v", p2.Deltas)
	}
	if err := f.director.Assign(ctx, "dev-1", p2.Image); err != nil {
		t.Fatal(err)
	}
	dirRoot, err := f.director.Root(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	dc, err := f.client("dev-1", wire.OTADirectorPath+"dev-1", dirRoot, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ic, err := f.client("dev-1", wire.OTAImagePath, f.imageRoot1(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := dc.Refresh(); err != nil {
		t.Fatal(err)
	}
	if err := ic.Refresh(); err != nil {
		t.Fatal(err)
	}
	got := agentCheck(t, dc, ic, "board-a")
	tf, ok := got[p2.Image]
	if !ok || len(got) != 1 {
		t.Fatalf("director names %v, want only %s", got, p2.Image)
	}
	_, data, err := ic.DownloadTarget(tf, filepath.Join(t.TempDir(), "img"), "")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, v2) {
		t.Fatal("downloaded image differs")
	}

	// The delta, as the agent would use it: fetched and verified through
	// TUF, applied to the running image, checked against the full
	// image's signed hash.
	dt, err := ic.GetTargetInfo(p2.Deltas[0])
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCustom(*dt.Custom)
	if err != nil || c.Kind != KindDelta || c.DeltaFrom != p1.Image || c.DeltaTarget != p2.Image {
		t.Fatalf("delta custom %+v %v", c, err)
	}
	_, patch, err := ic.DownloadTarget(dt, filepath.Join(t.TempDir(), "patch"), "")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := delta.Apply(h, v1, bytes.NewReader(patch), tf.Length); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Sum(nil), tf.Hashes["sha256"]) {
		t.Fatal("reconstructed image hash differs from the signed target hash")
	}

	// The manifest verifies with the release key and names the image.
	mt, _ := ic.GetTargetInfo(p2.Manifest)
	_, mb, err := ic.DownloadTarget(mt, filepath.Join(t.TempDir(), "m"), "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := VerifyManifest(mb, pub(t, f.manifestKey)[0])
	if err != nil {
		t.Fatal(err)
	}
	if m.Image.SHA256 != hex.EncodeToString(tf.Hashes["sha256"]) || m.SecurityVersion != 4 || m.RefValues == nil {
		t.Fatalf("manifest %+v", m)
	}
	if _, err := VerifyManifest(mb, pub(t, f.targetsKeys[0])[0]); err == nil {
		t.Fatal("manifest verified with the wrong key")
	}
}

func TestPublishRefusedWithoutOfflineThreshold(t *testing.T) {
	for name, signers := range map[string]func(f *fixture) []tufrepo.Signer{
		"fail/one-of-two":   func(f *fixture) []tufrepo.Signer { return f.targetsKeys[:1] },
		"fail/foreign-keys": func(f *fixture) []tufrepo.Signer { return keys(t, 2) },
		"fail/root-keys":    func(f *fixture) []tufrepo.Signer { return f.rootKeys },
		"fail/unsigned":     func(f *fixture) []tufrepo.Signer { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			_, err := f.publish("fw", "1.0.0", "board-a", 1, testImage(2, 4096), signers(f)...)
			if !errors.Is(err, tufrepo.ErrThreshold) {
				t.Fatalf("err = %v, want ErrThreshold", err)
			}
			if _, err := f.image.Repo().Targets(context.Background()); !errors.Is(err, tufrepo.ErrNotFound) {
				t.Fatalf("targets served after a refused commit: %v", err)
			}
		})
	}
}

func TestRootRotationFollowedByClient(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.publish("fw", "1.0.0", "board-a", 1, testImage(3, 4096), f.targetsKeys...); err != nil {
		t.Fatal(err)
	}
	cur, _ := metadata.Root().FromBytes(f.imageRoot1())
	newKeys := keys(t, 2)
	spec := tufrepo.RootSpec{
		Version: 2, Expires: f.clock.Now().Add(365 * 24 * time.Hour),
		Root: pub(t, newKeys...), Targets: pub(t, f.targetsKeys...),
		RootThreshold: 2, TargetsThreshold: 2,
	}
	for _, id := range cur.Signed.Roles[metadata.SNAPSHOT].KeyIDs {
		spec.Snapshot = append(spec.Snapshot, cur.Signed.Keys[id])
	}
	for _, id := range cur.Signed.Roles[metadata.TIMESTAMP].KeyIDs {
		spec.Timestamp = append(spec.Timestamp, cur.Signed.Keys[id])
	}
	unsigned, err := tufrepo.NewRoot(spec)
	if err != nil {
		t.Fatal(err)
	}
	onlyNew, _ := tufrepo.Sign(unsigned, newKeys...)
	if err := f.image.Repo().ImportRoot(ctx, onlyNew); !errors.Is(err, tufrepo.ErrThreshold) {
		t.Fatalf("root signed by the new keys only: %v", err)
	}
	onlyOld, _ := tufrepo.Sign(unsigned, f.rootKeys...)
	if err := f.image.Repo().ImportRoot(ctx, onlyOld); !errors.Is(err, tufrepo.ErrThreshold) {
		t.Fatalf("root signed by the old keys only: %v", err)
	}
	both, _ := tufrepo.Sign(onlyOld, newKeys...)
	if err := f.image.Repo().ImportRoot(ctx, both); err != nil {
		t.Fatal(err)
	}
	c, err := f.client("dev-1", wire.OTAImagePath, f.imageRoot1(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(); err != nil {
		t.Fatal(err)
	}
	if v := c.GetTrustedMetadataSet().Root.Signed.Version; v != 2 {
		t.Fatalf("client trusts root %d, want 2", v)
	}
	// The old root keys can no longer sign a root 3.
	spec.Version = 3
	r3, _ := tufrepo.NewRoot(spec)
	r3, _ = tufrepo.Sign(r3, f.rootKeys...)
	if err := f.image.Repo().ImportRoot(ctx, r3); !errors.Is(err, tufrepo.ErrThreshold) {
		t.Fatalf("root 3 by retired keys: %v", err)
	}
}

func TestExpiredTimestampDetectedThenRefreshed(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.publish("fw", "1.0.0", "board-a", 1, testImage(4, 4096), f.targetsKeys...); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(25 * time.Hour) // the timestamp lives 24 h; nobody refreshed it
	c, err := f.client("dev-1", wire.OTAImagePath, f.imageRoot1(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var exp *metadata.ErrExpiredMetadata
	if err := c.Refresh(); !errors.As(err, &exp) {
		t.Fatalf("refresh with a stale timestamp: %v, want ErrExpiredMetadata", err)
	}
	if err := f.image.Repo().Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	c, _ = f.client("dev-1", wire.OTAImagePath, f.imageRoot1(), t.TempDir())
	if err := c.Refresh(); err != nil {
		t.Fatalf("after server refresh: %v", err)
	}
	// Within the first half of its life the timestamp is not re-signed.
	before, _ := f.image.Repo().File(ctx, "timestamp.json")
	f.clock.Add(time.Hour)
	f.image.Repo().Refresh(ctx)
	after, _ := f.image.Repo().File(ctx, "timestamp.json")
	if !bytes.Equal(before, after) {
		t.Fatal("timestamp re-signed at 1 h of 24 h")
	}
}

func TestClientRefusesRolledBackMetadata(t *testing.T) {
	f := newFixture(t)
	if _, err := f.publish("fw", "1.0.0", "board-a", 1, testImage(5, 4096), f.targetsKeys...); err != nil {
		t.Fatal(err)
	}
	old := f.store.save()
	if _, err := f.publish("fw", "1.1.0", "board-a", 1, testImage(6, 4096), f.targetsKeys...); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	c, _ := f.client("dev-1", wire.OTAImagePath, f.imageRoot1(), cache)
	if err := c.Refresh(); err != nil {
		t.Fatal(err)
	}
	// The server (or a mirror) now serves the older, validly signed state.
	f.store.restore(old)
	trusted, err := os.ReadFile(filepath.Join(cache, "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, _ = f.client("dev-1", wire.OTAImagePath, trusted, cache)
	err = c.Refresh()
	var bad *metadata.ErrBadVersionNumber
	if !errors.As(err, &bad) {
		t.Fatalf("refresh against rolled-back metadata: %v, want ErrBadVersionNumber", err)
	}
}

func TestRangeRequestsResume(t *testing.T) {
	f := newFixture(t)
	img := testImage(8, 100_000)
	p, err := f.publish("fw", "1.0.0", "board-a", 1, img, f.targetsKeys...)
	if err != nil {
		t.Fatal(err)
	}
	url := f.srv.URL + wire.OTAImagePath + "targets/" + p.Image
	get := func(hdr map[string]string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Test-Device", "dev-1")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	// A download cut at 40000 bytes resumes from there.
	full, first := get(nil)
	if full.StatusCode != 200 || !bytes.Equal(first, img) {
		t.Fatalf("full GET %d", full.StatusCode)
	}
	resp, rest := get(map[string]string{"Range": "bytes=40000-", "If-Range": full.Header.Get("ETag")})
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("status %d, want 206", resp.StatusCode)
	}
	if !bytes.Equal(append(append([]byte(nil), img[:40000]...), rest...), img) {
		t.Fatal("resumed download differs")
	}
	if resp, _ := get(map[string]string{"Range": "bytes=200000-"}); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: %d", resp.StatusCode)
	}
}

func TestHandlerAuthorisation(t *testing.T) {
	f := newFixture(t)
	for name, tc := range map[string]struct {
		device, path string
		want         int
	}{
		"ok/own-director":          {"dev-1", wire.OTADirectorPath + "dev-1/1.root.json", 200},
		"fail/other-director":      {"dev-1", wire.OTADirectorPath + "dev-2/1.root.json", 403},
		"fail/anonymous":           {"", wire.OTAImagePath + "1.root.json", 401},
		"fail/unknown-target":      {"dev-1", wire.OTAImagePath + "targets/images/x.img", 404},
		"fail/not-metadata":        {"dev-1", wire.OTAImagePath + "keys/image-snapshot.sealed", 404},
		"fail/dotdot":              {"dev-1", wire.OTAImagePath + "targets/../keys/x", 404},
		"fail/root-version-format": {"dev-1", wire.OTAImagePath + "01.root.json", 404},
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", f.srv.URL+tc.path, nil)
			if tc.device != "" {
				req.Header.Set("X-Test-Device", tc.device)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestAssignFloorsAndHardware(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p1, err := f.publish("fw", "1.0.0", "board-a", 3, testImage(9, 4096), f.targetsKeys...)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := f.publish("fw", "1.0.0", "board-b", 9, testImage(10, 4096), f.targetsKeys...)
	if err != nil {
		t.Fatal(err)
	}
	if pb.ReleaseCounter != 1 {
		t.Fatalf("release counter is per hardware model: got %d", pb.ReleaseCounter)
	}
	if err := f.director.Assign(ctx, "dev-1", pb.Image); !errors.Is(err, ErrWrongHardware) {
		t.Fatalf("assign other hardware: %v", err)
	}
	if err := f.director.ReportFloor(ctx, "dev-1", 5); err != nil {
		t.Fatal(err)
	}
	if err := f.director.Assign(ctx, "dev-1", p1.Image); !errors.Is(err, ErrBelowFloor) {
		t.Fatalf("assign below floor: %v", err)
	}
	if len(f.events.ev) != 0 {
		t.Fatal("event without a decrease")
	}
	if err := f.director.ReportFloor(ctx, "dev-1", 2); err != nil {
		t.Fatal(err)
	}
	if len(f.events.ev) != 1 || f.events.ev[0].Type != EventFloorDecreased || f.events.ev[0].Previous != 5 {
		t.Fatalf("events %+v", f.events.ev)
	}
	if fl, _, _ := f.floors.LastFloor(ctx, "dev-1"); fl != 5 {
		t.Fatalf("floor lowered to %d", fl)
	}
	if err := f.director.Assign(ctx, "dev-2", p1.Image); err != nil {
		t.Fatal(err)
	}
	got, _ := f.director.Assigned(ctx, "dev-2")
	if len(got) != 1 || got[0] != p1.Image {
		t.Fatalf("assigned %v", got)
	}
}

func TestPublishDevModeCommitsWithOnlineTargetsKey(t *testing.T) {
	ctx := context.Background()
	st := tufrepo.NewMemStore()
	ks := keys(t, 4)
	repo := tufrepo.New(tufrepo.Config{Store: st, Prefix: "image", Snapshot: ks[2], Timestamp: ks[3], Targets: ks[1:2]})
	root, _ := tufrepo.NewRoot(tufrepo.RootSpec{
		Expires: time.Now().Add(time.Hour), Root: pub(t, ks[0]), Targets: pub(t, ks[1]),
		Snapshot: pub(t, ks[2]), Timestamp: pub(t, ks[3]), RootThreshold: 1, TargetsThreshold: 1,
	})
	root, _ = tufrepo.Sign(root, ks[0])
	if err := repo.ImportRoot(ctx, root); err != nil {
		t.Fatal(err)
	}
	im, _ := NewImage(ImageConfig{Repo: repo, Blobs: DirBlobs{t.TempDir()}, ManifestSigner: ks[1]})
	p, err := im.Publish(ctx, Release{Name: "fw", Version: "1", HardwareID: "hw", SecurityVersion: 1, Image: bytes.NewReader([]byte("image"))})
	if err != nil {
		t.Fatal(err)
	}
	if p.Pending != nil {
		t.Fatal("dev mode left the release pending")
	}
	if _, _, err := im.Target(ctx, p.Image); err != nil {
		t.Fatal(err)
	}
	if _, err := im.Publish(ctx, Release{Name: "fw", Version: "1", HardwareID: "hw", Image: bytes.NewReader(nil)}); !errors.Is(err, ErrReleaseExists) {
		t.Fatalf("republish: %v", err)
	}
}

func TestOnlineKeysSealedAtRest(t *testing.T) {
	ctx := context.Background()
	st := tufrepo.NewMemStore()
	s := newTestSealer(t)
	k1, err := tufrepo.OnlineKey(ctx, st, s, "image-timestamp")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := tufrepo.OnlineKey(ctx, st, s, "image-timestamp")
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := tufrepo.KeyID(k1)
	id2, _ := tufrepo.KeyID(k2)
	if id1 != id2 {
		t.Fatal("online key not persisted")
	}
	sealed, _ := st.Get(ctx, "keys/image-timestamp.sealed")
	if bytes.Contains(sealed, []byte("PRIVATE")) || len(sealed) < 48 {
		t.Fatal("key stored in the clear")
	}
	// A sealed key moved under another role name does not open.
	st.Put(ctx, "keys/image-snapshot.sealed", sealed)
	if _, err := tufrepo.OnlineKey(ctx, st, s, "image-snapshot"); err == nil {
		t.Fatal("sealed key opened under another name")
	}
}

func TestCustomJSONNamesMatchWire(t *testing.T) {
	sv := uint64(1)
	b := Custom{HardwareID: "h", ReleaseCounter: 1, SecurityVersion: 1, Release: "r", Kind: "delta", DeltaFrom: "a", DeltaTarget: "b", MinSecurityVersion: &sv}.raw()
	for _, k := range []string{wire.OTACustomHardwareID, wire.OTACustomReleaseCounter, wire.OTACustomSecurityVersion,
		wire.OTACustomRelease, wire.OTACustomKind, wire.OTACustomDeltaFrom, wire.OTACustomDeltaTarget, wire.OTACustomMinSecurityVersion} {
		if !bytes.Contains(*b, []byte(`"`+k+`":`)) {
			t.Errorf("custom JSON lacks %q: %s", k, *b)
		}
	}
}

func TestDirectorRefreshedOnFetch(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p, err := f.publish("fw", "1.0.0", "board-a", 1, testImage(12, 4096), f.targetsKeys...)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.director.Assign(ctx, "dev-1", p.Image); err != nil {
		t.Fatal(err)
	}
	root, _ := f.director.Root(ctx, "dev-1")
	// Four days on: Director timestamp (1 day) and targets (7 days, past
	// half life) would be stale without refresh-on-fetch.
	f.clock.Add(4 * 24 * time.Hour)
	c, _ := f.client("dev-1", wire.OTADirectorPath+"dev-1", root, t.TempDir())
	if err := c.Refresh(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetTargetInfo(p.Image); err != nil {
		t.Fatal(err)
	}
}

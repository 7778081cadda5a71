package ota

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/wire"
)

func newTestClient(t *testing.T, s *otaServer, cache string, now func() time.Time) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{
		Server: s.srv.URL, DeviceID: testDevice, HardwareID: testHW,
		ImageRoot: s.image.rootJSON(), DirectorRoot: s.director.rootJSON(),
		CacheDir: cache, HTTPClient: s.httpClient(t), Now: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var (
	installedV1 = Installed{Slot: SlotA, Target: "fw-1.img", ReleaseCounter: 1, SecurityVersion: 1}
	fixedNow    = func() time.Time { return testNow }
)

func TestClientResolvesAgreedUpdate(t *testing.T) {
	f := newFleet(t, true)
	c := newTestClient(t, f.srv, t.TempDir(), fixedNow)
	plan, err := c.Resolve(context.Background(), installedV1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Image.Name != "fw-2.img" || plan.Image.SHA256 != sha(f.v2) || plan.Image.SecurityVersion != 2 ||
		plan.Image.ReleaseCounter != 2 || plan.Image.Release != "fw@fw-2.img" || plan.MinSecurityVersion != 1 {
		t.Fatalf("plan = %+v", plan)
	}
	if plan.Delta == nil || plan.Delta.Name != "fw-1-to-2.delta" {
		t.Fatalf("delta = %+v", plan.Delta)
	}
}

func TestClientRefusesDisagreement(t *testing.T) {
	other := bytes.Repeat([]byte("x"), 1000)
	tests := map[string]struct {
		setup func(f *fleet)
		want  error
	}{
		"fail/not-in-image-repository": {func(f *fleet) {
			f.srv.assign("fw-evil.img", other, map[string]any{wire.OTACustomHardwareID: testHW})
		}, ErrDisagree},
		"fail/other-hash": {func(f *fleet) {
			f.srv.assign("fw-2.img", other, map[string]any{wire.OTACustomHardwareID: testHW})
		}, ErrDisagree},
		// go-tuf's multirepo accepts this one: same name, length and
		// hash in both repositories, but the image is for other hardware.
		"fail/image-for-other-hardware": {func(f *fleet) {
			f.srv.release("fw-rev1.img", other, "board-rev1", 3, 3)
			f.srv.assign("fw-rev1.img", other, map[string]any{wire.OTACustomHardwareID: testHW})
		}, ErrDisagree},
		"fail/director-for-other-hardware": {func(f *fleet) {
			f.srv.assign("fw-2.img", f.v2, map[string]any{wire.OTACustomHardwareID: "board-rev1"})
		}, ErrDisagree},
		"fail/director-other-release-counter": {func(f *fleet) {
			f.srv.assign("fw-2.img", f.v2, map[string]any{wire.OTACustomReleaseCounter: 9})
		}, ErrDisagree},
		"fail/lower-release-counter": {func(f *fleet) {
			f.srv.release("fw-0.img", other, testHW, 0, 5)
			f.srv.assign("fw-0.img", other, nil)
		}, ErrRollback},
		"fail/below-floor": {func(f *fleet) {
			f.srv.release("fw-old.img", other, testHW, 7, 0)
			f.srv.assign("fw-old.img", other, nil)
		}, ErrRollback},
		"fail/below-director-minimum": {func(f *fleet) {
			f.srv.assign("fw-2.img", f.v2, map[string]any{wire.OTACustomMinSecurityVersion: 3})
		}, ErrRollback},
		"fail/two-images": {func(f *fleet) {
			f.srv.assign("fw-2.img", f.v2, nil)
			f.srv.director.addTarget("fw-1.img", f.v1, nil)
			f.srv.director.publish()
		}, ErrDisagree},
		"fail/nothing-assigned": {func(f *fleet) {
			f.srv.director.targets.Signed.Targets = map[string]*metadata.TargetFiles{}
			f.srv.director.publish()
		}, ErrNoUpdate},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t, false)
			tc.setup(f)
			c := newTestClient(t, f.srv, t.TempDir(), fixedNow)
			_, err := c.Resolve(context.Background(), installedV1, 1)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Resolve = %v, want %v", err, tc.want)
			}
		})
	}
}

// resign signs r's metadata as it stands, without bumping versions.
func (r *tufRepo) resign(role string) {
	switch role {
	case metadata.SNAPSHOT:
		r.snap.ClearSignatures()
		r.snap.Sign(r.signer(role))
		b, _ := r.snap.ToBytes(false)
		r.put(fmt.Sprintf("%d.snapshot.json", r.snap.Signed.Version), b)
	case metadata.TIMESTAMP:
		r.ts.ClearSignatures()
		r.ts.Sign(r.signer(role))
		b, _ := r.ts.ToBytes(false)
		r.put("timestamp.json", b)
	}
}

func TestClientRefusesMetadataRollback(t *testing.T) {
	tests := map[string]func(f *fleet, old map[string][]byte){
		"fail/root": func(f *fleet, old map[string][]byte) {
			// The current root key signs the next root with an old
			// version number.
			r := f.srv.image
			next := r.root.Signed.Version + 1
			r.root.Signed.Version = 1
			r.signRoot()
			b, _ := r.get("1.root.json")
			r.put(fmt.Sprintf("%d.root.json", next), b)
			r.put("1.root.json", old["1.root.json"])
		},
		"fail/timestamp": func(f *fleet, old map[string][]byte) {
			f.srv.image.put("timestamp.json", old["timestamp.json"])
		},
		"fail/snapshot": func(f *fleet, old map[string][]byte) {
			// A fresh timestamp that points at the old snapshot.
			r := f.srv.image
			r.ts.Signed.Version++
			r.ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.snap.Signed.Version - 1)
			r.resign(metadata.TIMESTAMP)
		},
		"fail/targets": func(f *fleet, old map[string][]byte) {
			// Fresh timestamp and snapshot that point at old targets.
			r := f.srv.image
			r.snap.Signed.Version++
			r.snap.Signed.Meta["targets.json"] = metadata.MetaFile(r.targets.Signed.Version - 1)
			r.resign(metadata.SNAPSHOT)
			r.ts.Signed.Version++
			r.ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.snap.Signed.Version)
			r.resign(metadata.TIMESTAMP)
		},
	}
	for name, attack := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t, false)
			old := f.srv.image.snapshotFiles()
			f.srv.image.rotateRoot()
			f.srv.image.publish()
			cache := t.TempDir()
			c := newTestClient(t, f.srv, cache, fixedNow)
			if _, err := c.Resolve(context.Background(), installedV1, 1); err != nil {
				t.Fatal(err)
			}
			attack(f, old)
			_, err := c.Resolve(context.Background(), installedV1, 1)
			var badVersion *metadata.ErrBadVersionNumber
			if !errors.As(err, &badVersion) {
				t.Fatalf("Resolve = %v, want a version error", err)
			}
			t.Log(err)
		})
	}
}

func TestClientRefusesFrozenMetadata(t *testing.T) {
	f := newFleet(t, false)
	now := testNow
	c := newTestClient(t, f.srv, t.TempDir(), func() time.Time { return now })
	if _, err := c.Resolve(context.Background(), installedV1, 1); err != nil {
		t.Fatal(err)
	}
	// The server keeps serving the same timestamp while time passes.
	now = testNow.Add(25 * time.Hour)
	_, err := c.Resolve(context.Background(), installedV1, 1)
	var expired *metadata.ErrExpiredMetadata
	if !errors.As(err, &expired) {
		t.Fatalf("Resolve = %v, want expired metadata", err)
	}
}

func TestClientRefusesEndlessMetadata(t *testing.T) {
	f := newFleet(t, false)
	f.srv.director.put("timestamp.json", bytes.Repeat([]byte(" "), maxTimestampSize+1))
	c := newTestClient(t, f.srv, t.TempDir(), fixedNow)
	_, err := c.Resolve(context.Background(), installedV1, 1)
	var tooLong *metadata.ErrDownloadLengthMismatch
	if !errors.As(err, &tooLong) {
		t.Fatalf("Resolve = %v, want a length error", err)
	}
}

func TestClientAcceptsRootRotation(t *testing.T) {
	f := newFleet(t, false)
	cache := t.TempDir()
	c := newTestClient(t, f.srv, cache, fixedNow)
	if _, err := c.Resolve(context.Background(), installedV1, 1); err != nil {
		t.Fatal(err)
	}
	f.srv.image.rotateRoot()
	f.srv.image.rotateRoot()
	f.srv.image.publish()
	if _, err := c.Resolve(context.Background(), installedV1, 1); err != nil {
		t.Fatalf("Resolve after two root rotations: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(cache, "image", "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	var root struct {
		Signed struct{ Version int } `json:"signed"`
	}
	json.Unmarshal(b, &root)
	if root.Signed.Version != 3 {
		t.Fatalf("cached root version %d, want 3", root.Signed.Version)
	}
	// A rotation signed only by the new key is refused.
	r := f.srv.image
	r.setKey(metadata.ROOT)
	r.root.Signed.Version++
	r.signRoot()
	r.publish()
	if _, err := c.Resolve(context.Background(), installedV1, 1); err == nil || !strings.Contains(err.Error(), "root") {
		t.Fatalf("Resolve accepted a root not signed by the previous root's keys: %v", err)
	}
}

// A wiped metadata cache lets an attacker replay old, validly signed
// metadata: the floor and the installed release counter still refuse it.
func TestWipedCacheDoesNotLowerFloor(t *testing.T) {
	f := newFleet(t, false)
	// What the repositories served when v1 was current.
	f.srv.assign("fw-1.img", f.v1, map[string]any{wire.OTACustomHardwareID: testHW})
	oldImage, oldDirector := f.srv.image.snapshotFiles(), f.srv.director.snapshotFiles()
	f.srv.assign("fw-2.img", f.v2, map[string]any{wire.OTACustomHardwareID: testHW})
	d := newDevice(t, f, 1)
	if j := d.update(job2).Journal(); j.Phase != PhaseCommitted {
		t.Fatalf("journal = %+v", j)
	}
	if err := os.RemoveAll(d.client.cfg.CacheDir); err != nil {
		t.Fatal(err)
	}
	f.srv.image.restoreFiles(oldImage)
	f.srv.director.restoreFiles(oldDirector)
	e := d.mustEngine()
	err := e.Handle(context.Background(), wire.OTAJob{Release: "fw@fw-1.img"})
	if !errors.Is(err, ErrRollback) {
		t.Fatalf("Handle = %v, want ErrRollback", err)
	}
	if fl, _ := d.floor.Floor(); fl != 2 {
		t.Fatalf("floor = %d, want 2", fl)
	}
	if j := e.Journal(); j.Installed.SHA256 != sha(f.v2) {
		t.Fatalf("installed = %+v", j.Installed)
	}
	// With a release counter that passes, the floor alone refuses it.
	_, err = d.client.Resolve(context.Background(), Installed{Slot: SlotB}, 2)
	if !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "floor") {
		t.Fatalf("Resolve = %v, want the floor to refuse", err)
	}
}

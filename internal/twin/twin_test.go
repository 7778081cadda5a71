package twin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/strictjson"
)

func decode(t testing.TB, s string) any {
	t.Helper()
	v, err := strictjson.Decode([]byte(s), 64)
	if err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return v
}

// TestMergePatchRFC7386 runs the examples of RFC 7386 Appendix A.
func TestMergePatchRFC7386(t *testing.T) {
	vectors := [][3]string{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"e":null,"a":1}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	}
	for _, v := range vectors {
		target := decode(t, v[0])
		got := MergePatch(target, decode(t, v[1]))
		if !reflect.DeepEqual(got, decode(t, v[2])) {
			t.Errorf("merge(%s, %s) = %v, want %s", v[0], v[1], got, v[2])
		}
		if !reflect.DeepEqual(target, decode(t, v[0])) {
			t.Errorf("merge modified its target %s", v[0])
		}
	}
}

type fixture struct {
	svc   *Service
	store *MemStore
	now   time.Time
}

func newFixture() *fixture {
	f := &fixture{store: NewMemStore(), now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	f.svc = New(f.store, func() time.Time { return f.now })
	return f
}

var ctx = context.Background()

func TestPatchVersionsAndMetadata(t *testing.T) {
	f := newFixture()
	tw, err := f.svc.Get(ctx, "acme", "dev-1", "")
	if err != nil || tw.Name != "default" || tw.Desired.Version != 0 {
		t.Fatalf("empty twin: %+v %v", tw, err)
	}
	tw, err = f.svc.PatchDesired(ctx, "acme", "dev-1", "default", []byte(`{"rate":10,"mode":"eco"}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(time.Minute)
	tw, err = f.svc.PatchDesired(ctx, "acme", "dev-1", "default", []byte(`{"rate":20,"mode":null}`), 1)
	if err != nil {
		t.Fatal(err)
	}
	if tw.Desired.Version != 2 || tw.Reported.Version != 0 || string(tw.Desired.Doc) != `{"rate":20}` {
		t.Fatalf("after two patches: %+v", tw.Desired)
	}
	if !tw.Desired.Updated["rate"].Equal(f.now) {
		t.Fatalf("rate updated at %v, want %v", tw.Desired.Updated["rate"], f.now)
	}
	if _, ok := tw.Desired.Updated["mode"]; ok {
		t.Fatal("metadata kept for a deleted key")
	}
	// A patch that changes nothing does not bump the version.
	tw, err = f.svc.PatchDesired(ctx, "acme", "dev-1", "default", []byte(`{"rate":20,"gone":null}`), AnyVersion)
	if err != nil || tw.Desired.Version != 2 {
		t.Fatalf("no-op patch: version %d, %v", tw.Desired.Version, err)
	}
	tw, err = f.svc.PatchReported(ctx, "acme", "dev-1", "default", []byte(`{"rate":20,"fw":"1.0"}`), AnyVersion)
	if err != nil || tw.Reported.Version != 1 || tw.Desired.Version != 2 {
		t.Fatalf("reported: %+v %v", tw, err)
	}
}

func TestIfMatchConflict(t *testing.T) {
	f := newFixture()
	if _, err := f.svc.PatchDesired(ctx, "acme", "dev-1", "default", []byte(`{"a":1}`), 0); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.PatchDesired(ctx, "acme", "dev-1", "default", []byte(`{"a":2}`), 0)
	if !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("stale If-Match: %v", err)
	}
	tw, _ := f.svc.Get(ctx, "acme", "dev-1", "default")
	if string(tw.Desired.Doc) != `{"a":1}` {
		t.Fatalf("conflicting patch was applied: %s", tw.Desired.Doc)
	}
	// The reported section has its own version: If-Match 0 still holds there.
	if _, err := f.svc.PatchReported(ctx, "acme", "dev-1", "default", []byte(`{"a":1}`), 0); err != nil {
		t.Fatal(err)
	}
}

func TestStoreCompareAndSwap(t *testing.T) {
	s := NewMemStore()
	tw := emptyTwin("acme", "d", "default")
	tw.Revision = 1
	if err := s.Put(ctx, tw, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, tw, 0); !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("second create: %v", err)
	}
	tw.Revision = 2
	if err := s.Put(ctx, tw, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "acme", "d", "other"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing twin: %v", err)
	}
}

func TestConcurrentPatchesAllLand(t *testing.T) {
	f := newFixture()
	var wg sync.WaitGroup
	const n = 16
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, err := f.svc.PatchDesired(ctx, "acme", "dev-1", "default", []byte(fmt.Sprintf(`{"k%d":%d}`, i, i)), AnyVersion)
			errs <- err
		}()
		go func() {
			defer wg.Done()
			_, err := f.svc.PatchReported(ctx, "acme", "dev-1", "default", []byte(fmt.Sprintf(`{"r%d":%d}`, i, i)), AnyVersion)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			if !errors.Is(err, ErrVersionConflict) {
				t.Fatal(err)
			}
			failed++
		}
	}
	tw, _ := f.svc.Get(ctx, "acme", "dev-1", "default")
	var d, r map[string]any
	json.Unmarshal(tw.Desired.Doc, &d)
	json.Unmarshal(tw.Reported.Doc, &r)
	// Every patch either landed or reported a conflict; none was lost
	// silently.
	if len(d)+len(r)+failed != 2*n || tw.Desired.Version != uint64(len(d)) || tw.Reported.Version != uint64(len(r)) {
		t.Fatalf("desired %d keys v%d, reported %d keys v%d, %d conflicts", len(d), tw.Desired.Version, len(r), tw.Reported.Version, failed)
	}
}

// TestOfflineDeviceGetsOneCombinedDelta: three desired changes while the
// device is offline yield a single delta equal to their combined effect.
func TestOfflineDeviceGetsOneCombinedDelta(t *testing.T) {
	f := newFixture()
	mustPatch := func(desired bool, p string) *Twin {
		t.Helper()
		var tw *Twin
		var err error
		if desired {
			tw, err = f.svc.PatchDesired(ctx, "acme", "dev-1", "default", []byte(p), AnyVersion)
		} else {
			tw, err = f.svc.PatchReported(ctx, "acme", "dev-1", "default", []byte(p), AnyVersion)
		}
		if err != nil {
			t.Fatal(err)
		}
		return tw
	}
	mustPatch(true, `{"rate":10,"net":{"apn":"a","mtu":1500},"led":"on"}`)
	tw := mustPatch(false, `{"rate":10,"net":{"apn":"a","mtu":1500},"led":"on","fw":"1.0"}`)
	if d, err := tw.Delta(); err != nil || d != nil {
		t.Fatalf("in sync but delta %s %v", d, err)
	}
	// Device goes offline; three operator changes.
	mustPatch(true, `{"rate":20}`)
	mustPatch(true, `{"net":{"apn":"b"}}`)
	tw = mustPatch(true, `{"rate":30,"tz":"UTC"}`)
	d, err := tw.Delta()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"net":{"apn":"b"},"rate":30,"tz":"UTC"}`
	if string(d) != want {
		t.Fatalf("delta %s, want %s", d, want)
	}
	msg, err := tw.DeltaMessage()
	if err != nil || msg.DesiredVersion != 4 || msg.ReportedVersion != 1 || string(msg.Delta) != want {
		t.Fatalf("delta message %+v %v", msg, err)
	}
	if dm := tw.DesiredMessage(); dm.Version != 4 || dm.Twin != "default" {
		t.Fatalf("desired message %+v", dm)
	}
	// The device applies the delta as a merge patch and reports: in sync.
	dec := decode(t, string(tw.Reported.Doc))
	applied, _ := json.Marshal(MergePatch(dec, decode(t, string(d))))
	tw = mustPatch(false, string(applied))
	if d, _ := tw.Delta(); d != nil {
		t.Fatalf("still a delta after applying it: %s", d)
	}
	// Numbers compare by value.
	tw = mustPatch(false, `{"rate":30.0}`)
	if d, _ := tw.Delta(); d != nil {
		t.Fatalf("30 vs 30.0 gives delta %s", d)
	}
}

func TestLimits(t *testing.T) {
	f := newFixture()
	big := `{"a":"` + strings.Repeat("x", MaxDesiredSize) + `"}`
	if _, err := f.svc.PatchDesired(ctx, "acme", "d", "default", []byte(big), AnyVersion); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized patch: %v", err)
	}
	// Growth by small patches is bounded too.
	chunk := strings.Repeat("y", 8<<10)
	var err error
	for i := 0; i < 5 && err == nil; i++ {
		_, err = f.svc.PatchReported(ctx, "acme", "d", "default", []byte(fmt.Sprintf(`{"k%d":"%s"}`, i, chunk)), AnyVersion)
	}
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("section grew past the limit: %v", err)
	}
	deep := strings.Repeat(`{"a":`, MaxDepth+1) + "1" + strings.Repeat("}", MaxDepth+1)
	if _, err := f.svc.PatchDesired(ctx, "acme", "d", "default", []byte(deep), AnyVersion); !errors.Is(err, ErrInvalid) {
		t.Fatalf("deep patch: %v", err)
	}
	for name, p := range map[string]string{"array": `[1]`, "dup": `{"a":1,"a":2}`, "junk": `{`} {
		if _, err := f.svc.PatchDesired(ctx, "acme", "d", "default", []byte(p), AnyVersion); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%s patch: %v", name, err)
		}
	}
}

func TestNamedTwins(t *testing.T) {
	f := newFixture()
	if _, err := f.svc.PatchDesired(ctx, "acme", "d", "firmware", []byte(`{"channel":"beta"}`), AnyVersion); err != nil {
		t.Fatal(err)
	}
	def, _ := f.svc.Get(ctx, "acme", "d", "default")
	fw, _ := f.svc.Get(ctx, "acme", "d", "firmware")
	if string(def.Desired.Doc) != `{}` || string(fw.Desired.Doc) != `{"channel":"beta"}` {
		t.Fatalf("twins not independent: %s / %s", def.Desired.Doc, fw.Desired.Doc)
	}
	if _, err := f.svc.Get(ctx, "acme", "d", "../x"); err == nil {
		t.Fatal("bad twin name accepted")
	}
	if _, err := f.svc.Get(ctx, "ACME", "d", "default"); err == nil {
		t.Fatal("bad tenant accepted")
	}
}

func FuzzMergePatch(f *testing.F) {
	f.Add([]byte(`{"a":{"b":1,"c":[1,2]},"d":"x"}`), []byte(`{"a":{"b":null,"e":{"f":null}},"d":[]}`))
	f.Add([]byte(`[]`), []byte(`{"a":null}`))
	f.Add([]byte(`{"a":1}`), []byte(`"s"`))
	f.Fuzz(func(t *testing.T, docB, patchB []byte) {
		doc, err1 := strictjson.Decode(docB, MaxDepth)
		patch, err2 := strictjson.Decode(patchB, MaxDepth)
		if err1 != nil || err2 != nil {
			return
		}
		before, _ := json.Marshal(doc)
		once := MergePatch(doc, patch)
		after, _ := json.Marshal(doc)
		if string(before) != string(after) {
			t.Fatal("MergePatch modified its target")
		}
		twice := MergePatch(once, patch)
		if !reflect.DeepEqual(once, twice) {
			t.Fatal("merge patch is not idempotent")
		}
		if _, err := json.Marshal(once); err != nil {
			t.Fatal(err)
		}
		// Patches with nulls never leave nulls in objects they create.
		if pm, ok := patch.(map[string]any); ok {
			om := once.(map[string]any)
			for k, v := range pm {
				if _, present := om[k]; v == nil && present {
					t.Fatalf("key %q deleted by the patch is still present", k)
				}
			}
		}
	})
}

// Package twin keeps device twins: a desired section written by operators,
// a reported section written by the device, each with its own version and
// per-key update times, updated by JSON merge patch (RFC 7386) under
// optimistic concurrency, and the delta between them that is pushed to the
// device.
package twin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/wardiot/ward/internal/strictjson"
	"github.com/wardiot/ward/wire"
)

// Limits on twin documents. Twins are stored per device and sent to it on
// every connect, so each section is bounded; nesting is bounded so the
// recursive merge and delta stay cheap and devices with small parsers can
// read what they get.
const (
	MaxDesiredSize  = 32 << 10
	MaxReportedSize = 32 << 10
	MaxDepth        = 10
	// maxCASRetries bounds retries when the other section changed between
	// read and write; beyond it the caller sees ErrVersionConflict.
	maxCASRetries = 8
)

// AnyVersion as an If-Match value applies a patch whatever the version.
const AnyVersion = math.MaxUint64

// Errors. The API maps ErrVersionConflict to 409 and ErrTooLarge and
// ErrInvalid to 400/413.
var (
	ErrVersionConflict = errors.New("twin version conflict")
	ErrNotFound        = errors.New("twin not found")
	ErrTooLarge        = errors.New("twin section too large")
	ErrInvalid         = errors.New("invalid twin patch")
)

// Section is one side of a twin.
type Section struct {
	// Version counts changes to this section; 0 means never written.
	Version uint64
	// Doc is the section, a JSON object.
	Doc json.RawMessage
	// Updated is when each top-level key last changed.
	Updated map[string]time.Time
}

// Twin is a device twin. Revision counts every write to either section and
// is what the store's compare-and-swap checks.
type Twin struct {
	Tenant   string
	Device   string
	Name     string
	Revision uint64
	Desired  Section
	Reported Section
}

// Store persists twins. Implementations must copy what they keep.
type Store interface {
	// Get returns ErrNotFound if the twin was never written.
	Get(ctx context.Context, tenant, device, name string) (*Twin, error)
	// Put stores t only if the stored twin's Revision equals expect (0:
	// no twin stored), and returns ErrVersionConflict otherwise. t.Revision
	// is the new revision, expect+1.
	Put(ctx context.Context, t *Twin, expect uint64) error
}

// Service applies twin updates.
type Service struct {
	store Store
	clock func() time.Time
}

// New returns a service over store. clock may be nil for time.Now.
func New(store Store, clock func() time.Time) *Service {
	if clock == nil {
		clock = time.Now
	}
	return &Service{store: store, clock: clock}
}

func emptyTwin(tenant, device, name string) *Twin {
	return &Twin{Tenant: tenant, Device: device, Name: name,
		Desired:  Section{Doc: json.RawMessage("{}"), Updated: map[string]time.Time{}},
		Reported: Section{Doc: json.RawMessage("{}"), Updated: map[string]time.Time{}}}
}

func checkIDs(tenant, device, name string) error {
	if err := wire.ValidateTenantID(tenant); err != nil {
		return err
	}
	if err := wire.ValidateDeviceID(device); err != nil {
		return err
	}
	return wire.ValidateTwinName(name)
}

// Get returns a twin; a twin never written is returned empty at version 0,
// since every device implicitly has its default twin.
func (s *Service) Get(ctx context.Context, tenant, device, name string) (*Twin, error) {
	if name == "" {
		name = wire.DefaultTwinName
	}
	if err := checkIDs(tenant, device, name); err != nil {
		return nil, err
	}
	t, err := s.store.Get(ctx, tenant, device, name)
	if errors.Is(err, ErrNotFound) {
		return emptyTwin(tenant, device, name), nil
	}
	return t, err
}

// PatchDesired applies an operator's merge patch to the desired section.
// ifMatch is the desired version the operator last read, or AnyVersion.
func (s *Service) PatchDesired(ctx context.Context, tenant, device, name string, patch []byte, ifMatch uint64) (*Twin, error) {
	return s.patch(ctx, tenant, device, name, patch, ifMatch, true)
}

// PatchReported applies a device's merge patch to the reported section.
func (s *Service) PatchReported(ctx context.Context, tenant, device, name string, patch []byte, ifMatch uint64) (*Twin, error) {
	return s.patch(ctx, tenant, device, name, patch, ifMatch, false)
}

func (s *Service) patch(ctx context.Context, tenant, device, name string, patch []byte, ifMatch uint64, desired bool) (*Twin, error) {
	limit := MaxReportedSize
	if desired {
		limit = MaxDesiredSize
	}
	if len(patch) > limit {
		return nil, fmt.Errorf("%w: patch is %d bytes, limit %d", ErrTooLarge, len(patch), limit)
	}
	p, err := strictjson.Decode(patch, MaxDepth)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	pm, ok := p.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: a section patch must be a JSON object", ErrInvalid)
	}
	for attempt := 0; ; attempt++ {
		t, err := s.Get(ctx, tenant, device, name)
		if err != nil {
			return nil, err
		}
		sec := &t.Reported
		if desired {
			sec = &t.Desired
		}
		if ifMatch != AnyVersion && sec.Version != ifMatch {
			return nil, fmt.Errorf("%w: section is at version %d, not %d", ErrVersionConflict, sec.Version, ifMatch)
		}
		cur, err := strictjson.Decode(sec.Doc, MaxDepth)
		if err != nil {
			return nil, fmt.Errorf("stored twin is corrupt: %w", err)
		}
		merged := MergePatch(cur, pm)
		doc, err := json.Marshal(merged)
		if err != nil {
			return nil, err
		}
		if len(doc) > limit {
			return nil, fmt.Errorf("%w: section would be %d bytes, limit %d", ErrTooLarge, len(doc), limit)
		}
		if depth(merged) > MaxDepth {
			return nil, fmt.Errorf("%w: section would nest deeper than %d", ErrTooLarge, MaxDepth)
		}
		if bytes.Equal(doc, sec.Doc) {
			return t, nil // nothing changed: no new version, no delta
		}
		now := s.clock().UTC()
		updated := make(map[string]time.Time, len(sec.Updated)+len(pm))
		for k, v := range sec.Updated {
			updated[k] = v
		}
		mm := merged.(map[string]any)
		for k := range pm {
			if _, present := mm[k]; present {
				updated[k] = now
			} else {
				delete(updated, k)
			}
		}
		sec.Doc, sec.Updated = doc, updated
		sec.Version++
		expect := t.Revision
		t.Revision++
		err = s.store.Put(ctx, t, expect)
		if err == nil {
			return t, nil
		}
		// A conflict here with a matching If-Match means the other section
		// (or a patch with AnyVersion) changed the twin; re-read and retry.
		if !errors.Is(err, ErrVersionConflict) || attempt >= maxCASRetries {
			return nil, err
		}
	}
}

// MergePatch applies an RFC 7386 JSON merge patch to target and returns
// the result. target is not modified; values are decoded JSON (as from
// strictjson.Decode).
func MergePatch(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, _ := target.(map[string]any)
	out := make(map[string]any, len(tm)+len(pm))
	for k, v := range tm {
		out[k] = v
	}
	for k, v := range pm {
		if v == nil {
			delete(out, k)
			continue
		}
		out[k] = MergePatch(out[k], v)
	}
	return out
}

func depth(v any) int {
	switch t := v.(type) {
	case map[string]any:
		d := 0
		for _, x := range t {
			d = max(d, depth(x))
		}
		return d + 1
	case []any:
		d := 0
		for _, x := range t {
			d = max(d, depth(x))
		}
		return d + 1
	}
	return 0
}

// Delta returns the desired keys whose values differ from the reported
// ones, recursing into objects present on both sides, as a merge patch the
// device applies. It is computed from the current sections, so a device
// that was offline through several desired changes gets one delta equal to
// their combined effect. Deleted desired keys are not in the delta (the
// device may report keys no one desires); the full desired section in
// wire.TwinDesired carries deletions. It returns nil when in sync.
func (t *Twin) Delta() (json.RawMessage, error) {
	d, err := strictjson.Decode(t.Desired.Doc, MaxDepth)
	if err != nil {
		return nil, err
	}
	r, err := strictjson.Decode(t.Reported.Doc, MaxDepth)
	if err != nil {
		return nil, err
	}
	dm, _ := d.(map[string]any)
	rm, _ := r.(map[string]any)
	delta := diff(dm, rm)
	if len(delta) == 0 {
		return nil, nil
	}
	return json.Marshal(delta)
}

// DeltaMessage returns the wire message for the twin's delta, or nil when
// desired and reported agree.
func (t *Twin) DeltaMessage() (*wire.TwinDelta, error) {
	d, err := t.Delta()
	if d == nil || err != nil {
		return nil, err
	}
	return &wire.TwinDelta{Twin: t.Name, DesiredVersion: t.Desired.Version, ReportedVersion: t.Reported.Version, Delta: d}, nil
}

// DesiredMessage returns the full desired section as sent to the device.
func (t *Twin) DesiredMessage() *wire.TwinDesired {
	return &wire.TwinDesired{Twin: t.Name, Version: t.Desired.Version, Desired: t.Desired.Doc}
}

func diff(desired, reported map[string]any) map[string]any {
	out := map[string]any{}
	for k, dv := range desired {
		rv, ok := reported[k]
		if !ok {
			out[k] = dv
			continue
		}
		dsub, dIsObj := dv.(map[string]any)
		rsub, rIsObj := rv.(map[string]any)
		if dIsObj && rIsObj {
			if sub := diff(dsub, rsub); len(sub) > 0 {
				out[k] = sub
			}
			continue
		}
		if !equal(dv, rv) {
			out[k] = dv
		}
	}
	return out
}

// equal compares decoded JSON values, numbers by value (1 equals 1.0).
func equal(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		if x == y {
			return true
		}
		fx, err1 := strconv.ParseFloat(string(x), 64)
		fy, err2 := strconv.ParseFloat(string(y), 64)
		return err1 == nil && err2 == nil && fx == fy
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !equal(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equal(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return a == b
}

package agentcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"sync"

	"github.com/wardiot/ward/internal/atomicfile"
	"github.com/wardiot/ward/wire"
)

// firmwareKey is the part of the default twin's reported state the agent
// owns: the server picks rollout targets by firmware.hw_model. A desired
// "firmware" section is neither written to the twin file nor echoed back,
// so an operator's typo cannot make the device misreport its hardware.
const firmwareKey = "firmware"

// twinFile keeps the desired state of the default twin in a file: each
// desired document or delta from the server is merged into it, written
// atomically (0600, temporary file, fsync, rename), handed to the hook,
// and what was applied is reported back.
type twinFile struct {
	path string
	// hook, if set, runs with the file's path; a failure means the
	// document was not applied: the previous file is restored and
	// nothing is reported, so the delta comes again on the next change
	// or reconnection.
	hook func(ctx context.Context, path string) error
	log  *slog.Logger

	mu sync.Mutex
	// version is the desired version last applied: a message for an
	// older one (MQTT delivers callbacks concurrently) is dropped.
	version uint64
}

// onDesired applies the full desired document the server sends when the
// device asks (on every connection): the file becomes exactly that
// document, which is how deletions reach the device. It returns the
// patch to report (nil if there is nothing to report).
func (t *twinFile) onDesired(ctx context.Context, payload []byte) (json.RawMessage, error) {
	if len(payload) > wire.MaxTwinMessageSize {
		return nil, fmt.Errorf("twin/desired message of %d bytes, limit %d", len(payload), wire.MaxTwinMessageSize)
	}
	var m wire.TwinDesired
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("twin/desired: %w", err)
	}
	if m.Twin != wire.DefaultTwinName {
		return nil, nil
	}
	doc, err := parseObject(m.Desired)
	if err != nil {
		return nil, fmt.Errorf("twin/desired: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if m.Version < t.version {
		return nil, nil
	}
	t.dropFirmware(doc)
	old, err := t.read()
	if err != nil {
		return nil, err
	}
	if err := t.apply(ctx, old, doc); err != nil {
		return nil, err
	}
	t.version = m.Version
	// Report the document, and null for keys it no longer has, so that
	// the reported state follows deletions too.
	rep := maps.Clone(doc)
	for k := range old {
		if _, ok := doc[k]; !ok {
			rep[k] = nil
		}
	}
	if len(rep) == 0 {
		return nil, nil
	}
	return json.Marshal(rep)
}

// onDelta merges a delta into the file and returns it as the patch to
// report.
func (t *twinFile) onDelta(ctx context.Context, payload []byte) (json.RawMessage, error) {
	if len(payload) > wire.MaxTwinMessageSize {
		return nil, fmt.Errorf("twin/delta message of %d bytes, limit %d", len(payload), wire.MaxTwinMessageSize)
	}
	var m wire.TwinDelta
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("twin/delta: %w", err)
	}
	if m.Twin != wire.DefaultTwinName {
		return nil, nil
	}
	delta, err := parseObject(m.Delta)
	if err != nil {
		return nil, fmt.Errorf("twin/delta: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if m.DesiredVersion < t.version {
		return nil, nil
	}
	t.dropFirmware(delta)
	if len(delta) == 0 {
		return nil, nil
	}
	old, err := t.read()
	if err != nil {
		return nil, err
	}
	doc, _ := mergePatch(maps.Clone(old), delta).(map[string]any)
	if err := t.apply(ctx, old, doc); err != nil {
		return nil, err
	}
	t.version = m.DesiredVersion
	return json.Marshal(delta)
}

func (t *twinFile) dropFirmware(doc map[string]any) {
	if _, ok := doc[firmwareKey]; ok {
		delete(doc, firmwareKey)
		t.log.Warn("ignoring the desired \"firmware\" section: the agent reports the firmware itself")
	}
}

// read returns the document in the file, empty if there is none.
func (t *twinFile) read() (map[string]any, error) {
	b, err := readFileLimited(t.path, wire.MaxTwinMessageSize, "twin file")
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]any{}, nil
	}
	if err != nil {
		return nil, err
	}
	doc, err := parseObject(b)
	if err != nil {
		// A file someone broke is replaced by the next document.
		t.log.Warn("the twin file does not hold a JSON object; it will be replaced", "err", err)
		return map[string]any{}, nil
	}
	return doc, nil
}

// apply writes doc and runs the hook; if the hook fails, the old
// document is put back.
func (t *twinFile) apply(ctx context.Context, old, doc map[string]any) error {
	prev, err := json.MarshalIndent(old, "", "  ")
	if err != nil {
		return err
	}
	next, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	_, statErr := os.Stat(t.path)
	if bytes.Equal(prev, next) && statErr == nil {
		return nil // already in effect
	}
	if err := atomicfile.Write(t.path, append(next, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing the twin file: %w", err)
	}
	if t.hook == nil {
		return nil
	}
	if err := t.hook(ctx, t.path); err != nil {
		if rerr := atomicfile.Write(t.path, append(prev, '\n'), 0o600); rerr != nil {
			t.log.Error("could not restore the twin file after the hook failed", "err", rerr)
		}
		return fmt.Errorf("twin hook %w", err)
	}
	return nil
}

// parseObject decodes a JSON object, keeping numbers as written. A null
// or empty document is the empty object.
func parseObject(b []byte) (map[string]any, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || bytes.Equal(b, []byte("null")) {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return nil, errors.New("not a JSON object")
	}
	if dec.More() {
		return nil, errors.New("data after the JSON object")
	}
	if doc == nil {
		return map[string]any{}, nil
	}
	return doc, nil
}

// mergePatch applies an RFC 7386 JSON merge patch to target.
func mergePatch(target any, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	} else {
		t = maps.Clone(t)
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}

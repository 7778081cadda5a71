package agentcli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardiot/ward/wire"
)

func newTwinFile(t *testing.T) *twinFile {
	return &twinFile{path: filepath.Join(t.TempDir(), "desired.json"), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func deltaMsg(v uint64, delta string) []byte {
	b, _ := json.Marshal(wire.TwinDelta{Twin: wire.DefaultTwinName, DesiredVersion: v, Delta: json.RawMessage(delta)})
	return b
}

func desiredMsg(v uint64, doc string) []byte {
	b, _ := json.Marshal(wire.TwinDesired{Twin: wire.DefaultTwinName, Version: v, Desired: json.RawMessage(doc)})
	return b
}

func fileDoc(t *testing.T, tf *twinFile) string {
	t.Helper()
	b, err := os.ReadFile(tf.path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := parseObject(b)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(doc)
	return string(out)
}

func TestTwinFileAppliesDesiredAndDeltas(t *testing.T) {
	ctx := context.Background()
	tf := newTwinFile(t)
	var hooked []string
	tf.hook = func(_ context.Context, path string) error {
		b, _ := os.ReadFile(path)
		hooked = append(hooked, string(b))
		return nil
	}
	rep, err := tf.onDesired(ctx, desiredMsg(3, `{"rate":10,"net":{"apn":"a","mtu":1500},"big":12345678901234567890}`))
	if err != nil || string(rep) != `{"big":12345678901234567890,"net":{"apn":"a","mtu":1500},"rate":10}` {
		t.Fatalf("desired: %s %v", rep, err)
	}
	if fi, _ := os.Stat(tf.path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	// A delta merges into the file (numbers kept as written) and is
	// reported as is.
	rep, err = tf.onDelta(ctx, deltaMsg(4, `{"net":{"apn":"b"}}`))
	if err != nil || string(rep) != `{"net":{"apn":"b"}}` {
		t.Fatalf("delta: %s %v", rep, err)
	}
	if got := fileDoc(t, tf); got != `{"big":12345678901234567890,"net":{"apn":"b","mtu":1500},"rate":10}` {
		t.Fatalf("file after delta: %s", got)
	}
	// A late delta of an older version is dropped.
	if rep, err := tf.onDelta(ctx, deltaMsg(3, `{"rate":1}`)); rep != nil || err != nil {
		t.Fatalf("stale delta: %s %v", rep, err)
	}
	// The full document on reconnect carries deletions: reported as null.
	rep, err = tf.onDesired(ctx, desiredMsg(5, `{"net":{"apn":"b","mtu":1500}}`))
	if err != nil || string(rep) != `{"big":null,"net":{"apn":"b","mtu":1500},"rate":null}` {
		t.Fatalf("desired with deletions: %s %v", rep, err)
	}
	if got := fileDoc(t, tf); got != `{"net":{"apn":"b","mtu":1500}}` {
		t.Fatalf("file after deletions: %s", got)
	}
	// The same document again: nothing written, the hook not run.
	n := len(hooked)
	if _, err := tf.onDesired(ctx, desiredMsg(5, `{"net":{"apn":"b","mtu":1500}}`)); err != nil || len(hooked) != n {
		t.Fatalf("unchanged document ran the hook (%d -> %d runs) %v", n, len(hooked), err)
	}
	if len(hooked) != 3 {
		t.Fatalf("hook ran %d times", len(hooked))
	}
}

func TestTwinFileHookFailureRestoresTheFile(t *testing.T) {
	ctx := context.Background()
	tf := newTwinFile(t)
	if _, err := tf.onDelta(ctx, deltaMsg(1, `{"rate":10}`)); err != nil {
		t.Fatal(err)
	}
	tf.hook = func(context.Context, string) error { return errors.New("exited with status 1") }
	rep, err := tf.onDelta(ctx, deltaMsg(2, `{"rate":20}`))
	if err == nil || rep != nil || err.Error() != "twin hook exited with status 1" {
		t.Fatalf("failing hook: %s %v", rep, err)
	}
	if got := fileDoc(t, tf); got != `{"rate":10}` {
		t.Fatalf("file after the failed hook: %s", got)
	}
	// Not applied, so the same delta is taken when it comes again.
	tf.hook = nil
	if rep, err := tf.onDelta(ctx, deltaMsg(2, `{"rate":20}`)); err != nil || string(rep) != `{"rate":20}` {
		t.Fatalf("retry: %s %v", rep, err)
	}
}

func TestTwinFileIgnoresFirmwareAndOtherTwins(t *testing.T) {
	ctx := context.Background()
	tf := newTwinFile(t)
	rep, err := tf.onDelta(ctx, deltaMsg(1, `{"firmware":{"hw_model":"evil"},"rate":1}`))
	if err != nil || string(rep) != `{"rate":1}` {
		t.Fatalf("firmware in a delta: %s %v", rep, err)
	}
	other, _ := json.Marshal(wire.TwinDelta{Twin: "other", DesiredVersion: 9, Delta: json.RawMessage(`{"x":1}`)})
	if rep, err := tf.onDelta(ctx, other); rep != nil || err != nil {
		t.Fatalf("other twin: %s %v", rep, err)
	}
	for _, bad := range [][]byte{[]byte(`{`), deltaMsg(2, `[1,2]`), make([]byte, wire.MaxTwinMessageSize+1)} {
		if _, err := tf.onDelta(ctx, bad); err == nil {
			t.Fatalf("accepted %.40q", bad)
		}
	}
	if got := fileDoc(t, tf); got != `{"rate":1}` {
		t.Fatalf("file: %s", got)
	}
}

func TestMergePatchRFC7386(t *testing.T) {
	// Examples from RFC 7386 appendix A.
	for _, c := range []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	} {
		target, _ := parseObject([]byte(c.target))
		patch, _ := parseObject([]byte(c.patch))
		got, _ := json.Marshal(mergePatch(target, patch))
		if string(got) != c.want {
			t.Errorf("%s + %s = %s, want %s", c.target, c.patch, got, c.want)
		}
	}
}

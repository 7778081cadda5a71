package telemetry

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/wardiot/ward/internal/strictjson"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardiot/ward/wire"
)

// fakeKeys is an in-memory Keys.
type fakeKeys struct {
	mu      sync.Mutex
	signing map[string][]PublicKey
	epochs  map[string]*EpochKeys
	err     error
}

func (f *fakeKeys) SigningKeys(_ context.Context, tenant, device string) ([]PublicKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.signing[tenant+"/"+device], f.err
}

func (f *fakeKeys) EpochKeys(_ context.Context, tenant, device string) (*EpochKeys, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.epochs[tenant+"/"+device], f.err
}

// testClock is a settable clock; tests move it instead of sleeping.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const envSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "temp": {"type": "number", "minimum": -50, "maximum": 150},
    "state": {"type": "string", "enum": ["ok", "warn"]},
    "owner": {"type": "string", "x-ward-classification": "confidential"}
  },
  "required": ["temp"],
  "additionalProperties": false
}`

type fixture struct {
	t      testing.TB
	clock  *testClock
	keys   *fakeKeys
	reg    *Registry
	v      *Verifier
	ed     ed25519.PrivateKey
	secret []byte
	id     Identity
	topic  string
	seq    uint64
}

func newFixture(t testing.TB) *fixture {
	clock := &testClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{9}, 32)
	cur, _ := wire.EpochKey(secret, 5)
	prev, _ := wire.EpochKey(secret, 4)
	keys := &fakeKeys{
		signing: map[string][]PublicKey{"acme/dev-1": {{ID: []byte("k2"), Key: ed.Public()}}},
		epochs:  map[string]*EpochKeys{"acme/dev-1": {Current: 5, CurrentKey: cur, PreviousKey: prev, Since: clock.Now().Add(-time.Minute)}},
	}
	reg := NewRegistry()
	if _, err := reg.Register("acme", "env", 1, []byte(envSchema)); err != nil {
		t.Fatal(err)
	}
	// Messages stamped at the verifier's start are refused (see
	// NewVerifier); start it a moment before "now".
	clock.Add(-time.Second)
	v := NewVerifier(keys, reg, Options{Clock: clock.Now})
	clock.Add(time.Second)
	return &fixture{t: t, clock: clock, keys: keys, reg: reg, v: v, ed: ed, secret: secret,
		id: Identity{"acme", "dev-1"}, topic: "ward/v1/dev-1/telemetry/env"}
}

func (f *fixture) header() wire.Header {
	f.seq++
	return wire.Header{Device: "dev-1", Seq: f.seq, Time: f.clock.Now(), SchemaID: "env", SchemaVersion: 1}
}

func (f *fixture) sign(h wire.Header, payload string) []byte {
	if h.KeyID == nil {
		h.KeyID = []byte("k2")
	}
	b, err := wire.SignTelemetry(f.ed, h, []byte(payload))
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

func (f *fixture) mac(h wire.Header, epoch uint64, payload string) []byte {
	h.Epoch = epoch
	k, _ := wire.EpochKey(f.secret, epoch)
	b, err := wire.MacTelemetry(k, h, []byte(payload))
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

func (f *fixture) verify(raw []byte) (*Message, error) {
	return f.v.Verify(context.Background(), f.id, f.topic, raw)
}

func wantReason(t *testing.T, err error, r Reason) {
	t.Helper()
	if got := ReasonOf(err); got != r {
		t.Fatalf("got reason %q (%v), want %q", got, err, r)
	}
}

func TestVerifyAccepts(t *testing.T) {
	f := newFixture(t)
	m, err := f.verify(f.sign(f.header(), `{"temp":21.5,"owner":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Tenant != "acme" || m.Device != "dev-1" || m.Stream != "env" || m.Seq != 1 ||
		m.Kind != wire.KindSign1 || string(m.KeyID) != "k2" || string(m.Payload) != `{"temp":21.5,"owner":"alice"}` {
		t.Fatalf("bad message %+v", m)
	}
	if got := string(m.Redacted()); got != `{"temp":21.5}` {
		t.Fatalf("Redacted() = %s", got)
	}
	m, err = f.verify(f.mac(f.header(), 5, `{"temp":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != wire.KindMac0 || m.Epoch != 5 {
		t.Fatalf("bad message %+v", m)
	}
}

func TestVerifyRejects(t *testing.T) {
	tests := map[string]func(f *fixture) ([]byte, Reason){
		"fail/too-large": func(f *fixture) ([]byte, Reason) {
			return make([]byte, wire.MaxEnvelopeSize+1), ReasonTooLarge
		},
		"fail/malformed": func(f *fixture) ([]byte, Reason) {
			return []byte{0xd2, 0x84, 0x01}, ReasonMalformed
		},
		"fail/topic-other-device": func(f *fixture) ([]byte, Reason) {
			f.topic = "ward/v1/dev-2/telemetry/env"
			return f.sign(f.header(), `{"temp":1}`), ReasonDeviceMismatch
		},
		"fail/topic-not-telemetry": func(f *fixture) ([]byte, Reason) {
			f.topic = "ward/v1/dev-1/twin/reported"
			return f.sign(f.header(), `{"temp":1}`), ReasonMalformed
		},
		"fail/topic-bad-stream": func(f *fixture) ([]byte, Reason) {
			f.topic = "ward/v1/dev-1/telemetry/a/b"
			return f.sign(f.header(), `{"temp":1}`), ReasonMalformed
		},
		"fail/envelope-other-device": func(f *fixture) ([]byte, Reason) {
			h := f.header()
			h.Device = "dev-2"
			return f.sign(h, `{"temp":1}`), ReasonDeviceMismatch
		},
		"fail/unknown-kid": func(f *fixture) ([]byte, Reason) {
			h := f.header()
			h.KeyID = []byte("k9")
			return f.sign(h, `{"temp":1}`), ReasonUnknownKey
		},
		"fail/rotated-out-key": func(f *fixture) ([]byte, Reason) {
			_, old, _ := ed25519.GenerateKey(rand.Reader)
			f.keys.signing["acme/dev-1"] = append(f.keys.signing["acme/dev-1"],
				PublicKey{ID: []byte("k1"), Key: old.Public(), NotAfter: f.clock.Now()})
			h := f.header()
			h.KeyID = []byte("k1")
			b, _ := wire.SignTelemetry(old, h, []byte(`{"temp":1}`))
			return b, ReasonUnknownKey
		},
		"fail/bad-signature": func(f *fixture) ([]byte, Reason) {
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			h := f.header()
			h.KeyID = []byte("k2")
			b, _ := wire.SignTelemetry(other, h, []byte(`{"temp":1}`))
			return b, ReasonBadSignature
		},
		"fail/bad-mac": func(f *fixture) ([]byte, Reason) {
			h := f.header()
			h.Epoch = 5
			b, _ := wire.MacTelemetry(bytes.Repeat([]byte{1}, 32), h, []byte(`{"temp":1}`))
			return b, ReasonBadSignature
		},
		"fail/old-epoch": func(f *fixture) ([]byte, Reason) {
			return f.mac(f.header(), 3, `{"temp":1}`), ReasonUnknownKey
		},
		"fail/next-epoch": func(f *fixture) ([]byte, Reason) {
			return f.mac(f.header(), 6, `{"temp":1}`), ReasonUnknownKey
		},
		"fail/previous-epoch-after-grace": func(f *fixture) ([]byte, Reason) {
			f.keys.epochs["acme/dev-1"].Since = f.clock.Now().Add(-DefaultEpochGrace)
			return f.mac(f.header(), 4, `{"temp":1}`), ReasonUnknownKey
		},
		"fail/stale": func(f *fixture) ([]byte, Reason) {
			h := f.header()
			f.clock.Add(DefaultMaxAge + time.Second)
			return f.sign(h, `{"temp":1}`), ReasonStale
		},
		"fail/future": func(f *fixture) ([]byte, Reason) {
			h := f.header()
			h.Time = h.Time.Add(DefaultMaxFuture + time.Second)
			return f.sign(h, `{"temp":1}`), ReasonFuture
		},
		"fail/replay": func(f *fixture) ([]byte, Reason) {
			b := f.sign(f.header(), `{"temp":1}`)
			if _, err := f.verify(b); err != nil {
				f.t.Fatal(err)
			}
			return b, ReasonReplay
		},
		"fail/unknown-schema-version": func(f *fixture) ([]byte, Reason) {
			h := f.header()
			h.SchemaVersion = 2
			return f.sign(h, `{"temp":1}`), ReasonUnknownSchema
		},
		"fail/other-tenant-schema": func(f *fixture) ([]byte, Reason) {
			f.keys.signing["other/dev-1"] = f.keys.signing["acme/dev-1"]
			f.id.Tenant = "other"
			return f.sign(f.header(), `{"temp":1}`), ReasonUnknownSchema
		},
		"fail/schema-invalid": func(f *fixture) ([]byte, Reason) {
			return f.sign(f.header(), `{"temp":"hot"}`), ReasonSchemaInvalid
		},
		"fail/schema-missing-required": func(f *fixture) ([]byte, Reason) {
			return f.sign(f.header(), `{"state":"ok"}`), ReasonSchemaInvalid
		},
		"fail/payload-duplicate-key": func(f *fixture) ([]byte, Reason) {
			return f.sign(f.header(), `{"temp":1,"temp":"x"}`), ReasonSchemaInvalid
		},
		"fail/payload-not-json": func(f *fixture) ([]byte, Reason) {
			return f.sign(f.header(), `{"temp":1`), ReasonSchemaInvalid
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			raw, want := tc(f)
			_, err := f.verify(raw)
			wantReason(t, err, want)
		})
	}
}

func TestVerifyKeyRotationAndEpochGrace(t *testing.T) {
	f := newFixture(t)
	_, old, _ := ed25519.GenerateKey(rand.Reader)
	f.keys.signing["acme/dev-1"] = append(f.keys.signing["acme/dev-1"],
		PublicKey{ID: []byte("k1"), Key: old.Public(), NotAfter: f.clock.Now().Add(time.Hour)})
	h := f.header()
	h.KeyID = []byte("k1")
	b, _ := wire.SignTelemetry(old, h, []byte(`{"temp":1}`))
	if _, err := f.verify(b); err != nil {
		t.Fatalf("previous key inside its validity: %v", err)
	}
	if _, err := f.verify(f.mac(f.header(), 4, `{"temp":1}`)); err != nil {
		t.Fatalf("previous epoch inside the grace period: %v", err)
	}
}

func TestVerifyKeysErrorIsNotARejection(t *testing.T) {
	f := newFixture(t)
	f.keys.err = errors.New("database down")
	_, err := f.verify(f.sign(f.header(), `{"temp":1}`))
	if err == nil || ReasonOf(err) != "" {
		t.Fatalf("infrastructure error reported as %q: %v", ReasonOf(err), err)
	}
}

func TestSchemaInvalidDetailHidesValues(t *testing.T) {
	f := newFixture(t)
	_, err := f.verify(f.sign(f.header(), `{"temp":1,"owner":12345678}`))
	wantReason(t, err, ReasonSchemaInvalid)
	if strings.Contains(err.Error(), "12345678") {
		t.Fatalf("error leaks a payload value: %v", err)
	}
	if !strings.Contains(err.Error(), "/owner") {
		t.Fatalf("error does not say where: %v", err)
	}
}

func TestVerifyRefusesMessagesFromBeforeStart(t *testing.T) {
	f := newFixture(t)
	h := f.header()
	h.Time = h.Time.Add(-2 * time.Second) // before NewVerifier ran
	_, err := f.verify(f.sign(h, `{"temp":1}`))
	wantReason(t, err, ReasonStale)
}

func TestReplayWindowReorderAndReplay(t *testing.T) {
	g := newReplayGuard(1000, time.Unix(0, 0))
	k := deviceKey{"t", "d"}
	ts := time.Unix(10, 0)
	accept := func(seq uint64) {
		t.Helper()
		if r, d := g.check(k, seq, ts); r != "" {
			t.Fatalf("seq %d refused: %s %s", seq, r, d)
		}
	}
	refuse := func(seq uint64, want Reason) {
		t.Helper()
		if r, _ := g.check(k, seq, ts); r != want {
			t.Fatalf("seq %d: got %q, want %q", seq, r, want)
		}
	}
	accept(5000)
	accept(4990)               // reordered, inside the window
	refuse(4990, ReasonReplay) // exactly once
	refuse(5000, ReasonReplay)
	accept(5000 - ReplayWindow + 1) // oldest slot
	refuse(5000-ReplayWindow, ReasonStale)
	accept(5001)
	refuse(5000, ReasonReplay)
	accept(5000 + 3*ReplayWindow) // a jump clears the bitmap
	refuse(5001, ReasonStale)
	accept(5000 + 3*ReplayWindow - 1)
}

// TestReplayWindowMatchesModel compares the bitmap against a plain set of
// seen numbers over a long random walk with reordering and duplicates.
func TestReplayWindowMatchesModel(t *testing.T) {
	g := newReplayGuard(10, time.Unix(0, 0))
	k := deviceKey{"t", "d"}
	seen := map[uint64]bool{}
	var highest uint64
	first := true
	var rnd [8]byte
	for i := 0; i < 200000; i++ {
		rand.Read(rnd[:])
		step := uint64(rnd[0]) | uint64(rnd[1]&0x7)<<8 // 0..2047
		var seq uint64
		if rnd[2]&1 == 0 {
			seq = highest + step/8
		} else if highest > step {
			seq = highest - step
		}
		var want Reason
		switch {
		case first:
		case seq > highest:
		case highest-seq >= ReplayWindow:
			want = ReasonStale
		case seen[seq]:
			want = ReasonReplay
		}
		got, _ := g.check(k, seq, time.Unix(10, 0))
		if got != want {
			t.Fatalf("step %d seq %d highest %d: got %q, want %q", i, seq, highest, got, want)
		}
		if want == "" {
			seen[seq] = true
			if first || seq > highest {
				highest = seq
			}
			first = false
		}
	}
}

func TestReplayConcurrentDevices(t *testing.T) {
	g := newReplayGuard(DefaultMaxReplayDevices, time.Unix(0, 0))
	var accepted atomic.Int64
	var wg sync.WaitGroup
	const devices, perDevice, dup = 64, 200, 4
	for d := 0; d < devices; d++ {
		for c := 0; c < dup; c++ { // four goroutines race on each device's numbers
			wg.Add(1)
			go func() {
				defer wg.Done()
				k := deviceKey{"t", fmt.Sprintf("d%d", d)}
				for s := uint64(1); s <= perDevice; s++ {
					if r, _ := g.check(k, s, time.Unix(10, 0)); r == "" {
						accepted.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	if got := accepted.Load(); got != devices*perDevice {
		t.Fatalf("accepted %d messages, want each of %d exactly once", got, devices*perDevice)
	}
}

func TestReplayStateIsBounded(t *testing.T) {
	const limit = 256
	g := newReplayGuard(limit, time.Unix(0, 0))
	for i := 0; i < 20000; i++ {
		if r, _ := g.check(deviceKey{"t", fmt.Sprint(i)}, 1, time.Unix(int64(100+i), 0)); r != "" {
			t.Fatalf("device %d refused: %s", i, r)
		}
	}
	if n := g.size(); n > limit {
		t.Fatalf("%d devices tracked, limit %d", n, limit)
	}
	// Device 0 was evicted long ago; replaying its message must not pass.
	if r, _ := g.check(deviceKey{"t", "0"}, 1, time.Unix(100, 0)); r != ReasonStale {
		t.Fatalf("replay after eviction: got %q, want stale", r)
	}
	// A fresh message from it is fine.
	if r, _ := g.check(deviceKey{"t", "0"}, 2, time.Unix(100000, 0)); r != "" {
		t.Fatalf("fresh message after eviction refused: %s", r)
	}
}

func FuzzValidateAndRedact(f *testing.F) {
	f.Add([]byte(`{"a":[1,2,{"b":null}],"c":"d"}`))
	f.Add([]byte(`{"a":1,"a":2}`))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > wire.MaxEnvelopeSize {
			return
		}
		v, err := strictjson.Decode(b, maxJSONDepth)
		if err != nil {
			return
		}
		// Whatever decodes must validate and redact without panicking.
		s, _ := CompileSchema([]byte(envSchema))
		_ = s.validate(v)
		split(v, s.doc, Internal, "", func(string, any) {})
	})
}

var _ crypto.Signer = ed25519.PrivateKey(nil)

func TestReplayFloorOption(t *testing.T) {
	f := newFixture(t)
	f.v = NewVerifier(f.keys, f.reg, Options{Clock: f.clock.Now, ReplayFloor: f.clock.Now().Add(-time.Hour)})
	h := f.header()
	h.Time = h.Time.Add(-30 * time.Minute) // buffered across a restart
	if _, err := f.verify(f.sign(h, `{"temp":1}`)); err != nil {
		t.Fatalf("message after an explicit floor refused: %v", err)
	}
}

package agentcli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/wire"
)

func FuzzParseTokenFile(f *testing.F) {
	f.Add([]byte("a 1\n# c\n\nb 2\n"))
	f.Add([]byte("a\tb\r\nc d e\n"))
	f.Add([]byte(strings.Repeat("x", 70000) + " t\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := parseTokenFile(b)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, d := range ds {
			if wire.ValidateDeviceID(d.id) != nil || d.token == "" || seen[d.id] {
				t.Fatalf("accepted %+v", d)
			}
			seen[d.id] = true
		}
	})
}

func FuzzParseBootstrap(f *testing.F) {
	for _, s := range []string{"tpm", "x509:a.pem,b.pem", "symmetric:k", "token:wardgrp_x_y", "x509:,", "tpm:", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := parseBootstrap(s)
		if err != nil {
			return
		}
		switch b.kind {
		case "tpm":
			if len(b.args) != 0 {
				t.Fatalf("tpm with args %q", b.args)
			}
		case "x509":
			if len(b.args) != 2 || b.args[0] == "" || b.args[1] == "" {
				t.Fatalf("x509 args %q", b.args)
			}
		case "token", "symmetric":
			if len(b.args) != 1 || b.args[0] == "" {
				t.Fatalf("%s args %q", b.kind, b.args)
			}
		default:
			t.Fatalf("accepted kind %q", b.kind)
		}
	})
}

func FuzzParseCmdlineSlot(f *testing.F) {
	f.Add([]byte("root=/dev/sda1 ward.slot=b quiet\n"))
	f.Add([]byte(`ward.slot="a" ward.slot=`))
	f.Fuzz(func(t *testing.T, b []byte) {
		slot, err := parseCmdlineSlot(b)
		if err == nil && slot != "a" && slot != "b" {
			t.Fatalf("accepted slot %q", slot)
		}
	})
}

func FuzzParseOTAJob(f *testing.F) {
	f.Add([]byte(`{"rollout":"ro-1","release":"fw@1.1","health_window":2000000000}`))
	f.Add([]byte(`{"release":"fw@1.1","deadline":"2030-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := parseOTAJob(b)
		if err != nil {
			return
		}
		if j.Release == "" || len(j.Release) > maxReleaseLen || j.HealthWindow < 0 || j.HealthWindow > maxHealthWindow {
			t.Fatalf("accepted %+v", j)
		}
	})
}

// FuzzTwinMessages feeds twin messages to the twin file: whatever the
// server sends, the file holds a JSON object and no "firmware" section.
func FuzzTwinMessages(f *testing.F) {
	f.Add([]byte(`{"twin":"default","desired_version":1,"delta":{"a":{"b":null,"c":[1,2]}}}`), true)
	f.Add([]byte(`{"twin":"default","version":2,"desired":{"firmware":1,"x":1e400}}`), false)
	f.Fuzz(func(t *testing.T, b []byte, delta bool) {
		tf := &twinFile{path: filepath.Join(t.TempDir(), "d.json"), log: discardLogger()}
		var err error
		if delta {
			_, err = tf.onDelta(t.Context(), b)
		} else {
			_, err = tf.onDesired(t.Context(), b)
		}
		got, rerr := os.ReadFile(tf.path)
		if rerr != nil {
			return // nothing applied
		}
		doc, perr := parseObject(got)
		if perr != nil {
			t.Fatalf("file holds %q after %q (%v)", got, b, err)
		}
		if _, ok := doc[firmwareKey]; ok {
			t.Fatalf("firmware section written from %q", b)
		}
	})
}

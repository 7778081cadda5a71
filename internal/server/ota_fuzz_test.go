package server

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/wardiot/ward/wire"
)

func FuzzParseOTAStatus(f *testing.F) {
	b, _ := json.Marshal(wire.OTAStatus{Rollout: "r1", Release: "fw@1.1", Phase: wire.OTAPhaseCommitted, Floor: 2, FloorHead: "ab", Error: ""})
	f.Add(b)
	f.Add([]byte(`{"phase":"failed","error":"\xff\xfe"}`))
	f.Add([]byte(`{"phase":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseOTAStatus(b)
		if err != nil {
			return
		}
		if len(b) > maxOTAStatusSize || !otaPhases[st.Phase] {
			t.Fatalf("accepted %d bytes with phase %q", len(b), st.Phase)
		}
		for _, s := range []string{st.Rollout, st.Release, st.FloorHead, st.Error} {
			if !utf8.ValidString(s) || len(s) > maxOTAStatusText*3 {
				t.Fatalf("kept an invalid or oversized field (%d bytes)", len(s))
			}
		}
	})
}

package rollout

import (
	"strings"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml string
		want string // substring of the error; "" for success
	}{
		"ok":                    {baseSpec, ""},
		"fail/unknown-field":    {baseSpec + "stagez: []\n", "field stagez not found"},
		"fail/stages-not-grow":  {strings.Replace(baseSpec, "percent: 50", "percent: 5", 1), "must grow"},
		"fail/last-not-100":     {strings.Replace(baseSpec, "{percent: 100}", "{percent: 90}", 1), "100 percent"},
		"fail/canary-both":      {strings.Replace(baseSpec, "percent: 10,", "percent: 10, devices: [a],", 1), "not both"},
		"fail/no-timeout":       {strings.Replace(baseSpec, "timeout: 2h", "", 1), "timeout"},
		"fail/bad-outcome":      {baseSpec + "abort: [{on: [exploded], thresholdPercent: 5, action: pause}]\n", "unknown outcome"},
		"fail/bad-action":       {baseSpec + "abort: [{on: [failed], thresholdPercent: 5, action: panic}]\n", "pause or abort"},
		"fail/bad-window":       {baseSpec + "maintenance: {windows: [{start: \"25:00\", end: \"01:00\"}]}\n", "HH:MM"},
		"fail/bad-day":          {baseSpec + "maintenance: {windows: [{days: [funday], start: \"01:00\", end: \"02:00\"}]}\n", "unknown day"},
		"fail/bad-duration":     {strings.Replace(baseSpec, "soak: 1h", "soak: soon", 1), "soon"},
		"fail/ramp-without-max": {baseSpec + "rate: {initial: 2, factor: 2, every: 1m}\n", "ramp"},
		"fail/release-format":   {strings.Replace(baseSpec, "fw@1.1.0", "fw-1.1.0", 1), "release"},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := ParseSpec(strings.NewReader(tc.yaml))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s.Canary.Soak != time.Hour || len(s.Stages) != 2 {
					t.Fatalf("spec %+v", s)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := ParseSpec(strings.NewReader(strings.Repeat(" ", MaxSpecSize+1))); err == nil {
		t.Fatal("oversized spec accepted")
	}
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(baseSpec))
	f.Add([]byte(baseSpec + "maintenance: {windows: [{days: [sat], start: \"23:00\", end: \"01:00\"}]}\n"))
	f.Add([]byte("stages: [{percent: 100}]\nrate: {maxPerMinute: 1, initial: 1, factor: 1e308, every: 1ns}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSpec(strings.NewReader(string(b)))
		if err != nil {
			return
		}
		// A spec that parses must run without panicking.
		e, err := New(Config{ID: "f", Spec: s, Creator: "a", Fleet: fleet(5), Now: func() time.Time { return time.Unix(1e9, 0) }, LoadLocation: func(string) (*time.Location, error) { return time.UTC, nil }})
		if err != nil {
			return
		}
		e.Tick()
		e.Status()
	})
}

// Package rollout decides which device installs a release when: canary,
// then stages by percent, gated by failure thresholds, health reports,
// attestation of the new image and security signals, inside maintenance
// windows in each device's local time.
//
// The [Engine] is a pure state machine: it is driven by an injected clock
// and by events (device status reports, health gate results, operator
// commands) and returns [Action]s for the caller to carry out (assign a
// release in the Director, publish an OTA job, roll a device back). It
// performs no I/O, so every decision is table-testable; persistence goes
// through [Store] with [Engine.Snapshot] and [Restore].
package rollout

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// MaxSpecSize bounds a rollout spec document: a spec with an explicit
// device list of 10^4 IDs fits; anything larger is refused before parsing.
const MaxSpecSize = 1 << 20

// maxDevicesInSpec bounds explicit device lists (selector or canary).
const maxDevicesInSpec = 10_000

// Spec is an operator's rollout description (YAML).
type Spec struct {
	Release      string        `yaml:"release"` // "<name>@<version>"
	Target       string        `yaml:"target"`  // image target path to assign
	Selector     Selector      `yaml:"selector"`
	Canary       Canary        `yaml:"canary"`
	Stages       []Stage       `yaml:"stages"`
	Rate         Rate          `yaml:"rate"`
	Success      Success       `yaml:"success"`
	Abort        []Abort       `yaml:"abort"`
	Timeout      time.Duration `yaml:"timeout"` // per device, job start to verdict
	Retries      int           `yaml:"retries"` // extra attempts after "failed"
	Maintenance  *Maintenance  `yaml:"maintenance"`
	Approval     Approval      `yaml:"approval"`
	HealthWindow time.Duration `yaml:"healthWindow"` // sent to the device in the job
}

// Selector picks the fleet: every given criterion must hold.
type Selector struct {
	Tags     map[string]string `yaml:"tags"`
	Devices  []string          `yaml:"devices"`
	Hardware string            `yaml:"hardware"`
}

// Canary is the first phase: explicit devices or a percent of the fleet.
type Canary struct {
	Devices []string      `yaml:"devices"`
	Percent int           `yaml:"percent"`
	Soak    time.Duration `yaml:"soak"`
}

// Stage widens the rollout to Percent of the fleet (cumulative).
type Stage struct {
	Percent int           `yaml:"percent"`
	Soak    time.Duration `yaml:"soak"`
}

// Rate limits job starts: MaxPerMinute, reached by an exponential ramp
// starting at Initial and multiplied by Factor every Every.
type Rate struct {
	MaxPerMinute int           `yaml:"maxPerMinute"`
	Initial      int           `yaml:"initial"`
	Factor       float64       `yaml:"factor"`
	Every        time.Duration `yaml:"every"`
}

// Success is the share of a phase's devices that must succeed before the
// next phase starts. A finished phase below it pauses the rollout; an
// operator's resume accepts the phase as it is.
type Success struct {
	MinPercent int `yaml:"minPercent"`
}

// Abort stops or pauses the rollout when the outcomes listed in On reach
// ThresholdPercent of executed devices, once MinExecuted have finished.
type Abort struct {
	On               []string `yaml:"on"` // failed, rolled_back, timed_out
	ThresholdPercent int      `yaml:"thresholdPercent"`
	MinExecuted      int      `yaml:"minExecuted"`
	Action           string   `yaml:"action"` // pause or abort
}

// Maintenance restricts job starts to windows in device-local time.
type Maintenance struct {
	Windows []Window `yaml:"windows"`
	// ZoneTag is the device tag holding its IANA zone ("tz" by default);
	// DefaultZone applies to devices without it ("UTC" by default).
	ZoneTag     string `yaml:"zoneTag"`
	DefaultZone string `yaml:"defaultZone"`
}

// Window is a daily window "HH:MM"-"HH:MM" on the given weekdays (all if
// empty); End before Start crosses midnight and belongs to Start's day.
type Window struct {
	Days  []string `yaml:"days"`
	Start string   `yaml:"start"`
	End   string   `yaml:"end"`
}

// Approval requires a second operator, not the creator, to start it.
type Approval struct {
	Required bool `yaml:"required"`
}

// Outcomes a device can end in (abort criteria name them).
const (
	OutcomeFailed     = "failed"
	OutcomeRolledBack = "rolled_back"
	OutcomeTimedOut   = "timed_out"
)

// ParseSpec decodes a YAML spec strictly (unknown fields are errors) and
// validates it.
func ParseSpec(r io.Reader) (*Spec, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSpecSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSpecSize {
		return nil, fmt.Errorf("rollout: spec larger than %d bytes", MaxSpecSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("rollout: spec: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

func parseClock(s string) (int, error) {
	var h, m int
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("time %q is not HH:MM", s)
	}
	if _, err := fmt.Sscanf(s, "%02d:%02d", &h, &m); err != nil || h > 24 || m > 59 || (h == 24 && m != 0) {
		return 0, fmt.Errorf("time %q is not HH:MM", s)
	}
	return h*60 + m, nil
}

// Validate reports every problem in the spec at once.
func (s *Spec) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("rollout: "+format, a...)) }
	if s.Release == "" || strings.Count(s.Release, "@") != 1 {
		bad("release must be \"<name>@<version>\"")
	}
	if s.Target == "" {
		bad("target (the image target path) is required")
	}
	if len(s.Selector.Devices) > maxDevicesInSpec || len(s.Canary.Devices) > maxDevicesInSpec {
		bad("at most %d devices may be listed", maxDevicesInSpec)
	}
	if len(s.Canary.Devices) > 0 && s.Canary.Percent != 0 {
		bad("canary takes devices or percent, not both")
	}
	if s.Canary.Percent < 0 || s.Canary.Percent > 100 {
		bad("canary percent must be 0..100")
	}
	if s.Canary.Soak < 0 {
		bad("canary soak must not be negative")
	}
	last := s.Canary.Percent
	if len(s.Stages) == 0 {
		bad("at least one stage is required (the last one at 100 percent)")
	}
	for i, st := range s.Stages {
		if st.Percent <= last || st.Percent > 100 {
			bad("stage %d: percent %d must grow and stay within 1..100", i+1, st.Percent)
		}
		if st.Soak < 0 {
			bad("stage %d: soak must not be negative", i+1)
		}
		last = st.Percent
	}
	if len(s.Stages) > 0 && last != 100 {
		bad("the last stage must reach 100 percent")
	}
	if s.Rate.MaxPerMinute < 0 || s.Rate.Initial < 0 || s.Rate.Every < 0 {
		bad("rate values must not be negative")
	}
	if s.Rate.Initial > 0 && (s.Rate.Factor < 1 || s.Rate.Every == 0 || s.Rate.MaxPerMinute == 0) {
		bad("a rate ramp needs factor >= 1, every > 0 and maxPerMinute")
	}
	if s.Success.MinPercent < 0 || s.Success.MinPercent > 100 {
		bad("success minPercent must be 0..100")
	}
	for i, a := range s.Abort {
		if len(a.On) == 0 {
			bad("abort %d: on is required", i+1)
		}
		for _, o := range a.On {
			switch o {
			case OutcomeFailed, OutcomeRolledBack, OutcomeTimedOut:
			default:
				bad("abort %d: unknown outcome %q (failed, rolled_back, timed_out)", i+1, o)
			}
		}
		if a.ThresholdPercent < 1 || a.ThresholdPercent > 100 {
			bad("abort %d: thresholdPercent must be 1..100", i+1)
		}
		if a.MinExecuted < 0 {
			bad("abort %d: minExecuted must not be negative", i+1)
		}
		if a.Action != "pause" && a.Action != "abort" {
			bad("abort %d: action must be pause or abort", i+1)
		}
	}
	if s.Timeout <= 0 {
		bad("timeout (per device) is required")
	}
	if s.Retries < 0 || s.Retries > 10 {
		bad("retries must be 0..10")
	}
	if s.HealthWindow < 0 {
		bad("healthWindow must not be negative")
	}
	if m := s.Maintenance; m != nil {
		if len(m.Windows) == 0 {
			bad("maintenance needs at least one window")
		}
		for i, w := range m.Windows {
			a, err1 := parseClock(w.Start)
			b, err2 := parseClock(w.End)
			if err := errors.Join(err1, err2); err != nil {
				bad("window %d: %v", i+1, err)
			} else if a == b {
				bad("window %d: empty", i+1)
			}
			for _, d := range w.Days {
				if _, ok := weekdays[strings.ToLower(d)]; !ok {
					bad("window %d: unknown day %q (sun..sat)", i+1, d)
				}
			}
		}
		if m.DefaultZone != "" && strings.ContainsAny(m.DefaultZone, " \\") {
			bad("defaultZone %q is not an IANA zone name", m.DefaultZone)
		}
	}
	return errors.Join(errs...)
}

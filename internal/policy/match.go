package policy

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxTopicLen bounds every topic name and filter the policy engine accepts.
// Device topics are ward/v1/<device>/<subtree>/<stream>; 512 bytes leaves
// room for a 128-byte device ID and deep streams while keeping matching cost
// and per-subscription memory bounded.
const MaxTopicLen = 512

// MaxTopicLevels bounds the number of '/'-separated levels so that the
// level-by-level comparisons below stay cheap on hostile input.
const MaxTopicLevels = 32

// ErrInvalidTopic is wrapped by every topic and filter validation error.
var ErrInvalidTopic = errors.New("invalid topic")

// ValidateTopic reports whether name is a valid MQTT topic name that a
// client may publish to: no wildcards, no NUL, valid UTF-8, bounded size.
func ValidateTopic(name string) error {
	if err := validateCommon(name); err != nil {
		return err
	}
	if strings.ContainsAny(name, "+#") {
		return fmt.Errorf("%w: topic names may not contain wildcards", ErrInvalidTopic)
	}
	return nil
}

// ValidateFilter reports whether f is a valid MQTT topic filter: '#' only
// as the whole last level, '+' only as a whole level.
func ValidateFilter(f string) error {
	if err := validateCommon(f); err != nil {
		return err
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("%w: '#' must be the whole last level", ErrInvalidTopic)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("%w: '+' must be a whole level", ErrInvalidTopic)
		}
	}
	return nil
}

func validateCommon(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrInvalidTopic)
	}
	if len(s) > MaxTopicLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidTopic, MaxTopicLen)
	}
	if strings.Count(s, "/")+1 > MaxTopicLevels {
		return fmt.Errorf("%w: more than %d levels", ErrInvalidTopic, MaxTopicLevels)
	}
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return fmt.Errorf("%w: not valid UTF-8 or holds NUL", ErrInvalidTopic)
	}
	return nil
}

// Match reports whether topic name t is matched by filter f, with MQTT
// semantics: '+' matches one level, '#' matches the parent level and every
// level below it. Topics starting with '$' are never matched by a filter
// that starts with a wildcard [MQTT-4.7.2-1].
func Match(f, t string) bool {
	if strings.HasPrefix(t, "$") && (strings.HasPrefix(f, "+") || strings.HasPrefix(f, "#")) {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(f, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(t, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			return frest == "#"
		case !fmore:
			return false
		}
		f, t = frest, trest
	}
}

// Covers reports whether every topic that filter r can match is also matched
// by filter a. It is the test for "may a client subscribe to r when a is
// allowed": a wildcard in r must be met by an equal or wider wildcard in a.
func Covers(a, r string) bool {
	for {
		al, arest, amore := strings.Cut(a, "/")
		if al == "#" {
			return true
		}
		rl, rrest, rmore := strings.Cut(r, "/")
		switch {
		case rl == "#":
			return false // a's level is not '#', so it cannot cover every depth
		case al == "+":
			// covers any single level, literal or '+'
		case rl == "+" || al != rl:
			return false
		}
		switch {
		case !amore && !rmore:
			return true
		case !rmore:
			// r ends here; a must still match this exact topic: only "x/#".
			return arest == "#"
		case !amore:
			return false
		}
		a, r = arest, rrest
	}
}

// Overlaps reports whether some topic name is matched by both filters. A
// deny rule that overlaps a requested subscription refuses it, because the
// subscription could otherwise receive a denied topic.
func Overlaps(x, y string) bool {
	for {
		xl, xrest, xmore := strings.Cut(x, "/")
		yl, yrest, ymore := strings.Cut(y, "/")
		if xl == "#" || yl == "#" {
			return true
		}
		if xl != "+" && yl != "+" && xl != yl {
			return false
		}
		switch {
		case !xmore && !ymore:
			return true
		case !xmore:
			return yrest == "#"
		case !ymore:
			return xrest == "#"
		}
		x, y = xrest, yrest
	}
}

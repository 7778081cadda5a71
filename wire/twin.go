package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Twin messages travel as JSON on the device's twin topics
// (TopicTwinDesired, TopicTwinDelta, TopicTwinReported). Documents inside
// them are JSON objects; patches are JSON merge patches (RFC 7386), where
// null deletes a key.
const (
	// DefaultTwinName is the twin a device has without asking for more.
	DefaultTwinName = "default"
	// MaxTwinNameLen bounds twin names, which become database keys.
	MaxTwinNameLen = 64
	// MaxTwinMessageSize bounds a twin message on the wire: a 32 KiB
	// section plus envelope fields and JSON escaping headroom.
	MaxTwinMessageSize = 96 << 10
)

// TwinDesired is sent server -> device with the full desired section, on
// connect and after each change, so a device that missed messages can
// always converge (deletions included).
type TwinDesired struct {
	Twin    string          `json:"twin"`
	Version uint64          `json:"version"`
	Desired json.RawMessage `json:"desired"`
}

// TwinDelta is sent server -> device: the desired keys whose values differ
// from the reported ones, as a merge patch the device applies to its
// state. DesiredVersion lets the device drop a delta older than one it has
// already applied.
type TwinDelta struct {
	Twin            string          `json:"twin"`
	DesiredVersion  uint64          `json:"desired_version"`
	ReportedVersion uint64          `json:"reported_version"`
	Delta           json.RawMessage `json:"delta"`
}

// TwinReported is sent device -> server: a merge patch to the reported
// section. If IfMatch is set, the server applies it only when the reported
// section is at that version; otherwise it applies it unconditionally.
type TwinReported struct {
	Twin    string          `json:"twin"`
	IfMatch *uint64         `json:"if_match,omitempty"`
	Patch   json.RawMessage `json:"patch"`
}

// ValidateTwinName reports whether s is a valid twin name: 1 to 64
// lower-case letters, digits, '_' or '-', starting with a letter or digit.
func ValidateTwinName(s string) error {
	if len(s) == 0 || len(s) > MaxTwinNameLen {
		return fmt.Errorf("%w: twin name must be 1 to %d characters", ErrInvalidID, MaxTwinNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && (c == '_' || c == '-'))) {
			return fmt.Errorf("%w: twin name %q may hold only a-z, 0-9, '_' and '-'", ErrInvalidID, truncate(s))
		}
	}
	return nil
}

// ParseTwinReported decodes a device's reported-state message. It bounds
// the size and refuses unknown fields; the patch itself is checked by the
// server's twin service. An empty twin name means [DefaultTwinName].
func ParseTwinReported(b []byte) (*TwinReported, error) {
	if len(b) > MaxTwinMessageSize {
		return nil, fmt.Errorf("twin message is %d bytes, limit %d", len(b), MaxTwinMessageSize)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var m TwinReported
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("twin message: %w", err)
	}
	if d.More() {
		return nil, errors.New("twin message: data after the JSON object")
	}
	if m.Twin == "" {
		m.Twin = DefaultTwinName
	}
	if err := ValidateTwinName(m.Twin); err != nil {
		return nil, err
	}
	if p := bytes.TrimLeft(m.Patch, " \t\r\n"); len(p) == 0 || p[0] != '{' {
		return nil, errors.New("twin message: patch must be a JSON object")
	}
	return &m, nil
}

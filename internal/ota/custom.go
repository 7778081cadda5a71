package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
)

// maxCustomSize bounds a target's custom object: ours is a few hundred
// bytes; a larger one in metadata we parse is not ours.
const maxCustomSize = 4 << 10

// Custom is the custom object Ward puts on every target (wire.OTACustom*).
type Custom struct {
	HardwareID         string  `json:"hardwareId"`
	ReleaseCounter     uint64  `json:"releaseCounter"`
	SecurityVersion    uint64  `json:"securityVersion"`
	Release            string  `json:"release"`
	Kind               string  `json:"kind"`
	DeltaFrom          string  `json:"deltaFrom,omitempty"`
	DeltaTarget        string  `json:"deltaTarget,omitempty"`
	MinSecurityVersion *uint64 `json:"minSecurityVersion,omitempty"`
}

// Target kinds (wire.OTACustomKind).
const (
	KindImage     = "image"
	KindDelta     = "delta"
	KindManifest  = "manifest"
	KindSBOM      = "sbom"
	KindRefValues = "refvalues"
)

// nameRE constrains release names, versions and hardware IDs: they become
// target paths and file names.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)

func validName(what, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("ota: invalid %s %q (letters, digits, . _ + -, at most 64)", what, s)
	}
	return nil
}

// ParseCustom decodes and validates a target's custom object.
func ParseCustom(raw []byte) (Custom, error) {
	var c Custom
	if len(raw) == 0 {
		return c, errors.New("ota: target has no custom metadata")
	}
	if len(raw) > maxCustomSize {
		return c, errors.New("ota: target custom metadata too large")
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, fmt.Errorf("ota: target custom metadata: %w", err)
	}
	switch c.Kind {
	case KindImage, KindManifest, KindSBOM, KindRefValues:
	case KindDelta:
		if c.DeltaFrom == "" || c.DeltaTarget == "" {
			return c, errors.New("ota: delta target lacks deltaFrom/deltaTarget")
		}
	default:
		return c, fmt.Errorf("ota: unknown target kind %q", c.Kind)
	}
	if err := validName("hardware ID", c.HardwareID); err != nil {
		return c, err
	}
	if c.ReleaseCounter == 0 {
		return c, errors.New("ota: target has no release counter")
	}
	return c, nil
}

func (c Custom) raw() *json.RawMessage {
	b, _ := json.Marshal(c) // a struct of strings and ints cannot fail
	m := json.RawMessage(b)
	return &m
}

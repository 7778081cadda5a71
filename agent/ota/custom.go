package ota

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/wardiot/ward/wire"
)

// maxCustomSize bounds a target's custom object. It comes from signed
// metadata, but the Director's keys are online; a few named fields need
// far less.
const maxCustomSize = 4 << 10

// Target is one TUF target with Ward's custom fields, as the engine uses
// it.
type Target struct {
	Name   string
	Length int64
	// SHA256 is the target's SHA-256, hex.
	SHA256          string
	HardwareID      string
	ReleaseCounter  uint64
	SecurityVersion uint64
	Release         string
	Kind            string
	// DeltaFrom and DeltaTarget are set on deltas: the target the patch
	// applies to and the full image it reconstructs.
	DeltaFrom   string
	DeltaTarget string
	// MinSecurityVersion is set on Director targets.
	MinSecurityVersion uint64
}

// custom mirrors the fields of wire's custom keys.
type custom struct {
	HardwareID         string  `json:"hardwareId"`
	ReleaseCounter     *uint64 `json:"releaseCounter"`
	SecurityVersion    *uint64 `json:"securityVersion"`
	Release            string  `json:"release"`
	Kind               string  `json:"kind"`
	DeltaFrom          string  `json:"deltaFrom"`
	DeltaTarget        string  `json:"deltaTarget"`
	MinSecurityVersion *uint64 `json:"minSecurityVersion"`
}

// Compile-time check that the JSON names above are the contract's.
var _ = [...]string{wire.OTACustomHardwareID, wire.OTACustomReleaseCounter, wire.OTACustomSecurityVersion,
	wire.OTACustomRelease, wire.OTACustomKind, wire.OTACustomDeltaFrom, wire.OTACustomDeltaTarget,
	wire.OTACustomMinSecurityVersion}

// ParseCustom parses a target's custom object.
func ParseCustom(raw []byte) (*Target, error) {
	t := &Target{}
	if len(raw) == 0 {
		return t, nil
	}
	if len(raw) > maxCustomSize {
		return nil, errors.New("ota: target custom metadata too large")
	}
	var c custom
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("ota: target custom metadata: %w", err)
	}
	if dec.More() {
		return nil, errors.New("ota: target custom metadata: trailing data")
	}
	t.HardwareID, t.Release, t.Kind = c.HardwareID, c.Release, c.Kind
	t.DeltaFrom, t.DeltaTarget = c.DeltaFrom, c.DeltaTarget
	if c.ReleaseCounter != nil {
		t.ReleaseCounter = *c.ReleaseCounter
	}
	if c.SecurityVersion != nil {
		t.SecurityVersion = *c.SecurityVersion
	}
	if c.MinSecurityVersion != nil {
		t.MinSecurityVersion = *c.MinSecurityVersion
	}
	switch t.Kind {
	case "", "image", "delta", "manifest", "sbom", "refvalues":
	default:
		return nil, fmt.Errorf("ota: target custom metadata: unknown kind %q", t.Kind)
	}
	if (t.Kind == "delta") != (t.DeltaFrom != "" && t.DeltaTarget != "") {
		return nil, errors.New("ota: target custom metadata: a delta needs deltaFrom and deltaTarget, and only a delta has them")
	}
	return t, nil
}

// targetOf converts go-tuf's target, requiring a SHA-256.
func targetOf(name string, tf *metadata.TargetFiles) (*Target, error) {
	var raw []byte
	if tf.Custom != nil {
		raw = *tf.Custom
	}
	t, err := ParseCustom(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	h, ok := tf.Hashes["sha256"]
	if !ok || len(h) != 32 {
		return nil, fmt.Errorf("ota: target %s has no SHA-256", name)
	}
	if tf.Length <= 0 {
		return nil, fmt.Errorf("ota: target %s has no length", name)
	}
	t.Name, t.Length, t.SHA256 = name, tf.Length, hex.EncodeToString(h)
	return t, nil
}

// IsImage reports whether t is a full image to install.
func (t *Target) IsImage() bool { return t.Kind == "" || t.Kind == "image" }

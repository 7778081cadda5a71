package wire

import (
	"fmt"
	"strings"
)

// EST (RFC 7030) paths, relative to https://<server>/.well-known/est/<label>/.
const (
	ESTPrefix         = "/.well-known/est/"
	ESTCACerts        = "cacerts"
	ESTSimpleEnroll   = "simpleenroll"
	ESTSimpleReenroll = "simplereenroll"
	ESTCSRAttrs       = "csrattrs"
	ESTServerKeyGen   = "serverkeygen"
)

// ESTPath returns the path of an EST operation for a label.
func ESTPath(label, op string) string {
	return ESTPrefix + label + "/" + op
}

// MaxESTLabelLen bounds an EST label (RFC 7030 §3.2.2). A label names a
// tenant ("acme") or one of its enrollment groups ("acme.sensors"): two IDs
// of tenant-ID syntax joined by one '.'.
const MaxESTLabelLen = 2*MaxTenantIDLen + 1

// ValidateESTLabel reports whether s is a valid EST label: "<tenant>" or
// "<tenant>.<group>", each part 1 to 63 characters of lower-case letters,
// digits and '-', not starting with '-'. The narrow set keeps labels safe to
// use as path segments and keys; the single '.' cannot form "." or "..".
func ValidateESTLabel(s string) error {
	if len(s) == 0 || len(s) > MaxESTLabelLen {
		return fmt.Errorf("%w: EST label must be 1 to %d characters", ErrInvalidID, MaxESTLabelLen)
	}
	tenant, group, dotted := strings.Cut(s, ".")
	if !validLabelPart(tenant) || (dotted && !validLabelPart(group)) {
		return fmt.Errorf("%w: EST label %q must be <tenant> or <tenant>.<group>, each part a-z, 0-9 and '-' (not first)", ErrInvalidID, truncate(s))
	}
	return nil
}

// SplitESTLabel splits a valid label into its tenant and group parts;
// group is "" for a tenant-only label.
func SplitESTLabel(s string) (tenant, group string, err error) {
	if err := ValidateESTLabel(s); err != nil {
		return "", "", err
	}
	tenant, group, _ = strings.Cut(s, ".")
	return tenant, group, nil
}

func validLabelPart(s string) bool {
	if len(s) == 0 || len(s) > MaxTenantIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0)
		if !ok {
			return false
		}
	}
	return true
}

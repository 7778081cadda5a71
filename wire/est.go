package wire

import "fmt"

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

// MaxESTLabelLen bounds an EST label (RFC 7030 §3.2.2). Labels name a
// tenant or one of its enrollment groups and share the tenant ID syntax.
const MaxESTLabelLen = MaxTenantIDLen

// ValidateESTLabel reports whether s is a valid EST label: 1 to 63
// characters of lower-case letters, digits and '-', not starting with '-'.
// The narrow set keeps labels safe to use as path segments and keys.
func ValidateESTLabel(s string) error {
	if len(s) == 0 || len(s) > MaxESTLabelLen {
		return fmt.Errorf("%w: EST label must be 1 to %d characters", ErrInvalidID, MaxESTLabelLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0)
		if !ok {
			return fmt.Errorf("%w: EST label %q may hold only a-z, 0-9 and '-' (not first)", ErrInvalidID, truncate(s))
		}
	}
	return nil
}

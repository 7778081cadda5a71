package wire

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateESTLabel(t *testing.T) {
	for _, ok := range []string{"a", "acme", "acme-sensors", "t0", "acme.sensors", "a.b", strings.Repeat("a", MaxTenantIDLen) + "." + strings.Repeat("b", MaxTenantIDLen)} {
		if err := ValidateESTLabel(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "A", "a/b", "..", ".", "a.", ".a", "a..b", "a.b.c", "a.-b", "a.B", strings.Repeat("a", MaxTenantIDLen+1) + ".b", "a b", "%2e", "cacerts/x"} {
		if err := ValidateESTLabel(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("%q: got %v, want ErrInvalidID", bad, err)
		}
	}
}

package wire

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateESTLabel(t *testing.T) {
	for _, ok := range []string{"a", "acme", "acme-sensors", "t0", strings.Repeat("a", MaxESTLabelLen)} {
		if err := ValidateESTLabel(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "A", "a/b", "a.b", "..", "a b", "%2e", strings.Repeat("a", MaxESTLabelLen+1), "cacerts/x"} {
		if err := ValidateESTLabel(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("%q: got %v, want ErrInvalidID", bad, err)
		}
	}
}

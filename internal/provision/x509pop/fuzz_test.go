package x509pop

import (
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/wire"
)

func FuzzDeviceIDRule(f *testing.F) {
	f.Add("urn:maker:sn:SN0042", "urn:maker:sn:")
	f.Add("dev-1", "")
	f.Add("dev/../x", "dev")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, value, prefix string) {
		id, err := applyRule(value, provision.IDRule{From: FromCN, StripPrefix: prefix})
		if err != nil {
			return
		}
		if wire.ValidateDeviceID(id) != nil {
			t.Fatalf("rule produced invalid device ID %q", id)
		}
		if prefix != "" && value != prefix+id {
			t.Fatalf("%q with prefix %q gave %q", value, prefix, id)
		}
		if prefix == "" && id != value {
			t.Fatalf("no prefix, %q became %q", value, id)
		}
		if strings.ContainsAny(id, "/+#:$ ") {
			t.Fatalf("metacharacter in %q", id)
		}
	})
}

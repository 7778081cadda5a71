package wire

import (
	"errors"
	"testing"
)

func TestParseDeviceClientID(t *testing.T) {
	tn, dv, err := ParseDeviceClientID(DeviceClientID("acme", "sensor-1"))
	if err != nil || tn != "acme" || dv != "sensor-1" {
		t.Fatalf("round trip: %q %q %v", tn, dv, err)
	}
	for _, s := range []string{"", "acme", "acme/", "/dev", "acme/a/b", "ACME/dev", "acme/dev:1"} {
		if _, _, err := ParseDeviceClientID(s); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ParseDeviceClientID(%q) = %v, want ErrInvalidID", s, err)
		}
	}
}

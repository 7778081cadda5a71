package broker

import (
	"strings"
	"testing"

	"github.com/wardiot/ward/wire"
)

// FuzzServiceURI checks the service URI parser on hostile SAN strings: it
// never panics and accepts only what ServiceURI produces from valid IDs.
func FuzzServiceURI(f *testing.F) {
	f.Add("urn:ward:acme:service:analytics")
	f.Add("urn:ward:acme:device:d1")
	f.Add("urn:ward::service:")
	f.Add("urn:ward:acme:service:a/b")
	f.Fuzz(func(t *testing.T, uri string) {
		tenant, name, err := parseServiceURI(uri)
		if err != nil {
			return
		}
		if wire.ValidateTenantID(tenant) != nil || wire.ValidateDeviceID(name) != nil {
			t.Fatalf("accepted invalid IDs %q %q", tenant, name)
		}
		if ServiceURI(tenant, name) != uri {
			t.Fatalf("round trip of %q gave %q", uri, ServiceURI(tenant, name))
		}
		if strings.ContainsAny(name, "/+#$") {
			t.Fatalf("service name %q holds topic metacharacters", name)
		}
	})
}

package policy

import (
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"version":1,"publish":{"allow":["ward/v1/${device}/telemetry/#"]},"subscribe":{"allow":["ward/v1/${device}/#"],"deny":["x/+"]}}`))
	f.Add([]byte(`{"version":1,"subscribe":{"allow":["${tenant}/${service}/#"]}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		b, err := p.Bind(Vars{Tenant: "acme", Device: "d1", Service: "s1"})
		if err != nil {
			t.Fatalf("a parsed policy failed to bind with full vars: %v", err)
		}
		for _, list := range [][]string{b.pubAllow, b.pubDeny, b.subAllow, b.subDeny} {
			for _, x := range list {
				if ValidateFilter(x) != nil || strings.Contains(x, "${") || strings.HasPrefix(x, "$") {
					t.Fatalf("bound filter %q is invalid", x)
				}
			}
		}
	})
}

func FuzzExpand(f *testing.F) {
	f.Add("ward/v1/${device}/#", "acme", "d1")
	f.Add("${tenant}/${device}", "a", "b")
	f.Add("x/${device}x", "a", "b")
	f.Fuzz(func(t *testing.T, tmpl, tenant, device string) {
		x, err := Expand(tmpl, Vars{Tenant: tenant, Device: device, Service: "svc"})
		if err != nil {
			return
		}
		if ValidateFilter(x) != nil {
			t.Fatalf("Expand(%q) = %q, an invalid filter", tmpl, x)
		}
		// A substitution never adds levels or wildcards.
		if strings.Count(x, "/") != strings.Count(tmpl, "/") ||
			strings.Count(x, "+") != strings.Count(tmpl, "+") ||
			strings.Count(x, "#") != strings.Count(tmpl, "#") {
			t.Fatalf("Expand(%q) = %q changed the filter's shape", tmpl, x)
		}
	})
}

// FuzzFilterMatching checks Covers and Overlaps against Match on concrete
// topics: if a covers r, every topic r matches must be matched by a; if x
// and y both match a topic, they must overlap.
func FuzzFilterMatching(f *testing.F) {
	f.Add("ward/v1/d1/#", "ward/v1/+/x", "ward/v1/d1/x")
	f.Add("a/+", "a/#", "a/b/c")
	f.Add("#", "+", "a")
	f.Fuzz(func(t *testing.T, a, r, topic string) {
		if ValidateFilter(a) != nil || ValidateFilter(r) != nil || ValidateTopic(topic) != nil {
			return
		}
		if strings.HasPrefix(topic, "$") {
			return
		}
		if Covers(a, r) && Match(r, topic) && !Match(a, topic) {
			t.Fatalf("Covers(%q, %q) but %q matches only the request", a, r, topic)
		}
		if Match(a, topic) && Match(r, topic) && !Overlaps(a, r) {
			t.Fatalf("%q and %q both match %q but Overlaps is false", a, r, topic)
		}
		// Every topic is a filter covering itself and only itself.
		if Covers(topic, r) && !strings.ContainsAny(r, "+#") && r != topic {
			t.Fatalf("topic %q covers a different topic %q", topic, r)
		}
	})
}

package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		f, t string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "a/b", true},
		{"+/+", "a/b", true},
		{"+", "/", false},
		{"+/+", "/", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/b/c", "a/b", false},
	}
	for _, tt := range tests {
		if got := Match(tt.f, tt.t); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.f, tt.t, got, tt.want)
		}
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		a, r string
		want bool
	}{
		{"ward/v1/d1/#", "ward/v1/d1/#", true},
		{"ward/v1/d1/#", "ward/v1/d1/twin/+", true},
		{"ward/v1/d1/#", "ward/v1/d1", true},
		{"ward/v1/d1/#", "ward/v1/+/#", false},
		{"ward/v1/d1/#", "ward/v1/#", false},
		{"ward/v1/d1/#", "#", false},
		{"ward/v1/d1/#", "+/v1/d1/x", false},
		{"ward/v1/+/telemetry/#", "ward/v1/+/telemetry/#", true},
		{"ward/v1/+/telemetry/#", "ward/v1/d9/telemetry/temp", true},
		{"ward/v1/+/telemetry/#", "ward/v1/+/twin/#", false},
		{"ward/v1/+/telemetry/#", "ward/v1/+/+/#", false},
		{"a/+", "a/#", false},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/b", "a/+", false},
		{"#", "#", true},
		{"+", "+", true},
		{"+", "#", false},
	}
	for _, tt := range tests {
		if got := Covers(tt.a, tt.r); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.a, tt.r, got, tt.want)
		}
	}
}

func TestOverlaps(t *testing.T) {
	tests := []struct {
		x, y string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "+/b", true},
		{"a/#", "a", true},
		{"a", "a/#", true},
		{"a/b/c", "a/+", false},
		{"a/b/c", "a/#", true},
		{"x/#", "y/#", false},
		{"#", "q", true},
	}
	for _, tt := range tests {
		if got := Overlaps(tt.x, tt.y); got != tt.want {
			t.Errorf("Overlaps(%q, %q) = %v, want %v", tt.x, tt.y, got, tt.want)
		}
		if got := Overlaps(tt.y, tt.x); got != tt.want {
			t.Errorf("Overlaps(%q, %q) = %v, want %v (symmetry)", tt.y, tt.x, got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := map[string]struct {
		doc     string
		wantErr bool
	}{
		"ok":                     {doc: `{"version":1,"publish":{"allow":["ward/v1/${device}/telemetry/#"]},"subscribe":{"allow":["ward/v1/${device}/#"],"deny":["ward/v1/${device}/control"]}}`},
		"ok/tenant-var":          {doc: `{"version":1,"subscribe":{"allow":["fleet/${tenant}/+"]}}`},
		"fail/version":           {doc: `{"version":2}`, wantErr: true},
		"fail/unknown-field":     {doc: `{"version":1,"pub":{}}`, wantErr: true},
		"fail/unknown-var":       {doc: `{"version":1,"publish":{"allow":["ward/${owner}/x"]}}`, wantErr: true},
		"fail/partial-level-var": {doc: `{"version":1,"publish":{"allow":["ward/x${device}/x"]}}`, wantErr: true},
		"fail/sys":               {doc: `{"version":1,"subscribe":{"allow":["$SYS/#"]}}`, wantErr: true},
		"fail/share":             {doc: `{"version":1,"subscribe":{"allow":["$share/g/#"]}}`, wantErr: true},
		"fail/bad-wildcard":      {doc: `{"version":1,"subscribe":{"allow":["a/#/b"]}}`, wantErr: true},
		"fail/plus-in-level":     {doc: `{"version":1,"subscribe":{"allow":["a/b+"]}}`, wantErr: true},
		"fail/trailing":          {doc: `{"version":1} {}`, wantErr: true},
		"fail/empty-filter":      {doc: `{"version":1,"publish":{"allow":[""]}}`, wantErr: true},
		"fail/too-large":         {doc: `{"version":1,"publish":{"allow":["` + strings.Repeat("a", MaxDocumentSize) + `"]}}`, wantErr: true},
		"fail/not-json":          {doc: `version: 1`, wantErr: true},
		"fail/nul":               {doc: `{"version":1,"publish":{"allow":["a\u0000b"]}}`, wantErr: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse error = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("error %v does not wrap ErrInvalidPolicy", err)
			}
		})
	}
}

func TestDefaultPolicy(t *testing.T) {
	b, err := Default().Bind(Vars{Tenant: "acme", Device: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	pub := map[string]bool{
		"ward/v1/d1/telemetry/temp": true,
		"ward/v1/d1/twin/reported":  true,
		"ward/v1/d1/attest/reply":   true,
		"ward/v1/d1/ota/status":     true,
		"ward/v1/d1/twin/desired":   false,
		"ward/v1/d2/telemetry/temp": false,
		"ward/v1/d1/telemetry/+":    false,
		"$SYS/broker":               false,
		"":                          false,
	}
	for topic, want := range pub {
		if got := b.CanPublish(topic); got != want {
			t.Errorf("CanPublish(%q) = %v, want %v", topic, got, want)
		}
	}
	sub := map[string]bool{
		"ward/v1/d1/#":          true,
		"ward/v1/d1/twin/delta": true,
		"ward/v1/d1/+/+":        true,
		"ward/v1/+/#":           false,
		"ward/v1/#":             false,
		"#":                     false,
		"+/+/d1/#":              false,
		"$SYS/#":                false,
		"$share/g/ward/v1/d1/#": false,
		"ward/v1/d2/#":          false,
	}
	for f, want := range sub {
		if got := b.CanSubscribe(f); got != want {
			t.Errorf("CanSubscribe(%q) = %v, want %v", f, got, want)
		}
	}
}

func TestDenyWins(t *testing.T) {
	p, err := Parse([]byte(`{"version":1,
		"publish":{"allow":["ward/v1/${device}/#"],"deny":["ward/v1/${device}/control"]},
		"subscribe":{"allow":["ward/v1/${device}/#"],"deny":["ward/v1/${device}/secret/+"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Bind(Vars{Tenant: "acme", Device: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if b.CanPublish("ward/v1/d1/control") {
		t.Error("deny rule lost to allow on publish")
	}
	if !b.CanPublish("ward/v1/d1/telemetry/x") {
		t.Error("allowed publish refused")
	}
	for _, f := range []string{"ward/v1/d1/#", "ward/v1/d1/+/x", "ward/v1/d1/secret/k"} {
		if b.CanSubscribe(f) {
			t.Errorf("CanSubscribe(%q) allowed although it can receive a denied topic", f)
		}
	}
	if !b.CanSubscribe("ward/v1/d1/twin/#") {
		t.Error("subscription disjoint from the deny rule refused")
	}
}

func TestQuarantinePolicy(t *testing.T) {
	b, err := Quarantine().Bind(Vars{Tenant: "acme", Device: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if b.CanPublish("ward/v1/d1/telemetry/x") || b.CanSubscribe("ward/v1/d1/#") || b.CanSubscribe("ward/v1/d1/twin/delta") {
		t.Error("quarantine policy lets telemetry or twin traffic through")
	}
	if !b.CanPublish("ward/v1/d1/attest/reply") || !b.CanSubscribe("ward/v1/d1/attest/request") || !b.CanSubscribe("ward/v1/d1/ota/#") {
		t.Error("quarantine policy blocks attestation or OTA")
	}
}

func TestServicePolicyIsReadOnly(t *testing.T) {
	b, err := ServiceReadOnly().Bind(Vars{Tenant: "acme", Service: "analytics"})
	if err != nil {
		t.Fatal(err)
	}
	if b.CanPublish("ward/v1/d1/telemetry/x") {
		t.Error("service may publish")
	}
	if !b.CanSubscribe("ward/v1/+/telemetry/#") || b.CanSubscribe("ward/v1/+/#") {
		t.Error("service subscription scope wrong")
	}
}

func TestBindRefusesBadValues(t *testing.T) {
	for _, dev := range []string{"a/b", "+", "#", "$x", ""} {
		b, err := Default().Bind(Vars{Tenant: "acme", Device: dev})
		if err == nil && b.CanSubscribe("ward/v1/"+dev+"/#") && dev != "" {
			t.Errorf("device %q widened the policy", dev)
		}
	}
	p, err := Parse([]byte(`{"version":1,"publish":{"deny":["ward/${service}/x"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Bind(Vars{Tenant: "acme", Device: "d1"}); err == nil {
		t.Error("deny rule with an unbound variable silently dropped")
	}
}

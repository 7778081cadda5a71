package provision_test

import (
	"testing"

	"github.com/wardiot/ward/internal/provision"
)

func FuzzParseWebhookResponse(f *testing.F) {
	for _, s := range []string{`{"allow":true}`, `{"allow":false,"reason":"no"}`,
		`{"allow":true,"template":{"profile":"p","lifetime_seconds":60,"tags":{"a":"b"},"twin":{"x":1},"policy":"q"}}`,
		`{"allow":true,"template":{"lifetime_seconds":-1}}`, `{"allow":true} {}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := provision.ParseWebhookResponse(b)
		if err != nil {
			return
		}
		if r.Allow == nil {
			t.Fatal("accepted an answer without allow")
		}
		if r.Template != nil {
			var tm provision.Template
			if err := r.Template.Apply(&tm); err != nil {
				t.Fatalf("accepted template fails to apply: %v", err)
			}
			if err := tm.Validate(); err != nil {
				t.Fatalf("accepted invalid template: %v", err)
			}
		}
	})
}

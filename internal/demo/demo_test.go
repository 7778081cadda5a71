package demo_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/wardiot/ward/agent/keystore/swtpm"
	"github.com/wardiot/ward/internal/demo"
)

// TestDemo runs `ward demo` in-process: it must succeed, and say what it
// proved. With swtpm installed (mandatory in CI) that includes the
// tampered kernel caught, quarantined and refused renewal; without, the
// attestation step says it was skipped.
func TestDemo(t *testing.T) {
	missing := swtpm.Missing()
	if len(missing) > 0 && os.Getenv("CI") != "" {
		t.Fatalf("%v not found: the demo's attestation step is mandatory because CI is set", missing)
	}
	var out bytes.Buffer
	if err := demo.Run(context.Background(), &out, demo.Options{}); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	want := []string{"403", "401", "chain intact", "Demo complete",
		"downloaded the", "canary: 2 devices, 2 succeeded", "→ rollout completed",
		"firmware self-test failed", "paused by itself", "2 rolled back", "never received a job for fw@1.2"}
	if len(missing) == 0 {
		want = append(want, "gw-good → pass", "gw-tampered → fail", `state "quarantined"`,
			"simplereenroll → 403", "attestation.failed, attestation.renewal_refused")
	} else {
		want = append(want, "Remote attestation: SKIPPED")
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("demo output lacks %q\n%s", w, out.String())
		}
	}
}

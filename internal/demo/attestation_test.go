package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestAttestationSkippedWithoutSwtpm: with no swtpm on PATH the demo
// makes no TPMs, sets no EK roots, and the attestation step says it was
// skipped and why, without failing the demo.
func TestAttestationSkippedWithoutSwtpm(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	lab, err := prepareTPMs(t.TempDir())
	if err != nil {
		t.Fatalf("prepareTPMs without swtpm: %v", err)
	}
	defer lab.close()
	if lab.good != nil || lab.bad != nil || lab.rootsFile != "" {
		t.Fatalf("TPMs made without swtpm: %+v", lab)
	}
	var out bytes.Buffer
	r := &run{out: &out}
	if err := r.attestation(context.Background(), nil, nil, "", nil, lab); err != nil {
		t.Fatalf("a skipped attestation step failed the demo: %v", err)
	}
	for _, want := range []string{"Remote attestation: SKIPPED", "swtpm, swtpm_setup, swtpm_localca not installed", "swtpm-tools"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

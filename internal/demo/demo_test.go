package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/wardiot/ward/internal/demo"
)

// TestDemo runs `ward demo` in-process: it must succeed, and say what it
// proved.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if err := demo.Run(context.Background(), &out, demo.Options{}); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{"403", "401", "chain intact", "Demo complete"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}

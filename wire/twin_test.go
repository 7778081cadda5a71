package wire

import (
	"strings"
	"testing"
)

func TestParseTwinReported(t *testing.T) {
	m, err := ParseTwinReported([]byte(`{"patch":{"fw":"1.2"},"if_match":3}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Twin != DefaultTwinName || *m.IfMatch != 3 || string(m.Patch) != `{"fw":"1.2"}` {
		t.Fatalf("got %+v", m)
	}
	for name, in := range map[string]string{
		"fail/unknown-field": `{"patch":{},"x":1}`,
		"fail/patch-array":   `{"patch":[1]}`,
		"fail/no-patch":      `{"twin":"a"}`,
		"fail/bad-name":      `{"twin":"A/B","patch":{}}`,
		"fail/trailing":      `{"patch":{}} {}`,
		"fail/too-large":     `{"patch":{"a":"` + strings.Repeat("x", MaxTwinMessageSize) + `"}}`,
	} {
		if _, err := ParseTwinReported([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseTwinReported(f *testing.F) {
	f.Add([]byte(`{"twin":"default","patch":{"a":null},"if_match":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseTwinReported(b)
		if err == nil && ValidateTwinName(m.Twin) != nil {
			t.Fatal("invalid twin name accepted")
		}
	})
}

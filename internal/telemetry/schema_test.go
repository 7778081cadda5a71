package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func mustCompile(t *testing.T, doc string) *Schema {
	t.Helper()
	s, err := CompileSchema([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const baseSchema = `{"type":"object","properties":{
  "temp":{"type":"number"},
  "mode":{"type":"string","enum":["a","b"]},
  "tags":{"type":"array","items":{"type":"string"}},
  "loc":{"type":"object","x-ward-classification":"internal","properties":{"lat":{"type":"number"}}}
 },"required":["temp"]}`

func TestCheckCompatible(t *testing.T) {
	// Each case edits baseSchema by replacing one fragment.
	tests := map[string]struct {
		from, to string
		ok       bool
		msg      string
	}{
		"ok/identical":              {"", "", true, ""},
		"ok/add-optional-property":  {`"temp":{"type":"number"}`, `"temp":{"type":"number"},"hum":{"type":"number"}`, true, ""},
		"ok/widen-enum":             {`["a","b"]`, `["a","b","c"]`, true, ""},
		"ok/drop-enum":              {`,"enum":["a","b"]`, ``, true, ""},
		"ok/raise-classification":   {`"internal"`, `"confidential"`, true, ""},
		"ok/annotation-changed":     {`"temp":{"type":"number"}`, `"temp":{"type":"number","description":"deg C"}`, true, ""},
		"fail/remove-property":      {`"temp":{"type":"number"},`, ``, false, `property "temp" removed`},
		"fail/change-type":          {`"temp":{"type":"number"}`, `"temp":{"type":"string"}`, false, "type changed"},
		"fail/widen-type":           {`"temp":{"type":"number"}`, `"temp":{"type":["number","string"]}`, false, "type changed"},
		"fail/add-required":         {`"required":["temp"]`, `"required":["temp","mode"]`, false, `"mode" became required`},
		"ok/add-untyped-optional":   {`"temp":{"type":"number"}`, `"temp":{"type":"number"},"x":{}`, true, ""},
		"fail/drop-required":        {`"required":["temp"]`, `"required":[]`, false, "no longer required"},
		"fail/tighten-enum":         {`["a","b"]`, `["a"]`, false, `enum value "b" removed`},
		"fail/add-enum":             {`"temp":{"type":"number"}`, `"temp":{"type":"number","enum":[1]}`, false, "enum added"},
		"fail/nested-type":          {`"lat":{"type":"number"}`, `"lat":{"type":"string"}`, false, "#/properties/loc/properties/lat"},
		"fail/items-type":           {`"items":{"type":"string"}`, `"items":{"type":"number"}`, false, "#/properties/tags/items"},
		"fail/constraint-changed":   {`"temp":{"type":"number"}`, `"temp":{"type":"number","maximum":100}`, false, "maximum changed"},
		"fail/close-additional":     {`"required":["temp"]`, `"required":["temp"],"additionalProperties":false`, false, "additionalProperties"},
		"fail/lower-classification": {`"internal"`, `"public"`, false, "classification lowered"},
	}
	old := mustCompile(t, baseSchema)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			doc := baseSchema
			if tc.from != "" {
				if !strings.Contains(doc, tc.from) {
					t.Fatalf("fragment %q not in base schema", tc.from)
				}
				doc = strings.Replace(doc, tc.from, tc.to, 1)
			}
			err := CheckCompatible(old, mustCompile(t, doc))
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want ErrIncompatible mentioning %q", err, tc.msg)
			}
		})
	}
}

func TestCompileSchemaRefusesUnsupported(t *testing.T) {
	for name, doc := range map[string]string{
		"allOf":            `{"allOf":[{"type":"object"}]}`,
		"ref":              `{"$ref":"https://example.com/x.json"}`,
		"nested-oneOf":     `{"properties":{"a":{"oneOf":[{"type":"string"}]}}}`,
		"schema-draft7":    `{"$schema":"http://json-schema.org/draft-07/schema#"}`,
		"bad-class":        `{"x-ward-classification":"secret"}`,
		"public-in-secret": `{"x-ward-classification":"confidential","properties":{"a":{"x-ward-classification":"public"}}}`,
		"additional-obj":   `{"additionalProperties":{"type":"string"}}`,
		"not-object":       `[1]`,
		"duplicate-key":    `{"type":"object","type":"string"}`,
		"too-large":        `{"description":"` + strings.Repeat("x", MaxSchemaSize) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := CompileSchema([]byte(doc)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestRegistryVersions(t *testing.T) {
	r := NewRegistry()
	if _, err := r.Register("acme", "env", 2, []byte(baseSchema)); err == nil || !strings.Contains(err.Error(), "register version 1 first") {
		t.Fatalf("v2 before v1: %v", err)
	}
	if _, err := r.Register("acme", "env", 1, []byte(baseSchema)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register("acme", "env", 1, []byte(baseSchema)); err != nil {
		t.Fatalf("idempotent re-register: %v", err)
	}
	if _, err := r.Register("acme", "env", 1, []byte(`{"type":"object"}`)); err == nil {
		t.Fatal("replaced a registered version")
	}
	bad := strings.Replace(baseSchema, `"temp":{"type":"number"},`, ``, 1)
	if _, err := r.Register("acme", "env", 2, []byte(bad)); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("incompatible v2: %v", err)
	}
	good := strings.Replace(baseSchema, `"temp":{"type":"number"}`, `"temp":{"type":"number"},"hum":{"type":"number"}`, 1)
	if _, err := r.Register("acme", "env", 2, []byte(good)); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Lookup("acme", "env", 2); !ok {
		t.Fatal("v2 not found")
	}
	if _, ok := r.Lookup("other", "env", 1); ok {
		t.Fatal("schema leaked across tenants")
	}
}

// fakeSealer "seals" by prefixing, recording the aad, so tests can open it.
type fakeSealer struct{ aad []byte }

func (f *fakeSealer) Seal(p, aad []byte) ([]byte, error) {
	f.aad = aad
	return append([]byte("sealed:"), p...), nil
}

func TestSplitAndRedact(t *testing.T) {
	s := mustCompile(t, `{"type":"object","properties":{
	  "temp":{"type":"number","x-ward-classification":"public"},
	  "owner":{"type":"object","x-ward-classification":"confidential"},
	  "readings":{"type":"array","items":{"type":"object","properties":{
	     "v":{"type":"number"},"who":{"type":"string","x-ward-classification":"confidential"}}}},
	  "a/b":{"type":"string","x-ward-classification":"confidential"}
	}}`)
	payload := []byte(`{"temp":3,"owner":{"name":"alice"},"readings":[{"v":1,"who":"bob"},{"v":2}],"a/b":"x","extra":true}`)
	sealer := &fakeSealer{}
	pub, sealed, err := s.Split(payload, sealer, []byte("acme/dev-1/7"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(pub), `{"extra":true,"readings":[{"v":1},{"v":2}],"temp":3}`; got != want {
		t.Fatalf("public part %s, want %s", got, want)
	}
	if string(sealer.aad) != "acme/dev-1/7" {
		t.Fatal("aad not passed to the sealer")
	}
	var fields []SealedField
	if err := json.Unmarshal(bytes.TrimPrefix(sealed, []byte("sealed:")), &fields); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(fields)
	want := `[{"p":"/a~1b","v":"x"},{"p":"/owner","v":{"name":"alice"}},{"p":"/readings/0/who","v":"bob"}]`
	if string(got) != want {
		t.Fatalf("sealed fields %s, want %s", got, want)
	}
	for _, secret := range []string{"alice", "bob", `"x"`} {
		if bytes.Contains(pub, []byte(secret)) {
			t.Fatalf("public part holds %s", secret)
		}
	}
	// No confidential field: nothing sealed, payload unchanged.
	plain := mustCompile(t, `{"type":"object"}`)
	pub, sealed, err = plain.Split([]byte(`{"a":1}`), sealer, nil)
	if err != nil || sealed != nil || string(pub) != `{"a":1}` {
		t.Fatalf("plain split: %s %v %v", pub, sealed, err)
	}
}

func TestMessageWithoutSchemaRevealsNothing(t *testing.T) {
	m := &Message{Payload: json.RawMessage(`{"owner":"alice"}`)}
	if got := string(m.Redacted()); got != "null" {
		t.Fatalf("Redacted() = %s", got)
	}
	if _, _, err := m.SplitConfidential(&fakeSealer{}, nil); err == nil {
		t.Fatal("split without schema succeeded")
	}
}

func TestMessageSplitConfidential(t *testing.T) {
	f := newFixture(t)
	m, err := f.verify(f.sign(f.header(), `{"temp":3,"owner":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	pub, sealed, err := m.SplitConfidential(&fakeSealer{}, []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if string(pub) != `{"temp":3}` || string(sealed) != `sealed:[{"p":"/owner","v":"alice"}]` {
		t.Fatalf("split %s / %s", pub, sealed)
	}
}

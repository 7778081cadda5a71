package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/wardiot/ward/internal/strictjson"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/wardiot/ward/wire"
)

// Limits on schemas. Operators register them, but through an API that a
// stolen token could drive, so they are bounded like any input.
const (
	// MaxSchemaSize bounds one schema document.
	MaxSchemaSize = 64 << 10
	// MaxSchemasPerTenant bounds registry memory per tenant.
	MaxSchemasPerTenant = 4096
	// maxJSONDepth bounds nesting in payloads and schemas: deep documents
	// cost stack and time in every consumer, and telemetry is flat in
	// practice.
	maxJSONDepth = 32
)

// Classification of a payload field, set with the schema keyword
// "x-ward-classification". Fields without one inherit their parent's; the
// payload root defaults to internal.
type Classification int

// Classifications, in increasing order of sensitivity.
const (
	Public Classification = iota
	Internal
	Confidential
)

const classificationKeyword = "x-ward-classification"

// String returns the keyword value: public, internal or confidential.
func (c Classification) String() string {
	return [...]string{"public", "internal", "confidential"}[c]
}

func parseClassification(v any) (Classification, error) {
	switch v {
	case "public":
		return Public, nil
	case "internal":
		return Internal, nil
	case "confidential":
		return Confidential, nil
	}
	return 0, fmt.Errorf("%s must be public, internal or confidential", classificationKeyword)
}

const draft2020 = "https://json-schema.org/draft/2020-12/schema"

// The JSON Schema subset Ward accepts. It is small on purpose: the
// compatibility checker must understand every keyword it lets through, and
// classifications must be found by walking properties and items alone (a
// confidential field hidden in allOf would escape redaction).
var (
	// annotations never affect validation.
	annotationKeywords = map[string]bool{
		"title": true, "description": true, "$comment": true, "examples": true,
		"default": true, "deprecated": true, "readOnly": true, "writeOnly": true,
	}
	// constraintKeywords must stay identical between versions: the checker
	// does not reason about widening them.
	constraintKeywords = map[string]bool{
		"const": true, "minimum": true, "maximum": true, "exclusiveMinimum": true,
		"exclusiveMaximum": true, "multipleOf": true, "minLength": true,
		"maxLength": true, "pattern": true, "format": true, "minItems": true,
		"maxItems": true, "uniqueItems": true, "minProperties": true, "maxProperties": true,
	}
	structuralKeywords = map[string]bool{
		"type": true, "properties": true, "required": true, "items": true,
		"additionalProperties": true, "enum": true, classificationKeyword: true, "$schema": true,
	}
)

// Schema is a compiled, registered payload schema.
type Schema struct {
	Tenant  string
	ID      string
	Version uint32

	raw      []byte
	doc      map[string]any
	compiled *jsonschema.Schema
	// hasConfidential lets the hot path skip redaction walks.
	hasConfidential bool
}

// Registry holds schemas per (tenant, schema ID, version). It is safe for
// concurrent use. The server loads it from the store at start and on change.
type Registry struct {
	mu      sync.RWMutex
	schemas map[schemaKey]*Schema
	count   map[string]int
}

type schemaKey struct {
	tenant, id string
	version    uint32
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{schemas: map[schemaKey]*Schema{}, count: map[string]int{}}
}

// Lookup returns a registered schema.
func (r *Registry) Lookup(tenant, id string, version uint32) (*Schema, bool) {
	r.mu.RLock()
	s, ok := r.schemas[schemaKey{tenant, id, version}]
	r.mu.RUnlock()
	return s, ok
}

// ErrIncompatible is wrapped by Register when version N+1 is not provably
// backward compatible with version N.
var ErrIncompatible = errors.New("schema version is not backward compatible")

// Register compiles and adds a schema version. Versions start at 1 and are
// added in order; version N+1 must be backward compatible with N (see
// [CheckCompatible]). Registering the same bytes again is a no-op, and a
// registered version is never replaced: devices in the field rely on it.
func (r *Registry) Register(tenant, id string, version uint32, doc []byte) (*Schema, error) {
	if err := wire.ValidateTenantID(tenant); err != nil {
		return nil, err
	}
	if err := wire.ValidateSchemaID(id); err != nil {
		return nil, err
	}
	if version == 0 {
		return nil, errors.New("schema versions start at 1")
	}
	s, err := CompileSchema(doc)
	if err != nil {
		return nil, fmt.Errorf("schema %s v%d: %w", id, version, err)
	}
	s.Tenant, s.ID, s.Version = tenant, id, version
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.schemas[schemaKey{tenant, id, version}]; ok {
		if bytes.Equal(old.raw, s.raw) {
			return old, nil
		}
		return nil, fmt.Errorf("schema %s v%d is already registered with different content; register version %d instead", id, version, version+1)
	}
	if version > 1 {
		prev, ok := r.schemas[schemaKey{tenant, id, version - 1}]
		if !ok {
			return nil, fmt.Errorf("schema %s v%d: register version %d first", id, version, version-1)
		}
		if err := CheckCompatible(prev, s); err != nil {
			return nil, fmt.Errorf("schema %s v%d: %w", id, version, err)
		}
	}
	if r.count[tenant] >= MaxSchemasPerTenant {
		return nil, fmt.Errorf("tenant has %d schemas, the limit", MaxSchemasPerTenant)
	}
	r.schemas[schemaKey{tenant, id, version}] = s
	r.count[tenant]++
	return s, nil
}

// CompileSchema checks that doc is a JSON Schema (draft 2020-12) inside
// Ward's subset and compiles it. It does not register it.
func CompileSchema(doc []byte) (*Schema, error) {
	if len(doc) > MaxSchemaSize {
		return nil, fmt.Errorf("schema is %d bytes, limit %d", len(doc), MaxSchemaSize)
	}
	v, err := strictjson.Decode(doc, maxJSONDepth)
	if err != nil {
		return nil, fmt.Errorf("schema is not valid JSON: %w", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("schema must be a JSON object")
	}
	s := &Schema{raw: bytes.Clone(doc), doc: m}
	if err := checkSubset(m, "#", Internal, &s.hasConfidential); err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(noLoader{})
	const url = "urn:ward:schema"
	if err := c.AddResource(url, m); err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	if s.compiled, err = c.Compile(url); err != nil {
		return nil, fmt.Errorf("schema does not compile: %w", err)
	}
	return s, nil
}

// noLoader refuses every external reference: schemas must be
// self-contained, and the server must never fetch URLs chosen by a tenant.
type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("external schema %q not allowed", url)
}

func checkSubset(m map[string]any, path string, parent Classification, conf *bool) error {
	cls := parent
	for k, v := range m {
		switch {
		case annotationKeywords[k], constraintKeywords[k]:
		case k == "$schema":
			if path != "#" || v != draft2020 {
				return fmt.Errorf("%s: $schema must be %q at the root", path, draft2020)
			}
		case k == classificationKeyword:
			c, err := parseClassification(v)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			if parent == Confidential && c != Confidential {
				// The whole confidential subtree is sealed; a lower label
				// inside it would promise something Split does not do.
				return fmt.Errorf("%s: %s field inside a confidential one", path, c)
			}
			cls = c
		case k == "type":
			if _, err := typeSet(v); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		case k == "enum":
			if _, ok := v.([]any); !ok {
				return fmt.Errorf("%s: enum must be an array", path)
			}
		case k == "required":
			if _, err := stringSet(v); err != nil {
				return fmt.Errorf("%s: required: %w", path, err)
			}
		case k == "additionalProperties":
			if _, ok := v.(bool); !ok {
				return fmt.Errorf("%s: additionalProperties must be true or false in Ward schemas", path)
			}
		case k == "properties" || k == "items":
		default:
			return fmt.Errorf("%s: keyword %q is outside the JSON Schema subset Ward supports (type, properties, required, items, additionalProperties, enum, simple constraints, annotations, %s)", path, k, classificationKeyword)
		}
	}
	if cls == Confidential {
		*conf = true
	}
	if p, ok := m["properties"]; ok {
		pm, ok := p.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: properties must be an object", path)
		}
		for name, sub := range pm {
			sm, ok := sub.(map[string]any)
			if !ok {
				return fmt.Errorf("%s/properties/%s: must be a schema object", path, name)
			}
			if err := checkSubset(sm, path+"/properties/"+name, cls, conf); err != nil {
				return err
			}
		}
	}
	if it, ok := m["items"]; ok {
		im, ok := it.(map[string]any)
		if !ok {
			return fmt.Errorf("%s/items: must be a schema object", path)
		}
		if err := checkSubset(im, path+"/items", cls, conf); err != nil {
			return err
		}
	}
	return nil
}

func typeSet(v any) ([]string, error) {
	switch t := v.(type) {
	case string:
		return []string{t}, nil
	case []any:
		return stringSet(t)
	}
	return nil, errors.New("type must be a string or an array of strings")
}

func stringSet(v any) ([]string, error) {
	a, ok := v.([]any)
	if !ok {
		return nil, errors.New("must be an array of strings")
	}
	out := make([]string, 0, len(a))
	for _, x := range a {
		s, ok := x.(string)
		if !ok {
			return nil, errors.New("must be an array of strings")
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return slices.Compact(out), nil
}

// CheckCompatible reports whether next may follow prev. It is conservative:
// next may add optional properties, widen enums, drop an enum or items
// constraint, allow additional properties, or raise a classification; it
// may not remove a property, change a type, change the required set, add or
// narrow an enum, forbid additional properties, lower a classification or
// change any other constraint. What it cannot prove compatible it refuses,
// naming the location.
func CheckCompatible(prev, next *Schema) error {
	return compat(prev.doc, next.doc, "#", Internal, Internal)
}

func compat(old, nw map[string]any, path string, oldParent, newParent Classification) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrIncompatible, path, fmt.Sprintf(format, args...))
	}
	oldCls, newCls := oldParent, newParent
	if v, ok := old[classificationKeyword]; ok {
		oldCls, _ = parseClassification(v)
	}
	if v, ok := nw[classificationKeyword]; ok {
		newCls, _ = parseClassification(v)
	}
	if newCls < oldCls {
		return fail("classification lowered from %s to %s", oldCls, newCls)
	}
	keys := map[string]bool{}
	for k := range old {
		keys[k] = true
	}
	for k := range nw {
		keys[k] = true
	}
	for _, k := range sortedKeys(keys) {
		ov, inOld := old[k]
		nv, inNew := nw[k]
		switch {
		case annotationKeywords[k] || k == classificationKeyword || k == "properties":
		case k == "type":
			ot, _ := typeSet(ov)
			nt, _ := typeSet(nv)
			if !inOld || !inNew || !slices.Equal(ot, nt) {
				return fail("type changed from %v to %v", ot, nt)
			}
		case k == "required":
			or, _ := stringSet(ov)
			nr, _ := stringSet(nv)
			for _, r := range nr {
				if !slices.Contains(or, r) {
					return fail("property %q became required: data valid under the previous version would be refused", r)
				}
			}
			for _, r := range or {
				if !slices.Contains(nr, r) {
					return fail("property %q is no longer required: consumers of the previous version rely on it", r)
				}
			}
		case k == "enum":
			if !inOld {
				return fail("enum added: values valid under the previous version would be refused")
			}
			if !inNew {
				continue
			}
			for _, x := range ov.([]any) {
				if !slices.ContainsFunc(nv.([]any), func(y any) bool { return reflect.DeepEqual(x, y) }) {
					return fail("enum value %s removed", jsonString(x))
				}
			}
		case k == "items":
			if !inOld {
				return fail("items constraint added")
			}
			if !inNew {
				continue
			}
			if err := compat(ov.(map[string]any), nv.(map[string]any), path+"/items", oldCls, newCls); err != nil {
				return err
			}
		case k == "additionalProperties":
			if (!inOld || ov == true) && (inNew && nv == false) {
				return fail("additionalProperties set to false: properties accepted before would be refused")
			}
		default: // $schema and constraints
			if !reflect.DeepEqual(ov, nv) {
				return fail("%s changed from %s to %s; Ward cannot prove that compatible, add a new schema ID instead", k, jsonString(ov), jsonString(nv))
			}
		}
	}
	op, _ := old["properties"].(map[string]any)
	np, _ := nw["properties"].(map[string]any)
	for _, name := range sortedKeys(op) {
		ns, ok := np[name]
		if !ok {
			return fail("property %q removed", name)
		}
		if err := compat(op[name].(map[string]any), ns.(map[string]any), path+"/properties/"+name, oldCls, newCls); err != nil {
			return err
		}
	}
	// New properties are optional (the required check above refuses
	// otherwise), so they are allowed.
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil || len(b) > 64 {
		return "(value)"
	}
	return string(b)
}

// validate checks a decoded payload. The error names only locations and
// keywords, never values: payload values may be confidential.
func (s *Schema) validate(v any) error {
	err := s.compiled.Validate(v)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return errors.New("payload does not validate")
	}
	var where []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 && len(where) < 4 {
			where = append(where, "/"+strings.Join(e.InstanceLocation, "/")+" ("+strings.Join(e.ErrorKind.KeywordPath(), "/")+")")
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	return errors.New("payload fails schema at " + strings.Join(where, ", "))
}

// node returns the sub-schema for a property or array item, or nil when
// the schema does not describe it.
func childSchema(m map[string]any, key string, isIndex bool) map[string]any {
	if m == nil {
		return nil
	}
	if isIndex {
		it, _ := m["items"].(map[string]any)
		return it
	}
	props, _ := m["properties"].(map[string]any)
	sub, _ := props[key].(map[string]any)
	return sub
}

func classOf(m map[string]any, parent Classification) Classification {
	if m == nil {
		return parent
	}
	if v, ok := m[classificationKeyword]; ok {
		c, _ := parseClassification(v)
		return c
	}
	return parent
}

// split walks a decoded value and removes confidential parts, reporting
// each one to found with its JSON Pointer. It returns the value without
// them and whether the value itself is kept.
func split(v any, m map[string]any, parent Classification, ptr string, found func(ptr string, v any)) (any, bool) {
	cls := classOf(m, parent)
	if cls == Confidential {
		if found != nil {
			found(ptr, v)
		}
		return nil, false
	}
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			if y, keep := split(x, childSchema(m, k, false), cls, ptr+"/"+escapePointer(k), found); keep {
				out[k] = y
			}
		}
		return out, true
	case []any:
		out := make([]any, 0, len(t))
		for i, x := range t {
			if y, keep := split(x, childSchema(m, "", true), cls, ptr+"/"+strconv.Itoa(i), found); keep {
				out = append(out, y)
			} else {
				out = append(out, nil) // keep indices stable for the sealed pointers
			}
		}
		return out, true
	}
	return v, true
}

func escapePointer(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// Sealer encrypts confidential data at rest. The store implements it with
// the tenant's data key; aad binds the ciphertext to its message.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
}

// SealedField is one confidential value, located by JSON Pointer (RFC
// 6901) in the original payload. A sealed blob is the JSON array of them.
type SealedField struct {
	Pointer string          `json:"p"`
	Value   json.RawMessage `json:"v"`
}

// Split separates payload into the JSON without confidential fields and,
// when there are any, a blob sealed with s: the JSON array of
// [SealedField]. Confidential array items are replaced by null so the
// pointers stay valid. sealed is nil when nothing is confidential.
func (s *Schema) Split(payload []byte, sealer Sealer, aad []byte) (public json.RawMessage, sealed []byte, err error) {
	v, err := strictjson.Decode(payload, maxJSONDepth)
	if err != nil {
		return nil, nil, fmt.Errorf("payload: %w", err)
	}
	return s.split(v, payload, sealer, aad)
}

func (s *Schema) split(v any, payload []byte, sealer Sealer, aad []byte) (json.RawMessage, []byte, error) {
	if !s.hasConfidential {
		return bytes.Clone(payload), nil, nil
	}
	var fields []SealedField
	var ferr error
	pub, keep := split(v, s.doc, Internal, "", func(ptr string, x any) {
		b, err := json.Marshal(x)
		if err != nil {
			ferr = err
		}
		fields = append(fields, SealedField{ptr, b})
	})
	if ferr != nil {
		return nil, nil, ferr
	}
	if !keep {
		pub = nil
	}
	out, err := json.Marshal(pub)
	if err != nil {
		return nil, nil, err
	}
	if len(fields) == 0 {
		return out, nil, nil
	}
	sort.Slice(fields, func(i, j int) bool { return fields[i].Pointer < fields[j].Pointer })
	plain, err := json.Marshal(fields)
	if err != nil {
		return nil, nil, err
	}
	sealed, err := sealer.Seal(plain, aad)
	if err != nil {
		return nil, nil, fmt.Errorf("sealing confidential fields: %w", err)
	}
	return out, sealed, nil
}

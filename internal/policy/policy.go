// Package policy decides which MQTT topics a connected identity may publish
// to and subscribe to.
//
// A policy is a small JSON document of allow and deny rules whose topic
// filters may hold the variables ${tenant}, ${device} and ${service}. The
// gateway binds a policy to the identity proven by a client certificate and
// asks the bound [Rules] on every PUBLISH and SUBSCRIBE. Deny wins over allow,
// and a subscription is allowed only if every topic it could ever receive is
// allowed.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/wardiot/ward/wire"
)

// Size limits for policy documents, which operators upload through the API.
const (
	// MaxDocumentSize bounds the JSON we parse: a policy is a handful of
	// rules, and a larger body is a mistake or an attack on the parser.
	MaxDocumentSize = 64 << 10
	// MaxRules bounds the rules per list, because every PUBLISH and
	// SUBSCRIBE walks the lists.
	MaxRules = 128
)

// ErrInvalidPolicy is wrapped by every policy parsing or binding error.
var ErrInvalidPolicy = errors.New("invalid policy")

// Document is the JSON form of a policy.
//
//	{"version": 1,
//	 "publish":   {"allow": ["ward/v1/${device}/telemetry/#"], "deny": []},
//	 "subscribe": {"allow": ["ward/v1/${device}/#"]}}
type Document struct {
	Version   int   `json:"version"`
	Publish   Rules `json:"publish"`
	Subscribe Rules `json:"subscribe"`
}

// Rules holds the allow and deny topic filters for one direction.
type Rules struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// Policy is a parsed, validated policy whose filters may still hold
// variables. It is immutable and safe for concurrent use.
type Policy struct {
	doc Document
}

// Vars are the values substituted for the template variables. Each must be
// a valid Ward identifier, so a substitution can never add a '/', '+' or
// '#' to a filter.
type Vars struct {
	Tenant  string
	Device  string
	Service string
}

// Parse parses and validates a JSON policy document. Unknown fields, unknown
// variables, invalid filters and oversized documents are refused.
func Parse(data []byte) (*Policy, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: document larger than %d bytes", ErrInvalidPolicy, MaxDocumentSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the document", ErrInvalidPolicy)
	}
	return New(doc)
}

// New validates doc and returns it as a Policy.
func New(doc Document) (*Policy, error) {
	if doc.Version != 1 {
		return nil, fmt.Errorf("%w: version must be 1", ErrInvalidPolicy)
	}
	for _, list := range [][]string{doc.Publish.Allow, doc.Publish.Deny, doc.Subscribe.Allow, doc.Subscribe.Deny} {
		if len(list) > MaxRules {
			return nil, fmt.Errorf("%w: more than %d rules in one list", ErrInvalidPolicy, MaxRules)
		}
		for _, f := range list {
			if err := ValidateTemplate(f); err != nil {
				return nil, err
			}
		}
	}
	c := Document{Version: 1}
	c.Publish.Allow = append([]string(nil), doc.Publish.Allow...)
	c.Publish.Deny = append([]string(nil), doc.Publish.Deny...)
	c.Subscribe.Allow = append([]string(nil), doc.Subscribe.Allow...)
	c.Subscribe.Deny = append([]string(nil), doc.Subscribe.Deny...)
	return &Policy{doc: c}, nil
}

// Document returns a copy of the policy's document.
func (p *Policy) Document() Document {
	d := p.doc
	d.Publish.Allow = append([]string(nil), d.Publish.Allow...)
	d.Publish.Deny = append([]string(nil), d.Publish.Deny...)
	d.Subscribe.Allow = append([]string(nil), d.Subscribe.Allow...)
	d.Subscribe.Deny = append([]string(nil), d.Subscribe.Deny...)
	return d
}

// placeholder values used to validate templates: valid identifiers that
// contain no topic metacharacters, like every real value.
var placeholder = Vars{Tenant: "t", Device: "d", Service: "s"}

// ValidateTemplate reports whether f is a valid templated topic filter:
// only known variables, each a whole topic level, and a valid filter after
// substitution.
func ValidateTemplate(f string) error {
	if len(f) > MaxTopicLen {
		return fmt.Errorf("%w: filter longer than %d bytes", ErrInvalidPolicy, MaxTopicLen)
	}
	for _, level := range strings.Split(f, "/") {
		if strings.Contains(level, "$") && !strings.HasPrefix(level, "${") {
			return fmt.Errorf("%w: %q: '$' topics cannot be granted", ErrInvalidPolicy, truncate(f))
		}
		if strings.Contains(level, "${") {
			switch level {
			case "${tenant}", "${device}", "${service}":
			default:
				return fmt.Errorf("%w: %q: a variable must be a whole level and one of ${tenant}, ${device}, ${service}", ErrInvalidPolicy, truncate(f))
			}
		}
	}
	x, err := expand(f, placeholder)
	if err != nil {
		return err
	}
	if err := ValidateFilter(x); err != nil {
		return fmt.Errorf("%w: %q: %v", ErrInvalidPolicy, truncate(f), err)
	}
	return nil
}

// Expand substitutes the variables of a validated template. It refuses
// values that are not valid Ward identifiers and templates that name a
// variable whose value is empty (a service variable for a device, say),
// because an empty level would silently widen or shift the filter.
func Expand(f string, v Vars) (string, error) {
	if err := ValidateTemplate(f); err != nil {
		return "", err
	}
	return expand(f, v)
}

func expand(f string, v Vars) (string, error) {
	if !strings.Contains(f, "${") {
		return f, nil
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		var val string
		var check func(string) error
		switch l {
		case "${tenant}":
			val, check = v.Tenant, wire.ValidateTenantID
		case "${device}":
			val, check = v.Device, wire.ValidateDeviceID
		case "${service}":
			val, check = v.Service, wire.ValidateDeviceID
		default:
			continue
		}
		if val == "" {
			return "", fmt.Errorf("%w: %q needs a value for %s", ErrInvalidPolicy, truncate(f), l)
		}
		if err := check(val); err != nil {
			return "", fmt.Errorf("%w: value for %s: %v", ErrInvalidPolicy, l, err)
		}
		levels[i] = val
	}
	return strings.Join(levels, "/"), nil
}

// Bound is a policy bound to one identity: its filters hold no variables.
// It is immutable and safe for concurrent use.
type Bound struct {
	pubAllow, pubDeny, subAllow, subDeny []string
}

// Bind substitutes v into every rule. Rules whose variables have no value
// for this identity (a ${service} rule bound for a device) are dropped from
// allow lists and make Bind fail in deny lists, so a deny is never lost.
func (p *Policy) Bind(v Vars) (*Bound, error) {
	b := &Bound{}
	var err error
	if b.pubAllow, err = bindList(p.doc.Publish.Allow, v, false); err != nil {
		return nil, err
	}
	if b.pubDeny, err = bindList(p.doc.Publish.Deny, v, true); err != nil {
		return nil, err
	}
	if b.subAllow, err = bindList(p.doc.Subscribe.Allow, v, false); err != nil {
		return nil, err
	}
	if b.subDeny, err = bindList(p.doc.Subscribe.Deny, v, true); err != nil {
		return nil, err
	}
	return b, nil
}

func bindList(list []string, v Vars, strict bool) ([]string, error) {
	out := make([]string, 0, len(list))
	for _, f := range list {
		x, err := expand(f, v)
		if err != nil {
			if strict {
				return nil, err
			}
			continue
		}
		out = append(out, x)
	}
	return out, nil
}

// CanPublish reports whether the identity may publish to topic name t.
func (b *Bound) CanPublish(t string) bool {
	if ValidateTopic(t) != nil || strings.HasPrefix(t, "$") {
		return false
	}
	for _, d := range b.pubDeny {
		if Match(d, t) {
			return false
		}
	}
	for _, a := range b.pubAllow {
		if Match(a, t) {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether the identity may subscribe to filter f: some
// allow rule must cover every topic f can match, and no deny rule may
// overlap f. Shared subscriptions and '$' topics are never allowed.
func (b *Bound) CanSubscribe(f string) bool {
	if ValidateFilter(f) != nil || strings.HasPrefix(f, "$") {
		return false
	}
	for _, d := range b.subDeny {
		if Overlaps(d, f) {
			return false
		}
	}
	for _, a := range b.subAllow {
		if Covers(a, f) {
			return true
		}
	}
	return false
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

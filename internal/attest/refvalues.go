package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"
)

// Limits on reference-value documents, which arrive from release
// tooling and through TUF custom metadata.
const (
	// MaxRefValuesSize bounds a document; a release names a handful of
	// stages, a verbose UEFI platform a few hundred events.
	MaxRefValuesSize = 64 << 10
	// MaxRefStages bounds the stages in a document.
	MaxRefStages = 256
	// maxRefName bounds names, models and releases.
	maxRefName = 128
)

// refValuesContext separates reference-value signatures from anything
// else the tenant's release key signs.
const refValuesContext = "ward-attest-refvalues-v1\x00"

// ErrRefValues is wrapped by errors about reference-value documents.
var ErrRefValues = errors.New("invalid reference values")

// RefValues are the golden measurements of one firmware release for one
// hardware model.
type RefValues struct {
	Tenant  string
	HWModel string
	Release string
	Stages  []RefStage
	// PCRs are expected final values of PCRs, for PCRs whose value is
	// fixed whatever the log says (optional).
	PCRs map[int][sha256.Size]byte
	// Doc is the canonical document the signature covers, kept so the
	// import can be audited and re-verified.
	Doc       []byte
	Signature []byte
	Imported  time.Time
}

// RefStage is one measured stage: the event digest expected in PCR.
// Event is the expected event type's name, informational only: the
// verifier trusts digests, never event types or data.
type RefStage struct {
	Name   string
	PCR    int
	Event  string
	SHA256 [sha256.Size]byte
}

// PolicyPCRs returns the PCRs r constrains, ascending.
func (r *RefValues) PolicyPCRs() []int {
	set := map[int]bool{}
	for _, s := range r.Stages {
		set[s.PCR] = true
	}
	for p := range r.PCRs {
		set[p] = true
	}
	out := make([]int, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// The document as published:
//
//	{"ward_attest":{"schema":1,"hw_model":"gw-100","release":"gw-fw@1.4.0","hash":"sha256",
//	  "stages":[{"name":"bootloader","pcr":0,"event":"EV_POST_CODE","sha256":"<hex>"},...],
//	  "pcrs":{"7":"<hex>"}}}
type refDoc struct {
	WardAttest *refBody `json:"ward_attest"`
}

type refBody struct {
	Schema  int               `json:"schema"`
	HWModel string            `json:"hw_model"`
	Release string            `json:"release"`
	Hash    string            `json:"hash"`
	Stages  []refStageDoc     `json:"stages"`
	PCRs    map[string]string `json:"pcrs,omitempty"`
}

type refStageDoc struct {
	Name   string `json:"name"`
	PCR    int    `json:"pcr"`
	Event  string `json:"event,omitempty"`
	SHA256 string `json:"sha256"`
}

func refErrf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefValues, fmt.Sprintf(format, args...))
}

// ParseRefValues parses and checks a document (without its signature)
// and returns it with Doc set to the canonical bytes a signature covers:
// the document re-encoded by encoding/json (fixed field order, sorted map
// keys), so whitespace or key order changes in transit (TUF custom
// metadata is re-serialized) do not break signatures, and a duplicate key
// cannot make the signed and the used value differ.
func ParseRefValues(doc []byte) (*RefValues, error) {
	if len(doc) > MaxRefValuesSize {
		return nil, refErrf("document is %d bytes, limit %d", len(doc), MaxRefValuesSize)
	}
	var d refDoc
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return nil, refErrf("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, refErrf("data after the document")
	}
	b := d.WardAttest
	if b == nil {
		return nil, refErrf("no ward_attest object")
	}
	if b.Schema != 1 {
		return nil, refErrf("schema %d, this server understands 1", b.Schema)
	}
	if b.Hash != "sha256" {
		return nil, refErrf("hash %q, want sha256", b.Hash)
	}
	if err := checkName("hw_model", b.HWModel); err != nil {
		return nil, err
	}
	if err := checkName("release", b.Release); err != nil {
		return nil, err
	}
	if len(b.Stages) == 0 && len(b.PCRs) == 0 {
		return nil, refErrf("no stages and no PCR values: nothing to appraise")
	}
	if len(b.Stages) > MaxRefStages || len(b.PCRs) > 24 {
		return nil, refErrf("more than %d stages or 24 PCR values", MaxRefStages)
	}
	r := &RefValues{HWModel: b.HWModel, Release: b.Release}
	names := map[string]bool{}
	for i, s := range b.Stages {
		if err := checkName("stage name", s.Name); err != nil {
			return nil, err
		}
		if names[s.Name] {
			return nil, refErrf("stage %q appears twice", s.Name)
		}
		names[s.Name] = true
		if s.PCR < 0 || s.PCR > 23 {
			return nil, refErrf("stage %q: PCR %d out of range 0-23", s.Name, s.PCR)
		}
		if len(s.Event) > maxRefName {
			return nil, refErrf("stage %d: event name too long", i)
		}
		d, err := parseDigest(s.SHA256)
		if err != nil {
			return nil, refErrf("stage %q: %v", s.Name, err)
		}
		r.Stages = append(r.Stages, RefStage{Name: s.Name, PCR: s.PCR, Event: s.Event, SHA256: d})
	}
	if len(b.PCRs) > 0 {
		r.PCRs = map[int][sha256.Size]byte{}
	}
	for k, v := range b.PCRs {
		p, err := strconv.Atoi(k)
		if err != nil || p < 0 || p > 23 || strconv.Itoa(p) != k {
			return nil, refErrf("PCR key %q is not 0-23", k)
		}
		d, err := parseDigest(v)
		if err != nil {
			return nil, refErrf("PCR %d: %v", p, err)
		}
		r.PCRs[p] = d
	}
	canon, err := json.Marshal(&d)
	if err != nil {
		return nil, refErrf("%v", err)
	}
	r.Doc = canon
	return r, nil
}

func checkName(what, s string) error {
	if s == "" || len(s) > maxRefName {
		return refErrf("%s must be 1 to %d bytes", what, maxRefName)
	}
	for _, c := range []byte(s) {
		if c < 0x21 || c > 0x7e {
			return refErrf("%s has a byte outside printable ASCII", what)
		}
	}
	return nil
}

// parseDigest accepts lowercase hex only, so a document has one canonical
// form.
func parseDigest(s string) ([sha256.Size]byte, error) {
	var d [sha256.Size]byte
	if len(s) != 2*sha256.Size {
		return d, fmt.Errorf("sha256 must be %d lowercase hex characters", 2*sha256.Size)
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return d, fmt.Errorf("sha256 must be lowercase hex")
		}
	}
	hex.Decode(d[:], []byte(s))
	return d, nil
}

// SignRefValues signs a document's canonical bytes with a release key:
// Ed25519 over context||canonical, or ECDSA (ASN.1) over
// SHA-256(context||canonical). Release tooling and tests use it.
func SignRefValues(doc []byte, key crypto.Signer) ([]byte, error) {
	r, err := ParseRefValues(doc)
	if err != nil {
		return nil, err
	}
	msg := append([]byte(refValuesContext), r.Doc...)
	switch key.Public().(type) {
	case ed25519.PublicKey:
		return key.Sign(rand.Reader, msg, crypto.Hash(0))
	case *ecdsa.PublicKey:
		h := sha256.Sum256(msg)
		return key.Sign(rand.Reader, h[:], crypto.SHA256)
	default:
		return nil, fmt.Errorf("reference values: key type %T unsupported, use Ed25519 or ECDSA", key.Public())
	}
}

// verifyRefSignature checks sig over r.Doc with the tenant's key.
func verifyRefSignature(r *RefValues, sig []byte, pub crypto.PublicKey) error {
	msg := append([]byte(refValuesContext), r.Doc...)
	ok := false
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = len(sig) == ed25519.SignatureSize && ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		h := sha256.Sum256(msg)
		ok = ecdsa.VerifyASN1(k, h[:], sig)
	default:
		return fmt.Errorf("%w: tenant key type %T unsupported", ErrRefValues, pub)
	}
	if !ok {
		return fmt.Errorf("%w: signature does not verify with the tenant's reference-value key", ErrRefValues)
	}
	return nil
}

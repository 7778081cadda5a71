package wire

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/veraison/go-cose"
)

// Telemetry envelopes are COSE_Sign1 (RFC 9052 §4.2, tag 18) or COSE_Mac0
// (RFC 9052 §6.2, tag 17) messages. Every Ward field lives in the protected
// header so that it is covered by the signature or MAC; the unprotected
// header must be empty.
//
//	label   name            CBOR type  in        meaning
//	1       alg             int        both      -7 ES256, -8 EdDSA, 5 HMAC 256/256
//	2       crit            [+ label]  both      optional; only labels below may be listed
//	4       kid             bstr       Sign1     device signing key ID (1-64 bytes)
//	-70001  ward-device     tstr       both      device ID (wire.ValidateDeviceID)
//	-70002  ward-seq        uint       both      per-device sequence number
//	-70003  ward-time       uint       both      timestamp, Unix milliseconds
//	-70004  ward-schema     tstr       both      schema ID (wire.ValidateSchemaID)
//	-70005  ward-schema-v   uint       both      schema version (uint32)
//	-70006  ward-epoch      uint       Mac0      MAC key epoch
//
// The private labels are below -65536, the range RFC 9052 §3.1 reserves for
// private use. Ward does not list them in crit because its verifier is the
// only intended recipient and refuses any envelope missing one of them.
const (
	LabelAlg           int64 = 1
	LabelCrit          int64 = 2
	LabelKeyID         int64 = 4
	LabelDevice        int64 = -70001
	LabelSeq           int64 = -70002
	LabelTime          int64 = -70003
	LabelSchema        int64 = -70004
	LabelSchemaVer     int64 = -70005
	LabelEpoch         int64 = -70006
	AlgES256           int64 = -7
	AlgEdDSA           int64 = -8
	AlgHMAC256         int64 = 5
	cborTagSign1             = 18
	cborTagMac0              = 17
	epochKeyLen              = 32
	epochKeyInfoPrefix       = "ward telemetry"
)

// Limits on envelopes. Envelopes come from devices and are parsed before
// anything is authenticated, so every dimension is bounded.
const (
	// MaxEnvelopeSize bounds a whole envelope; it matches the largest MQTT
	// telemetry message the gateway accepts and caps parser work per message.
	MaxEnvelopeSize = 64 << 10
	// maxHeaderSize bounds the protected header; ours is under 250 bytes.
	maxHeaderSize = 1024
	// maxHeaderPairs bounds map entries so a header cannot force large maps.
	maxHeaderPairs = 16
	// MaxKeyIDLen bounds the kid: IDs are hashes or short names.
	MaxKeyIDLen = 64
	// MaxSchemaIDLen bounds schema IDs, which become database keys.
	MaxSchemaIDLen = 64
)

// Errors returned by envelope functions. Callers match them with errors.Is.
var (
	ErrEnvelopeTooLarge = errors.New("envelope too large")
	ErrMalformed        = errors.New("malformed envelope")
	ErrBadSignature     = errors.New("envelope signature or MAC does not verify")
	ErrWrongKind        = errors.New("envelope is not of the expected kind")
)

// Kind says how an envelope is authenticated.
type Kind uint8

// Envelope kinds.
const (
	KindSign1 Kind = 1 // COSE_Sign1 with the device's asymmetric key
	KindMac0  Kind = 2 // COSE_Mac0 with an epoch key
)

// String returns the COSE structure name, for logs.
func (k Kind) String() string {
	switch k {
	case KindSign1:
		return "COSE_Sign1"
	case KindMac0:
		return "COSE_Mac0"
	}
	return "unknown"
}

// Header holds the Ward fields of an envelope's protected header.
type Header struct {
	Device        string
	Seq           uint64
	Time          time.Time // carried with millisecond precision
	SchemaID      string
	SchemaVersion uint32
	KeyID         []byte // Sign1 only
	Epoch         uint64 // Mac0 only
}

// Envelope is a parsed, not yet verified, telemetry envelope.
type Envelope struct {
	Kind    Kind
	Alg     int64
	Header  Header
	Payload []byte

	protected []byte // raw protected header bytes, as signed
	tag       []byte // signature or MAC
}

// ValidateSchemaID reports whether s is a valid schema ID: 1 to 64 letters,
// digits, '.', '_' or '-', starting with a letter or digit.
func ValidateSchemaID(s string) error {
	if len(s) == 0 || len(s) > MaxSchemaIDLen {
		return fmt.Errorf("%w: schema ID must be 1 to %d characters", ErrInvalidID, MaxSchemaIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return fmt.Errorf("%w: schema ID %q may hold only letters, digits, '.', '_' and '-'", ErrInvalidID, truncate(s))
		}
	}
	return nil
}

// EpochKey derives the MAC key of an epoch from a device's secret:
// HKDF-SHA256(deviceSecret, salt = nil, info = "ward telemetry" || uint64be(epoch)).
// Keys of different epochs are independent HKDF outputs, so a leaked epoch
// key reveals nothing about the next one.
func EpochKey(deviceSecret []byte, epoch uint64) ([]byte, error) {
	if len(deviceSecret) < 16 {
		return nil, errors.New("device secret must be at least 16 bytes")
	}
	var info [len(epochKeyInfoPrefix) + 8]byte
	copy(info[:], epochKeyInfoPrefix)
	binary.BigEndian.PutUint64(info[len(epochKeyInfoPrefix):], epoch)
	return hkdf.Key(sha256.New, deviceSecret, nil, string(info[:]), epochKeyLen)
}

func (h *Header) check(kind Kind) error {
	if err := ValidateDeviceID(h.Device); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := ValidateSchemaID(h.SchemaID); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if h.Time.UnixMilli() < 0 {
		return fmt.Errorf("%w: timestamp before 1970", ErrMalformed)
	}
	switch kind {
	case KindSign1:
		if len(h.KeyID) == 0 || len(h.KeyID) > MaxKeyIDLen {
			return fmt.Errorf("%w: key ID must be 1 to %d bytes", ErrMalformed, MaxKeyIDLen)
		}
		if h.Epoch != 0 {
			return fmt.Errorf("%w: COSE_Sign1 carries no epoch", ErrMalformed)
		}
	case KindMac0:
		if h.KeyID != nil {
			return fmt.Errorf("%w: COSE_Mac0 carries an epoch, not a key ID", ErrMalformed)
		}
	}
	return nil
}

// encodeProtected writes the protected header map in RFC 8949 core
// deterministic order (positive labels, then negative ones by magnitude).
func (h *Header) encodeProtected(kind Kind, alg int64) []byte {
	b := make([]byte, 0, 96+len(h.Device)+len(h.SchemaID)+len(h.KeyID))
	b = append(b, 0xa7) // map(7): alg, kid or epoch, and five Ward fields
	b = appendInt(b, LabelAlg)
	b = appendInt(b, alg)
	if kind == KindSign1 {
		b = appendInt(b, LabelKeyID)
		b = appendHead(b, 2, uint64(len(h.KeyID)))
		b = append(b, h.KeyID...)
	}
	b = appendInt(b, LabelDevice)
	b = appendHead(b, 3, uint64(len(h.Device)))
	b = append(b, h.Device...)
	b = appendInt(b, LabelSeq)
	b = appendHead(b, 0, h.Seq)
	b = appendInt(b, LabelTime)
	b = appendHead(b, 0, uint64(h.Time.UnixMilli()))
	b = appendInt(b, LabelSchema)
	b = appendHead(b, 3, uint64(len(h.SchemaID)))
	b = append(b, h.SchemaID...)
	b = appendInt(b, LabelSchemaVer)
	b = appendHead(b, 0, uint64(h.SchemaVersion))
	if kind == KindMac0 {
		b = appendInt(b, LabelEpoch)
		b = appendHead(b, 0, h.Epoch)
	}
	return b
}

// SignTelemetry returns a tagged COSE_Sign1 envelope over payload signed by
// signer, whose public key must be Ed25519 (EdDSA) or ECDSA P-256 (ES256).
// signer may be a hardware key (PKCS#11, TPM) behind crypto.Signer.
func SignTelemetry(signer crypto.Signer, h Header, payload []byte) ([]byte, error) {
	alg, err := algForKey(signer.Public())
	if err != nil {
		return nil, err
	}
	if err := h.check(KindSign1); err != nil {
		return nil, err
	}
	cs, err := cose.NewSigner(cose.Algorithm(alg), signer)
	if err != nil {
		return nil, fmt.Errorf("telemetry signer: %w", err)
	}
	prot := h.encodeProtected(KindSign1, alg)
	sig, err := cs.Sign(rand.Reader, sigStructure(prot, payload))
	if err != nil {
		return nil, fmt.Errorf("signing telemetry: %w", err)
	}
	out := encodeMessage(cborTagSign1, prot, payload, sig)
	if len(out) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrEnvelopeTooLarge, len(out), MaxEnvelopeSize)
	}
	return out, nil
}

// MacTelemetry returns a tagged COSE_Mac0 envelope over payload,
// authenticated with HMAC 256/256 under key (normally [EpochKey] for
// h.Epoch).
func MacTelemetry(key []byte, h Header, payload []byte) ([]byte, error) {
	if len(key) < 16 {
		return nil, errors.New("MAC key must be at least 16 bytes")
	}
	if err := h.check(KindMac0); err != nil {
		return nil, err
	}
	prot := h.encodeProtected(KindMac0, AlgHMAC256)
	out := encodeMessage(cborTagMac0, prot, payload, mac0Tag(key, prot, payload))
	if len(out) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrEnvelopeTooLarge, len(out), MaxEnvelopeSize)
	}
	return out, nil
}

func algForKey(pub crypto.PublicKey) (int64, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return AlgEdDSA, nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return AlgES256, nil
		}
	}
	return 0, fmt.Errorf("unsupported telemetry key type %T: use Ed25519 or ECDSA P-256", pub)
}

// sigStructure encodes Sig_structure (RFC 9052 §4.4):
// ["Signature1", body_protected, external_aad = h”, payload].
func sigStructure(prot, payload []byte) []byte {
	b := make([]byte, 0, 24+len(prot)+len(payload))
	b = append(b, 0x84, 0x6a)
	b = append(b, "Signature1"...)
	b = appendHead(b, 2, uint64(len(prot)))
	b = append(b, prot...)
	b = append(b, 0x40)
	b = appendHead(b, 2, uint64(len(payload)))
	return append(b, payload...)
}

// mac0Tag computes HMAC-SHA256 (RFC 2104) over MAC_structure (RFC 9052
// §6.3): ["MAC0", protected, external_aad = h”, payload]. The structure
// is fed piecewise so the payload is never copied, and the SHA-256 states
// come from a pool: crypto/hmac allocates a fresh pair per call, which
// showed up on the ingest hot path.
func mac0Tag(key, prot, payload []byte) []byte {
	const block = sha256.BlockSize
	st := macPool.Get().(*macState)
	defer macPool.Put(st)
	k := &st.key
	if len(key) > block {
		sum := sha256.Sum256(key)
		*k = [block]byte{}
		copy(k[:], sum[:])
	} else {
		*k = [block]byte{}
		copy(k[:], key)
	}
	for i := range st.pad {
		st.pad[i] = k[i] ^ 0x36
	}
	h := st.h
	h.Reset()
	h.Write(st.pad[:])
	h.Write(mac0Prefix)
	h.Write(appendHead(st.hd[:0], 2, uint64(len(prot))))
	h.Write(prot)
	h.Write(emptyBstr)
	h.Write(appendHead(st.hd[:0], 2, uint64(len(payload))))
	h.Write(payload)
	inner := h.Sum(st.inner[:0])
	for i := range st.pad {
		st.pad[i] = k[i] ^ 0x5c
	}
	h.Reset()
	h.Write(st.pad[:])
	h.Write(inner)
	clear(k[:])
	clear(st.pad[:])
	return h.Sum(make([]byte, 0, sha256.Size))
}

// macState is the scratch space of one HMAC computation; pooled so that
// nothing on the hot path escapes to the heap but the result.
type macState struct {
	h     hash.Hash
	key   [sha256.BlockSize]byte
	pad   [sha256.BlockSize]byte
	hd    [9]byte
	inner [sha256.Size]byte
}

var (
	macPool    = sync.Pool{New: func() any { return &macState{h: sha256.New()} }}
	mac0Prefix = []byte{0x84, 0x64, 'M', 'A', 'C', '0'} // array(4), "MAC0"
	emptyBstr  = []byte{0x40}                           // external_aad h''
)

func encodeMessage(tag byte, prot, payload, sigOrMac []byte) []byte {
	b := make([]byte, 0, 16+len(prot)+len(payload)+len(sigOrMac))
	b = append(b, 0xc0|tag, 0x84)
	b = appendHead(b, 2, uint64(len(prot)))
	b = append(b, prot...)
	b = append(b, 0xa0) // empty unprotected header
	b = appendHead(b, 2, uint64(len(payload)))
	b = append(b, payload...)
	b = appendHead(b, 2, uint64(len(sigOrMac)))
	return append(b, sigOrMac...)
}

func appendHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= math.MaxUint8:
		return append(b, m|24, byte(n))
	case n <= math.MaxUint16:
		return append(b, m|25, byte(n>>8), byte(n))
	case n <= math.MaxUint32:
		return append(b, m|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return binary.BigEndian.AppendUint64(append(b, m|27), n)
}

func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendHead(b, 0, uint64(v))
	}
	return appendHead(b, 1, uint64(-1-v))
}

// ParseEnvelope decodes a tagged COSE_Sign1 or COSE_Mac0 envelope without
// verifying it. It is strict: it refuses oversized input, trailing bytes,
// duplicate header labels, indefinite-length items, non-shortest integer
// and length encodings, tags inside the message, invalid UTF-8, a non-empty
// unprotected header, missing Ward fields and critical headers it does not
// understand. Each of those could otherwise let two parsers read one
// message differently. The returned Envelope refers to b, which must not be
// modified afterwards.
func ParseEnvelope(b []byte) (*Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrEnvelopeTooLarge, len(b), MaxEnvelopeSize)
	}
	if len(b) < 2 || b[1] != 0x84 {
		return nil, fmt.Errorf("%w: not a tagged COSE message", ErrMalformed)
	}
	var e Envelope
	switch b[0] {
	case 0xc0 | cborTagSign1:
		e.Kind = KindSign1
	case 0xc0 | cborTagMac0:
		e.Kind = KindMac0
	default:
		return nil, fmt.Errorf("%w: not a COSE_Sign1 or COSE_Mac0 tag", ErrMalformed)
	}
	r := cborReader{b: b, i: 2}
	var err error
	if e.protected, err = r.bytes(); err != nil {
		return nil, err
	}
	if r.i >= len(b) || b[r.i] != 0xa0 {
		return nil, fmt.Errorf("%w: unprotected header must be an empty map", ErrMalformed)
	}
	r.i++
	if e.Payload, err = r.bytes(); err != nil {
		return nil, err
	}
	if e.tag, err = r.bytes(); err != nil {
		return nil, err
	}
	if r.i != len(b) {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b)-r.i)
	}
	if err := e.parseProtected(); err != nil {
		return nil, err
	}
	return &e, nil
}

// maxSkipDepth bounds nesting inside header values Ward does not know.
const maxSkipDepth = 4

// cborReader reads the deterministic subset of CBOR (RFC 8949 §4.2.1)
// that COSE headers need. It is hand-written because a reflection-based
// decoder of map[any]any costs more than the HMAC on small messages.
type cborReader struct {
	b []byte
	i int
}

func malformedCOSE(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// head reads an item head and returns its major type and argument. It
// refuses indefinite lengths, reserved values and non-shortest arguments.
func (r *cborReader) head() (major byte, arg uint64, err error) {
	if r.i >= len(r.b) {
		return 0, 0, malformedCOSE("truncated CBOR")
	}
	ib := r.b[r.i]
	major, ai := ib>>5, ib&0x1f
	r.i++
	var n int
	switch {
	case ai < 24:
		return major, uint64(ai), nil
	case ai == 24:
		n = 1
	case ai == 25:
		n = 2
	case ai == 26:
		n = 4
	case ai == 27:
		n = 8
	default:
		return 0, 0, malformedCOSE("indefinite-length or reserved CBOR item")
	}
	if len(r.b)-r.i < n {
		return 0, 0, malformedCOSE("truncated CBOR")
	}
	for _, c := range r.b[r.i : r.i+n] {
		arg = arg<<8 | uint64(c)
	}
	r.i += n
	if major == 7 {
		return major, arg, nil // floats keep their width
	}
	if (n == 1 && arg < 24) || (n == 2 && arg <= math.MaxUint8) || (n == 4 && arg <= math.MaxUint16) || (n == 8 && arg <= math.MaxUint32) {
		return 0, 0, malformedCOSE("non-shortest CBOR encoding")
	}
	return major, arg, nil
}

// payloadOf reads the content of a byte or text string of length n.
func (r *cborReader) payloadOf(n uint64) ([]byte, error) {
	if n > uint64(len(r.b)-r.i) {
		return nil, malformedCOSE("truncated CBOR string")
	}
	v := r.b[r.i : r.i+int(n)]
	r.i += int(n)
	return v, nil
}

func (r *cborReader) bytes() ([]byte, error) {
	m, n, err := r.head()
	if err != nil {
		return nil, err
	}
	if m != 2 {
		return nil, malformedCOSE("expected a byte string")
	}
	return r.payloadOf(n)
}

func (r *cborReader) text() (string, error) {
	m, n, err := r.head()
	if err != nil {
		return "", err
	}
	if m != 3 {
		return "", malformedCOSE("expected a text string")
	}
	v, err := r.payloadOf(n)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(v) {
		return "", malformedCOSE("invalid UTF-8 in text string")
	}
	return string(v), nil
}

func (r *cborReader) uint() (uint64, error) {
	m, n, err := r.head()
	if err != nil {
		return 0, err
	}
	if m != 0 {
		return 0, malformedCOSE("expected an unsigned integer")
	}
	return n, nil
}

// int reads a major type 0 or 1 integer that fits in int64.
func (r *cborReader) int() (int64, error) {
	m, n, err := r.head()
	if err != nil {
		return 0, err
	}
	if (m != 0 && m != 1) || n > math.MaxInt64 {
		return 0, malformedCOSE("expected an integer in int64 range")
	}
	if m == 1 {
		return -1 - int64(n), nil
	}
	return int64(n), nil
}

// skip steps over one well-formed item (no tags).
func (r *cborReader) skip(depth int) error {
	if depth > maxSkipDepth {
		return malformedCOSE("header value nested too deeply")
	}
	start := r.i
	m, n, err := r.head()
	if err != nil {
		return err
	}
	switch m {
	case 0, 1:
		return nil
	case 2:
		_, err = r.payloadOf(n)
		return err
	case 3:
		r.i = start
		_, err = r.text()
		return err
	case 4, 5:
		if n > maxHeaderPairs {
			return malformedCOSE("header value too large")
		}
		if m == 5 {
			n *= 2
		}
		for range n {
			if err := r.skip(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case 6:
		return malformedCOSE("CBOR tags are not allowed in headers")
	}
	// Major 7: simple values and floats. One-byte simple values below 32
	// are not well-formed (RFC 8949 §3.3).
	if r.b[start]&0x1f == 24 && n < 32 {
		return malformedCOSE("bad CBOR simple value")
	}
	return nil
}

func (e *Envelope) parseProtected() error {
	if len(e.protected) == 0 || len(e.protected) > maxHeaderSize {
		return fmt.Errorf("%w: protected header missing or larger than %d bytes", ErrMalformed, maxHeaderSize)
	}
	r := cborReader{b: e.protected}
	m, pairs, err := r.head()
	if err != nil {
		return err
	}
	if m != 5 || pairs > maxHeaderPairs {
		return malformedCOSE("protected header must be a map of at most %d entries", maxHeaderPairs)
	}
	const (
		hAlg = 1 << iota
		hKeyID
		hDevice
		hSeq
		hTime
		hSchema
		hSchemaVer
		hEpoch
		hRequired = hAlg | hDevice | hSeq | hTime | hSchema | hSchemaVer
	)
	have := 0
	var seen [maxHeaderPairs]int64
	var seenText []string
	h := &e.Header
	for p := range int(pairs) {
		if r.i >= len(r.b) {
			return malformedCOSE("truncated protected header")
		}
		if r.b[r.i]>>5 == 3 {
			// Text labels are legal COSE but Ward defines none; unless crit
			// names them (which checkCrit refuses) they are ignored.
			t, err := r.text()
			if err != nil {
				return err
			}
			if slices.Contains(seenText, t) {
				return malformedCOSE("duplicate header label")
			}
			seenText = append(seenText, t)
			if err := r.skip(1); err != nil {
				return err
			}
			continue
		}
		label, err := r.int()
		if err != nil {
			return malformedCOSE("header label must be an integer or text")
		}
		if slices.Contains(seen[:p], label) {
			return malformedCOSE("duplicate header label %d", label)
		}
		seen[p] = label
		switch label {
		case LabelAlg:
			have |= hAlg
			e.Alg, err = r.int()
		case LabelCrit:
			err = r.crit()
		case LabelKeyID:
			have |= hKeyID
			h.KeyID, err = r.bytes()
		case LabelDevice:
			have |= hDevice
			h.Device, err = r.text()
		case LabelSeq:
			have |= hSeq
			h.Seq, err = r.uint()
		case LabelTime:
			have |= hTime
			var ms uint64
			if ms, err = r.uint(); err == nil {
				if ms > math.MaxInt64/2 {
					err = malformedCOSE("timestamp out of range")
				}
				h.Time = time.UnixMilli(int64(ms))
			}
		case LabelSchema:
			have |= hSchema
			h.SchemaID, err = r.text()
		case LabelSchemaVer:
			have |= hSchemaVer
			var v uint64
			if v, err = r.uint(); err == nil && v > math.MaxUint32 {
				err = malformedCOSE("schema version out of range")
			}
			h.SchemaVersion = uint32(v)
		case LabelEpoch:
			have |= hEpoch
			h.Epoch, err = r.uint()
		default:
			err = r.skip(1)
		}
		if err != nil {
			return fmt.Errorf("header %d: %w", label, err)
		}
	}
	if r.i != len(r.b) {
		return malformedCOSE("data after the protected header map")
	}
	if have&hRequired != hRequired {
		return malformedCOSE("protected header lacks alg, device, seq, time, schema or schema version")
	}
	switch e.Kind {
	case KindSign1:
		if e.Alg != AlgES256 && e.Alg != AlgEdDSA {
			return malformedCOSE("COSE_Sign1 algorithm %d is not ES256 or EdDSA", e.Alg)
		}
		if have&hKeyID == 0 || have&hEpoch != 0 {
			return malformedCOSE("COSE_Sign1 needs a key ID and no epoch")
		}
	case KindMac0:
		if e.Alg != AlgHMAC256 {
			return malformedCOSE("COSE_Mac0 algorithm %d is not HMAC 256/256", e.Alg)
		}
		if have&hEpoch == 0 || have&hKeyID != 0 {
			return malformedCOSE("COSE_Mac0 needs an epoch and no key ID")
		}
	}
	return h.check(e.Kind)
}

// crit reads the crit header: a non-empty array of labels that must all be
// ones Ward processes (RFC 9052 §3.1).
func (r *cborReader) crit() error {
	m, n, err := r.head()
	if err != nil {
		return err
	}
	if m != 4 || n == 0 || n > maxHeaderPairs {
		return malformedCOSE("crit must be a non-empty array of labels")
	}
	for range n {
		l, err := r.int()
		if err != nil {
			return malformedCOSE("critical header label is not understood")
		}
		switch l {
		case LabelAlg, LabelKeyID, LabelDevice, LabelSeq, LabelTime, LabelSchema, LabelSchemaVer, LabelEpoch:
		default:
			return malformedCOSE("critical header %d is not understood", l)
		}
	}
	return nil
}

// VerifySign1 checks a COSE_Sign1 envelope's signature with pub. The
// algorithm in the header must match the key type, so an attacker cannot
// choose a weaker interpretation of the key.
func (e *Envelope) VerifySign1(pub crypto.PublicKey) error {
	if e.Kind != KindSign1 {
		return fmt.Errorf("%w: %v, want COSE_Sign1", ErrWrongKind, e.Kind)
	}
	alg, err := algForKey(pub)
	if err != nil {
		return err
	}
	if alg != e.Alg {
		return fmt.Errorf("%w: header algorithm %d does not match key", ErrBadSignature, e.Alg)
	}
	if alg == AlgEdDSA {
		if len(pub.(ed25519.PublicKey)) != ed25519.PublicKeySize {
			return errors.New("bad Ed25519 public key length")
		}
		// Direct call: avoids an allocation per message on the hot path.
		if !ed25519.Verify(pub.(ed25519.PublicKey), sigStructure(e.protected, e.Payload), e.tag) {
			return ErrBadSignature
		}
		return nil
	}
	v, err := cose.NewVerifier(cose.Algorithm(alg), pub)
	if err != nil {
		return fmt.Errorf("telemetry verifier: %w", err)
	}
	if err := v.Verify(sigStructure(e.protected, e.Payload), e.tag); err != nil {
		return ErrBadSignature
	}
	return nil
}

// VerifyMac0 checks a COSE_Mac0 envelope's tag with key, in constant time.
func (e *Envelope) VerifyMac0(key []byte) error {
	if e.Kind != KindMac0 {
		return fmt.Errorf("%w: %v, want COSE_Mac0", ErrWrongKind, e.Kind)
	}
	if !hmac.Equal(mac0Tag(key, e.protected, e.Payload), e.tag) {
		return ErrBadSignature
	}
	return nil
}

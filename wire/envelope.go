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
	"math"
	"time"

	"github.com/fxamacker/cbor/v2"
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

// mac0Tag computes HMAC-SHA256 over MAC_structure (RFC 9052 §6.3):
// ["MAC0", protected, external_aad = h”, payload]. The structure is fed to
// the HMAC piecewise so the payload is never copied.
func mac0Tag(key, prot, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	var hd [9]byte
	m.Write([]byte{0x84, 0x64, 'M', 'A', 'C', '0'})
	m.Write(appendHead(hd[:0], 2, uint64(len(prot))))
	m.Write(prot)
	m.Write([]byte{0x40})
	m.Write(appendHead(hd[:0], 2, uint64(len(payload))))
	m.Write(payload)
	return m.Sum(nil)
}

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

// The decoder refuses everything RFC 9052 leaves to the implementer that
// could create parser differentials: duplicate map keys, indefinite lengths,
// tags inside the message, and deep nesting.
var strictDec = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  4,
		MaxArrayElements: maxHeaderPairs,
		MaxMapPairs:      maxHeaderPairs,
		IntDec:           cbor.IntDecConvertSigned,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// ParseEnvelope decodes a tagged COSE_Sign1 or COSE_Mac0 envelope without
// verifying it. It is strict: it refuses oversized input, trailing bytes,
// duplicate header labels, indefinite-length items, a non-empty unprotected
// header, missing Ward fields and critical headers it does not understand.
// The returned Envelope refers to b, which must not be modified afterwards.
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
	rest := b[2:]
	var err error
	if e.protected, rest, err = readBstr(rest); err != nil {
		return nil, err
	}
	if len(rest) == 0 || rest[0] != 0xa0 {
		return nil, fmt.Errorf("%w: unprotected header must be an empty map", ErrMalformed)
	}
	rest = rest[1:]
	if e.Payload, rest, err = readBstr(rest); err != nil {
		return nil, err
	}
	if e.tag, rest, err = readBstr(rest); err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(rest))
	}
	if err := e.parseProtected(); err != nil {
		return nil, err
	}
	return &e, nil
}

// readBstr reads one definite-length byte string.
func readBstr(b []byte) (v, rest []byte, err error) {
	if len(b) == 0 || b[0]>>5 != 2 {
		return nil, nil, fmt.Errorf("%w: expected a byte string", ErrMalformed)
	}
	ai := b[0] & 0x1f
	var n uint64
	var hl int
	switch {
	case ai < 24:
		n, hl = uint64(ai), 1
	case ai == 24 && len(b) >= 2:
		n, hl = uint64(b[1]), 2
	case ai == 25 && len(b) >= 3:
		n, hl = uint64(binary.BigEndian.Uint16(b[1:])), 3
	case ai == 26 && len(b) >= 5:
		n, hl = uint64(binary.BigEndian.Uint32(b[1:])), 5
	case ai == 27 && len(b) >= 9:
		n, hl = binary.BigEndian.Uint64(b[1:]), 9
	default:
		// 28-30 are reserved, 31 is indefinite length: both refused.
		return nil, nil, fmt.Errorf("%w: bad byte string length", ErrMalformed)
	}
	if n > uint64(len(b)-hl) {
		return nil, nil, fmt.Errorf("%w: truncated byte string", ErrMalformed)
	}
	return b[hl : hl+int(n)], b[hl+int(n):], nil
}

func (e *Envelope) parseProtected() error {
	if len(e.protected) == 0 || len(e.protected) > maxHeaderSize {
		return fmt.Errorf("%w: protected header missing or larger than %d bytes", ErrMalformed, maxHeaderSize)
	}
	var m map[any]cbor.RawMessage
	if err := strictDec.Unmarshal(e.protected, &m); err != nil {
		return fmt.Errorf("%w: protected header: %v", ErrMalformed, err)
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
	h := &e.Header
	for k, raw := range m {
		label, ok := k.(int64)
		if !ok {
			// Text labels are legal COSE but Ward defines none; unless crit
			// names them (which checkCrit refuses) they are ignored.
			if _, isText := k.(string); isText {
				continue
			}
			return fmt.Errorf("%w: protected header label of type %T", ErrMalformed, k)
		}
		var err error
		switch label {
		case LabelAlg:
			have |= hAlg
			err = strictDec.Unmarshal(raw, &e.Alg)
		case LabelCrit:
			err = checkCrit(raw)
		case LabelKeyID:
			have |= hKeyID
			err = decodeBstr(raw, &h.KeyID)
		case LabelDevice:
			have |= hDevice
			err = decodeText(raw, &h.Device)
		case LabelSeq:
			have |= hSeq
			err = decodeUint(raw, &h.Seq)
		case LabelTime:
			have |= hTime
			var ms uint64
			if err = decodeUint(raw, &ms); err == nil {
				if ms > math.MaxInt64/2 {
					err = errors.New("timestamp out of range")
				}
				h.Time = time.UnixMilli(int64(ms))
			}
		case LabelSchema:
			have |= hSchema
			err = decodeText(raw, &h.SchemaID)
		case LabelSchemaVer:
			have |= hSchemaVer
			var v uint64
			if err = decodeUint(raw, &v); err == nil && v > math.MaxUint32 {
				err = errors.New("schema version out of range")
			}
			h.SchemaVersion = uint32(v)
		case LabelEpoch:
			have |= hEpoch
			err = decodeUint(raw, &h.Epoch)
		}
		if err != nil {
			return fmt.Errorf("%w: header %d: %v", ErrMalformed, label, err)
		}
	}
	if have&hRequired != hRequired {
		return fmt.Errorf("%w: protected header lacks alg, device, seq, time, schema or schema version", ErrMalformed)
	}
	switch e.Kind {
	case KindSign1:
		if e.Alg != AlgES256 && e.Alg != AlgEdDSA {
			return fmt.Errorf("%w: COSE_Sign1 algorithm %d is not ES256 or EdDSA", ErrMalformed, e.Alg)
		}
		if have&hKeyID == 0 || have&hEpoch != 0 {
			return fmt.Errorf("%w: COSE_Sign1 needs a key ID and no epoch", ErrMalformed)
		}
	case KindMac0:
		if e.Alg != AlgHMAC256 {
			return fmt.Errorf("%w: COSE_Mac0 algorithm %d is not HMAC 256/256", ErrMalformed, e.Alg)
		}
		if have&hEpoch == 0 || have&hKeyID != 0 {
			return fmt.Errorf("%w: COSE_Mac0 needs an epoch and no key ID", ErrMalformed)
		}
	}
	return h.check(e.Kind)
}

func decodeUint(raw cbor.RawMessage, v *uint64) error {
	if len(raw) == 0 || raw[0]>>5 != 0 {
		return errors.New("not an unsigned integer")
	}
	return strictDec.Unmarshal(raw, v)
}

func decodeText(raw cbor.RawMessage, v *string) error {
	if len(raw) == 0 || raw[0]>>5 != 3 {
		return errors.New("not a text string")
	}
	return strictDec.Unmarshal(raw, v)
}

func decodeBstr(raw cbor.RawMessage, v *[]byte) error {
	if len(raw) == 0 || raw[0]>>5 != 2 {
		return errors.New("not a byte string")
	}
	b, rest, err := readBstr(raw)
	if err != nil || len(rest) != 0 {
		return errors.New("bad byte string")
	}
	*v = b
	return nil
}

// knownLabels are the labels this package understands and so may appear in
// crit (RFC 9052 §3.1: a recipient must reject crit labels it does not
// process).
var knownLabels = map[int64]bool{
	LabelAlg: true, LabelKeyID: true, LabelDevice: true, LabelSeq: true,
	LabelTime: true, LabelSchema: true, LabelSchemaVer: true, LabelEpoch: true,
}

func checkCrit(raw cbor.RawMessage) error {
	var labels []any
	if err := strictDec.Unmarshal(raw, &labels); err != nil {
		return fmt.Errorf("crit: %v", err)
	}
	if len(labels) == 0 {
		return errors.New("crit must not be empty")
	}
	for _, l := range labels {
		i, ok := l.(int64)
		if !ok || !knownLabels[i] {
			return fmt.Errorf("critical header %v is not understood", l)
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

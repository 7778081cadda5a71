package pki

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
)

// Reason is an RFC 5280 CRLReason code.
type Reason int

// RFC 5280 section 5.3.1 reason codes that Ward accepts. certificateHold
// (6) and removeFromCRL (8) are not offered: a Ward revocation is final.
// aACompromise (10) concerns attribute certificates, which Ward does not
// issue.
const (
	ReasonUnspecified          Reason = 0
	ReasonKeyCompromise        Reason = 1
	ReasonCACompromise         Reason = 2
	ReasonAffiliationChanged   Reason = 3
	ReasonSuperseded           Reason = 4
	ReasonCessationOfOperation Reason = 5
	ReasonPrivilegeWithdrawn   Reason = 9
)

var reasonNames = map[Reason]string{
	ReasonUnspecified:          "unspecified",
	ReasonKeyCompromise:        "keyCompromise",
	ReasonCACompromise:         "cACompromise",
	ReasonAffiliationChanged:   "affiliationChanged",
	ReasonSuperseded:           "superseded",
	ReasonCessationOfOperation: "cessationOfOperation",
	ReasonPrivilegeWithdrawn:   "privilegeWithdrawn",
}

// ErrBadReason is wrapped by errors about unknown revocation reasons.
var ErrBadReason = errors.New("pki: unsupported revocation reason")

// ParseReason parses an RFC 5280 reason name (case-insensitive, e.g.
// "keyCompromise", "superseded", "cessationOfOperation").
func ParseReason(s string) (Reason, error) {
	for r, n := range reasonNames {
		if strings.EqualFold(n, s) {
			return r, nil
		}
	}
	return 0, fmt.Errorf("%w: %q (use unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn)", ErrBadReason, truncate(s))
}

// Validate reports whether r is a reason code Ward accepts.
func (r Reason) Validate() error {
	if _, ok := reasonNames[r]; !ok {
		return fmt.Errorf("%w: code %d", ErrBadReason, int(r))
	}
	return nil
}

// String returns the RFC 5280 name of r.
func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// SerialString formats a certificate serial the way the [Store] keys it:
// lower-case hex without leading zeros.
func SerialString(n *big.Int) string { return n.Text(16) }

// ParseSerial parses a serial formatted by [SerialString]. It accepts only
// positive serials of at most 20 octets (RFC 5280 section 4.1.2.2).
func ParseSerial(s string) (*big.Int, error) {
	if len(s) == 0 || len(s) > 40 {
		return nil, fmt.Errorf("pki: serial %q must be 1 to 40 hex digits", truncate(s))
	}
	n, ok := new(big.Int).SetString(s, 16)
	if !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("pki: serial %q is not a positive hex number", truncate(s))
	}
	return n, nil
}

// maxSerialBytes is the RFC 5280 bound on serial numbers.
const maxSerialBytes = 20

// RevocationSet is the in-memory set of revoked certificates, keyed by
// serial. Lookups take a read lock and do not allocate, so the MQTT gateway
// can ask it on every connect. It is safe for concurrent use.
type RevocationSet struct {
	mu      sync.RWMutex
	m       map[string]Revoked // key: big-endian serial bytes without leading zeros
	subs    map[uint64]func(Revoked)
	nextSub uint64
}

// NewRevocationSet returns an empty set.
func NewRevocationSet() *RevocationSet {
	return &RevocationSet{m: make(map[string]Revoked), subs: make(map[uint64]func(Revoked))}
}

// serialKey writes the minimal big-endian bytes of n into buf.
func serialKey(buf *[maxSerialBytes]byte, n *big.Int) ([]byte, bool) {
	if n == nil || n.Sign() <= 0 || n.BitLen() > 8*maxSerialBytes {
		return nil, false
	}
	l := (n.BitLen() + 7) / 8
	return n.FillBytes(buf[:l]), true
}

// Lookup reports whether the certificate with serial is revoked.
func (s *RevocationSet) Lookup(serial *big.Int) (Revoked, bool) {
	var buf [maxSerialBytes]byte
	k, ok := serialKey(&buf, serial)
	if !ok {
		return Revoked{}, false
	}
	s.mu.RLock()
	r, ok := s.m[string(k)]
	s.mu.RUnlock()
	return r, ok
}

// Len returns the number of revoked certificates in the set.
func (s *RevocationSet) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.m)
}

// Add records r and, if it was not already present, tells subscribers.
func (s *RevocationSet) Add(r Revoked) error {
	n, err := ParseSerial(r.Serial)
	if err != nil {
		return err
	}
	var buf [maxSerialBytes]byte
	k, _ := serialKey(&buf, n)
	s.mu.Lock()
	_, dup := s.m[string(k)]
	if !dup {
		s.m[string(k)] = r
	}
	subs := make([]func(Revoked), 0, len(s.subs))
	for _, fn := range s.subs {
		subs = append(subs, fn)
	}
	s.mu.Unlock()
	if !dup {
		for _, fn := range subs {
			fn(r)
		}
	}
	return nil
}

// Subscribe registers fn to be called, synchronously and outside any lock,
// after each new revocation. fn must not block for long: revocation waits
// for it (the gateway should hand the work to its own goroutine). cancel
// removes the subscription.
func (s *RevocationSet) Subscribe(fn func(Revoked)) (cancel func()) {
	s.mu.Lock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = fn
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}
}

// load adds r without notifying (used when rebuilding from the store).
func (s *RevocationSet) load(r Revoked) error {
	n, err := ParseSerial(r.Serial)
	if err != nil {
		return err
	}
	var buf [maxSerialBytes]byte
	k, _ := serialKey(&buf, n)
	s.mu.Lock()
	s.m[string(k)] = r
	s.mu.Unlock()
	return nil
}

// Package audit keeps Ward's append-only, hash-chained audit log.
//
// Every entry's hash covers the previous entry's hash and all of its own
// fields, so editing, deleting or reordering entries breaks the chain at
// the first changed entry. A separate head record (sequence number and
// hash of the last entry) makes truncating the tail detectable too.
// Appends run inside the caller's store transaction: the change and the
// entry that records it commit together, or neither does.
//
// What the chain cannot show: an attacker who can rewrite the whole
// database, head included, can forge a consistent chain. Anchoring the
// head outside the database (a transparency log, a signed checkpoint) is
// the defence for that, and is not part of this package yet.
package audit

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/wardiot/ward/internal/store"
)

// Results of an audited action.
const (
	ResultOK     = "ok"     // the action happened
	ResultDenied = "denied" // refused by a security decision
	ResultFailed = "failed" // attempted and failed
)

// Entry is what a caller records. Detail must never hold secrets.
type Entry struct {
	Actor  string // "token:<id>", "device:<tenant>/<id>", "system"
	Action string // dotted verb, e.g. "tenant.create"
	Target string
	Tenant string
	Result string
	Detail string
}

// maxField bounds each text field so one caller cannot bloat the log.
const maxField = 4096

// Append adds e to the log inside tx, stamped with now.
func Append(ctx context.Context, tx store.Tx, now time.Time, e Entry) (*store.AuditRecord, error) {
	seq, head, err := tx.LockAuditHead(ctx)
	if err != nil {
		return nil, err
	}
	if e.Result == "" {
		e.Result = ResultOK
	}
	r := &store.AuditRecord{
		Seq:      seq + 1,
		Time:     now.UTC().Truncate(time.Microsecond),
		Actor:    clip(e.Actor),
		Action:   clip(e.Action),
		Target:   clip(e.Target),
		Tenant:   clip(e.Tenant),
		Result:   clip(e.Result),
		Detail:   clip(e.Detail),
		PrevHash: head,
	}
	r.Hash = Hash(r)
	if err := tx.AppendAudit(ctx, r); err != nil {
		return nil, err
	}
	return r, nil
}

func clip(s string) string {
	if len(s) > maxField {
		return s[:maxField]
	}
	return s
}

// Hash computes the chained hash of r from its fields and PrevHash. The
// encoding is length-prefixed so that no two distinct records encode alike.
func Hash(r *store.AuditRecord) []byte {
	h := sha256.New()
	h.Write([]byte("ward-audit-v1\x00"))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(r.Seq))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(r.Time.UnixNano()))
	h.Write(n[:])
	for _, f := range []string{r.Actor, r.Action, r.Target, r.Tenant, r.Result, r.Detail} {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	binary.BigEndian.PutUint64(n[:], uint64(len(r.PrevHash)))
	h.Write(n[:])
	h.Write(r.PrevHash)
	return h.Sum(nil)
}

// ErrBroken is wrapped by the error Verify returns for a broken chain.
var ErrBroken = errors.New("audit chain broken")

// BrokenError locates the first entry at which the chain does not hold.
type BrokenError struct {
	Seq    int64  // the first entry that does not verify (or the head's seq)
	Reason string // what did not hold
}

func (e *BrokenError) Error() string {
	return fmt.Sprintf("audit chain broken at entry %d: %s", e.Seq, e.Reason)
}

// Unwrap lets errors.Is(err, ErrBroken) hold.
func (e *BrokenError) Unwrap() error { return ErrBroken }

// Report summarises a successful verification.
type Report struct {
	Entries int64
	Head    []byte
}

// Verify walks the whole log. It returns a *BrokenError for the first entry
// that does not chain, or whose recorded hash does not match its contents,
// or if the log does not end at the recorded head.
func Verify(ctx context.Context, r store.Reader) (*Report, error) {
	var (
		want = int64(1)
		prev []byte
	)
	err := r.ScanAudit(ctx, func(rec *store.AuditRecord) error {
		switch {
		case rec.Seq != want:
			return &BrokenError{Seq: want, Reason: fmt.Sprintf("expected entry %d, found %d (entries deleted or reordered)", want, rec.Seq)}
		case subtle.ConstantTimeCompare(rec.PrevHash, prev) != 1 && !(len(rec.PrevHash) == 0 && len(prev) == 0):
			return &BrokenError{Seq: rec.Seq, Reason: "previous-hash link does not match the entry before it"}
		case subtle.ConstantTimeCompare(Hash(rec), rec.Hash) != 1:
			return &BrokenError{Seq: rec.Seq, Reason: "contents do not match the entry's hash (entry edited)"}
		}
		prev = rec.Hash
		want++
		return nil
	})
	if err != nil {
		return nil, err
	}
	headSeq, headHash, err := r.AuditHead(ctx)
	if err != nil {
		return nil, err
	}
	last := want - 1
	if headSeq != last || subtle.ConstantTimeCompare(headHash, prev) != 1 && !(len(headHash) == 0 && len(prev) == 0) {
		return nil, &BrokenError{Seq: headSeq, Reason: fmt.Sprintf("log ends at entry %d but the head records entry %d (entries truncated or head edited)", last, headSeq)}
	}
	return &Report{Entries: last, Head: prev}, nil
}

package audit_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/internal/store/storetest"
)

var ctx = context.Background()

func fill(t *testing.T, s store.Store, n int) {
	t.Helper()
	at := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	for i := 1; i <= n; i++ {
		err := s.InTx(ctx, func(tx store.Tx) error {
			_, err := audit.Append(ctx, tx, at.Add(time.Duration(i)*time.Second), audit.Entry{
				Actor: "token:abc", Action: "tenant.create", Target: fmt.Sprintf("t%d", i), Tenant: fmt.Sprintf("t%d", i)})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestTamperDetected edits, deletes, reorders and truncates rows directly
// in the database, on every engine, and checks that Verify names the first
// broken entry each time.
func TestTamperDetected(t *testing.T) {
	cases := map[string]struct {
		sql      []string
		brokenAt int64
	}{
		"edit/detail":       {[]string{`UPDATE audit SET detail = 'nothing to see' WHERE seq = 3`}, 3},
		"edit/actor":        {[]string{`UPDATE audit SET actor = 'token:someone-else' WHERE seq = 2`}, 2},
		"edit/time":         {[]string{`UPDATE audit SET at = at + 1 WHERE seq = 4`}, 4},
		"edit/rehash-entry": {[]string{`UPDATE audit SET target = 'x', hash = prev_hash WHERE seq = 3`}, 3},
		"delete/middle":     {[]string{`DELETE FROM audit WHERE seq = 3`}, 3},
		"delete/first":      {[]string{`DELETE FROM audit WHERE seq = 1`}, 1},
		"delete/tail":       {[]string{`DELETE FROM audit WHERE seq = 5`}, 5},
		"reorder/swap": {[]string{
			`UPDATE audit SET seq = 100 WHERE seq = 2`,
			`UPDATE audit SET seq = 2 WHERE seq = 3`,
			`UPDATE audit SET seq = 3 WHERE seq = 100`,
		}, 2},
		"head/edited": {[]string{`UPDATE audit_head SET seq = 4`}, 4},
	}
	storetest.Each(t, func(t *testing.T, s *sqlstore.DB) {
		for name, tc := range cases {
			t.Run(name, func(t *testing.T) {
				// Each case works on its own copy of a clean 5-entry log.
				if _, err := s.SQL().ExecContext(ctx, `DELETE FROM audit`); err != nil {
					t.Fatal(err)
				}
				if _, err := s.SQL().ExecContext(ctx, `UPDATE audit_head SET seq = 0, hash = ''`); err != nil {
					t.Fatal(err)
				}
				fill(t, s, 5)
				if rep, err := audit.Verify(ctx, s); err != nil || rep.Entries != 5 {
					t.Fatalf("clean log: %v %v", rep, err)
				}
				for _, q := range tc.sql {
					if _, err := s.SQL().ExecContext(ctx, q); err != nil {
						t.Fatalf("%s: %v", q, err)
					}
				}
				_, err := audit.Verify(ctx, s)
				var be *audit.BrokenError
				if !errors.As(err, &be) || !errors.Is(err, audit.ErrBroken) {
					t.Fatalf("tampering not detected: %v", err)
				}
				if be.Seq != tc.brokenAt {
					t.Fatalf("broken at %d (%s), want %d", be.Seq, be.Reason, tc.brokenAt)
				}
			})
		}
	})
}

func TestEmptyLogVerifies(t *testing.T) {
	s := storetest.SQLite(t)
	rep, err := audit.Verify(ctx, s)
	if err != nil || rep.Entries != 0 {
		t.Fatalf("%v %v", rep, err)
	}
}

func TestFieldsAreNotAmbiguous(t *testing.T) {
	a := &store.AuditRecord{Seq: 1, Actor: "ab", Action: "c"}
	b := &store.AuditRecord{Seq: 1, Actor: "a", Action: "bc"}
	if string(audit.Hash(a)) == string(audit.Hash(b)) {
		t.Fatal("field boundaries are not part of the hash")
	}
}

// Package storetest is the one conformance suite every store.Store
// implementation must pass. The sqlite and postgres packages run it against
// real databases.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
)

// extra holds suites registered by the other files of this package.
var extra = map[string]func(t *testing.T, s store.Store){}

// Run runs the suite. open must return a fresh, empty, migrated store.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := map[string]func(t *testing.T, s store.Store){
		"tenants/crud":             testTenants,
		"tenants/conflict":         testTenantConflict,
		"tenants/delete-cascades":  testTenantDeleteCascades,
		"tokens/crud":              testTokens,
		"tokens/use-once":          testTokenUseOnce,
		"tokens/use-once-racing":   testTokenUseOnceRacing,
		"tx/rollback":              testRollback,
		"audit/append-and-scan":    testAudit,
		"audit/concurrent-appends": testAuditConcurrent,
		"audit/scan-pages":         testAuditScanPages,
		"time/roundtrip-precision": testTimes,
	}
	for name, fn := range extra {
		tests[name] = fn
	}
	for name, fn := range tests {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			fn(t, s)
		})
	}
}

var ctx = context.Background()

func mustTx(t *testing.T, s store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := s.InTx(ctx, fn); err != nil {
		t.Fatal(err)
	}
}

func testTenants(t *testing.T, s store.Store) {
	now := time.Now().UTC()
	mustTx(t, s, func(tx store.Tx) error {
		return tx.CreateTenant(ctx, &store.Tenant{ID: "acme", Name: "Acme", CreatedAt: now, WrappedKey: []byte{1, 2, 3}})
	})
	got, err := s.GetTenant(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "Acme" || !bytes.Equal(got.WrappedKey, []byte{1, 2, 3}) || !got.CreatedAt.Equal(now.Truncate(time.Nanosecond)) {
		t.Fatalf("got %+v", got)
	}
	if _, err := s.GetTenant(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing tenant: got %v, want ErrNotFound", err)
	}
	mustTx(t, s, func(tx store.Tx) error {
		return tx.CreateTenant(ctx, &store.Tenant{ID: "beta", Name: "B", CreatedAt: now, WrappedKey: []byte{4}})
	})
	list, err := s.ListTenants(ctx)
	if err != nil || len(list) != 2 || list[0].ID != "acme" || list[1].ID != "beta" {
		t.Fatalf("list = %v, %v", list, err)
	}
	mustTx(t, s, func(tx store.Tx) error { return tx.DeleteTenant(ctx, "acme") })
	if _, err := s.GetTenant(ctx, "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted tenant still there: %v", err)
	}
	err = s.InTx(ctx, func(tx store.Tx) error { return tx.DeleteTenant(ctx, "acme") })
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete twice: got %v, want ErrNotFound", err)
	}
}

func testTenantConflict(t *testing.T, s store.Store) {
	tn := &store.Tenant{ID: "dup", Name: "x", CreatedAt: time.Now(), WrappedKey: []byte{1}}
	mustTx(t, s, func(tx store.Tx) error { return tx.CreateTenant(ctx, tn) })
	err := s.InTx(ctx, func(tx store.Tx) error { return tx.CreateTenant(ctx, tn) })
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate tenant: got %v, want ErrConflict", err)
	}
}

func testTenantDeleteCascades(t *testing.T, s store.Store) {
	mustTx(t, s, func(tx store.Tx) error {
		if err := tx.CreateTenant(ctx, &store.Tenant{ID: "t1", Name: "x", CreatedAt: time.Now(), WrappedKey: []byte{1}}); err != nil {
			return err
		}
		return tx.CreateToken(ctx, &store.Token{ID: "tk1", Hash: []byte{9}, Kind: store.TokenAPI, Tenant: "t1", Role: "viewer", CreatedAt: time.Now()})
	})
	mustTx(t, s, func(tx store.Tx) error { return tx.DeleteTenant(ctx, "t1") })
	if _, err := s.GetToken(ctx, "tk1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("token of deleted tenant survives: %v", err)
	}
}

func testTokens(t *testing.T, s store.Store) {
	now := time.Now().UTC()
	tk := &store.Token{ID: "abc", Hash: []byte("h"), Kind: store.TokenAPI, Role: "admin", Name: "n", CreatedBy: "system",
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	mustTx(t, s, func(tx store.Tx) error { return tx.CreateToken(ctx, tk) })
	got, err := s.GetToken(ctx, "abc")
	if err != nil {
		t.Fatal(err)
	}
	if got.Role != "admin" || !got.ExpiresAt.Equal(tk.ExpiresAt) || !got.RevokedAt.IsZero() || got.Tenant != "" {
		t.Fatalf("got %+v", got)
	}
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.CreateToken(ctx, tk) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate token: %v", err)
	}
	mustTx(t, s, func(tx store.Tx) error { return tx.RevokeToken(ctx, "abc", now) })
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.RevokeToken(ctx, "abc", now) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("revoke twice: %v", err)
	}
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.RevokeToken(ctx, "zzz", now) }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoke missing: %v", err)
	}
	got, _ = s.GetToken(ctx, "abc")
	if got.RevokedAt.IsZero() {
		t.Fatal("revocation not stored")
	}
	list, err := s.ListTokens(ctx, store.TokenAPI, "")
	if err != nil || len(list) != 1 {
		t.Fatalf("list = %v %v", list, err)
	}
	if list, _ := s.ListTokens(ctx, store.TokenEnroll, ""); len(list) != 0 {
		t.Fatalf("kind filter broken: %v", list)
	}
}

func testTokenUseOnce(t *testing.T, s store.Store) {
	mustTx(t, s, func(tx store.Tx) error {
		return tx.CreateToken(ctx, &store.Token{ID: "e1", Hash: []byte("h"), Kind: store.TokenEnroll, Tenant: "t", Device: "d", CreatedAt: time.Now()})
	})
	mustTx(t, s, func(tx store.Tx) error { return tx.UseToken(ctx, "e1", time.Now()) })
	err := s.InTx(ctx, func(tx store.Tx) error { return tx.UseToken(ctx, "e1", time.Now()) })
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second use: got %v, want ErrConflict", err)
	}
}

func testTokenUseOnceRacing(t *testing.T, s store.Store) {
	mustTx(t, s, func(tx store.Tx) error {
		return tx.CreateToken(ctx, &store.Token{ID: "e2", Hash: []byte("h"), Kind: store.TokenEnroll, Tenant: "t", Device: "d", CreatedAt: time.Now()})
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.InTx(ctx, func(tx store.Tx) error { return tx.UseToken(ctx, "e2", time.Now()) }) == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("token used %d times by racing transactions, want exactly 1", ok)
	}
}

func testRollback(t *testing.T, s store.Store) {
	boom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Tx) error {
		if err := tx.CreateTenant(ctx, &store.Tenant{ID: "gone", Name: "x", CreatedAt: time.Now(), WrappedKey: []byte{1}}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx returned %v", err)
	}
	if _, err := s.GetTenant(ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("rolled-back tenant is visible")
	}
}

func appendN(t *testing.T, s store.Store, n int, tenant string) {
	t.Helper()
	for i := 0; i < n; i++ {
		mustTx(t, s, func(tx store.Tx) error {
			seq, head, err := tx.LockAuditHead(ctx)
			if err != nil {
				return err
			}
			return tx.AppendAudit(ctx, &store.AuditRecord{Seq: seq + 1, Time: time.Now(), Actor: "a", Action: "x",
				Tenant: tenant, Result: "ok", PrevHash: head, Hash: []byte(fmt.Sprintf("h%d", seq+1))})
		})
	}
}

func testAudit(t *testing.T, s store.Store) {
	seq, head, err := s.AuditHead(ctx)
	if err != nil || seq != 0 || len(head) != 0 {
		t.Fatalf("empty head = %d %x %v", seq, head, err)
	}
	appendN(t, s, 3, "t1")
	appendN(t, s, 2, "t2")
	seq, head, _ = s.AuditHead(ctx)
	if seq != 5 || string(head) != "h5" {
		t.Fatalf("head = %d %q", seq, head)
	}
	var seen []int64
	if err := s.ScanAudit(ctx, func(r *store.AuditRecord) error { seen = append(seen, r.Seq); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[1 2 3 4 5]" {
		t.Fatalf("scan order %v", seen)
	}
	list, err := s.ListAudit(ctx, store.AuditFilter{Tenant: "t2"})
	if err != nil || len(list) != 2 || list[0].Seq != 4 {
		t.Fatalf("filtered list %v %v", list, err)
	}
	list, _ = s.ListAudit(ctx, store.AuditFilter{AfterSeq: 3, Limit: 1})
	if len(list) != 1 || list[0].Seq != 4 {
		t.Fatalf("paged list %v", list)
	}
	// An append that does not extend the head is refused.
	err = s.InTx(ctx, func(tx store.Tx) error {
		return tx.AppendAudit(ctx, &store.AuditRecord{Seq: 9, Time: time.Now(), PrevHash: []byte("x"), Hash: []byte("y")})
	})
	if err == nil {
		t.Fatal("append with a gap accepted")
	}
}

func testAuditConcurrent(t *testing.T, s store.Store) {
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				errs <- s.InTx(ctx, func(tx store.Tx) error {
					seq, head, err := tx.LockAuditHead(ctx)
					if err != nil {
						return err
					}
					return tx.AppendAudit(ctx, &store.AuditRecord{Seq: seq + 1, Time: time.Now(), PrevHash: head,
						Hash: []byte(fmt.Sprintf("h%d", seq+1))})
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var prev []byte
	n := int64(0)
	_ = s.ScanAudit(ctx, func(r *store.AuditRecord) error {
		n++
		if r.Seq != n || !bytes.Equal(r.PrevHash, prev) {
			t.Errorf("entry %d: seq %d prev %q want %q", n, r.Seq, r.PrevHash, prev)
		}
		prev = r.Hash
		return nil
	})
	if n != 40 {
		t.Fatalf("%d entries, want 40", n)
	}
}

func testAuditScanPages(t *testing.T, s store.Store) {
	appendN(t, s, 2503, "")
	n := 0
	if err := s.ScanAudit(ctx, func(r *store.AuditRecord) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 2503 {
		t.Fatalf("scanned %d, want 2503", n)
	}
}

func testTimes(t *testing.T, s store.Store) {
	at := time.Date(2026, 11, 21, 10, 11, 12, 123456789, time.UTC)
	mustTx(t, s, func(tx store.Tx) error {
		return tx.CreateTenant(ctx, &store.Tenant{ID: "tm", Name: "x", CreatedAt: at, WrappedKey: []byte{1}})
	})
	got, _ := s.GetTenant(ctx, "tm")
	if !got.CreatedAt.Equal(at) {
		t.Fatalf("time %v, want %v", got.CreatedAt, at)
	}
}

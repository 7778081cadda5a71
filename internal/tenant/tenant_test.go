package tenant_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/sqlite"
	"github.com/wardiot/ward/internal/tenant"
)

var ctx = context.Background()

// clock is an injected clock tests move by hand.
type clock struct{ t atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.t.Load()).UTC() }
func (c *clock) Advance(d time.Duration) { c.t.Add(int64(d)) }

func openStore(t *testing.T) (store.Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := sqlite.Open(ctx, filepath.Join(dir, "ward.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

// TestDeletedTenantDataIsUnreadable is the crypto-shredding test: ciphertext
// sealed before a tenant's deletion cannot be opened afterwards by any path
// the server has: the cached sealer, a fresh lookup, a new server process
// with the same KEK, or a new tenant re-created under the same ID. The
// wrapped data key is gone from the database file and its WAL too.
func TestDeletedTenantDataIsUnreadable(t *testing.T) {
	s, dir := openStore(t)
	kek, err := tenant.LoadOrCreateFileKEK(filepath.Join(dir, "kek.key"))
	if err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	svc := tenant.NewService(s, kek, clk.Now)
	tn, err := svc.Create(ctx, "test", "doomed", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Create(ctx, "test", "survivor", ""); err != nil {
		t.Fatal(err)
	}
	sealer, err := svc.Sealer(ctx, "doomed")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := sealer.Seal([]byte("device secret"), []byte("rec-1"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := sealer.Open(ct, []byte("rec-1")); err != nil || string(pt) != "device secret" {
		t.Fatalf("open before delete: %q %v", pt, err)
	}
	// The ciphertext cannot be moved to another record or tenant.
	if _, err := sealer.Open(ct, []byte("rec-2")); !errors.Is(err, tenant.ErrUnwrap) {
		t.Fatalf("open with other aad: %v", err)
	}
	other, _ := svc.Sealer(ctx, "survivor")
	if _, err := other.Open(ct, []byte("rec-1")); !errors.Is(err, tenant.ErrUnwrap) {
		t.Fatalf("open with other tenant: %v", err)
	}

	if err := svc.Delete(ctx, "test", "doomed"); err != nil {
		t.Fatal(err)
	}
	if _, err := sealer.Open(ct, []byte("rec-1")); err == nil {
		t.Fatal("cached sealer still opens after delete")
	}
	if _, err := svc.Sealer(ctx, "doomed"); !errors.Is(err, tenant.ErrNoTenant) {
		t.Fatalf("sealer after delete: %v", err)
	}
	fresh := tenant.NewService(s, kek, clk.Now)
	if _, err := fresh.Sealer(ctx, "doomed"); !errors.Is(err, tenant.ErrNoTenant) {
		t.Fatalf("fresh service: %v", err)
	}
	if _, err := svc.Create(ctx, "test", "doomed", ""); err != nil {
		t.Fatal(err)
	}
	reborn, _ := svc.Sealer(ctx, "doomed")
	if _, err := reborn.Open(ct, []byte("rec-1")); !errors.Is(err, tenant.ErrUnwrap) {
		t.Fatalf("re-created tenant opens old ciphertext: %v", err)
	}
	// The old wrapped key bytes are nowhere in the database files.
	for _, f := range []string{"ward.db", "ward.db-wal"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, tn.WrappedKey) {
			t.Fatalf("%s still holds the deleted tenant's wrapped data key", f)
		}
	}
}

func TestKEKFileMustBePrivate(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "kek.key")
	if _, err := tenant.LoadOrCreateFileKEK(p); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("kek mode %v", fi.Mode().Perm())
	}
	os.Chmod(p, 0o644)
	if _, err := tenant.LoadOrCreateFileKEK(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable KEK accepted: %v", err)
	}
}

func TestTokens(t *testing.T) {
	s, dir := openStore(t)
	kek, _ := tenant.LoadOrCreateFileKEK(filepath.Join(dir, "kek.key"))
	clk := newClock()
	svc := tenant.NewService(s, kek, clk.Now)
	toks := tenant.NewTokens(s, clk.Now)
	svc.Create(ctx, "test", "acme", "")
	svc.Create(ctx, "test", "globex", "")
	adminSecret, _, err := toks.Create(ctx, nil, tenant.NewTokenRequest{Role: tenant.RoleAdmin})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := toks.Authenticate(ctx, adminSecret)
	if err != nil {
		t.Fatal(err)
	}

	tests := map[string]func(t *testing.T){
		"ok/authenticates": func(t *testing.T) {
			sec, tk, err := toks.Create(ctx, admin, tenant.NewTokenRequest{Role: tenant.RoleViewer, Tenant: "acme"})
			if err != nil {
				t.Fatal(err)
			}
			if len(sec) < 40 || strings.Contains(string(tk.Hash), sec) {
				t.Fatalf("weak or stored secret")
			}
			p, err := toks.Authenticate(ctx, sec)
			if err != nil || p.Role != tenant.RoleViewer || p.Tenant != "acme" {
				t.Fatalf("got %v %v", p, err)
			}
		},
		"fail/wrong-secret": func(t *testing.T) {
			sec, _, _ := toks.Create(ctx, admin, tenant.NewTokenRequest{Role: tenant.RoleViewer})
			bad := sec[:len(sec)-1] + string(rune('A'+(sec[len(sec)-1]+1)%26))
			if _, err := toks.Authenticate(ctx, bad); !errors.Is(err, tenant.ErrUnauthenticated) {
				t.Fatalf("got %v", err)
			}
		},
		"fail/garbage": func(t *testing.T) {
			for _, g := range []string{"", "x", "wardapi_", "wardapi_zzzzzzzzzzzzzzzz_abc", strings.Repeat("a", 10000)} {
				if _, err := toks.Authenticate(ctx, g); !errors.Is(err, tenant.ErrUnauthenticated) {
					t.Fatalf("%q: got %v", g, err)
				}
			}
		},
		"fail/expired": func(t *testing.T) {
			sec, _, _ := toks.Create(ctx, admin, tenant.NewTokenRequest{Role: tenant.RoleViewer, TTL: time.Hour})
			if _, err := toks.Authenticate(ctx, sec); err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Hour)
			if _, err := toks.Authenticate(ctx, sec); !errors.Is(err, tenant.ErrUnauthenticated) {
				t.Fatalf("expired token accepted: %v", err)
			}
		},
		"fail/revoked": func(t *testing.T) {
			sec, tk, _ := toks.Create(ctx, admin, tenant.NewTokenRequest{Role: tenant.RoleViewer})
			if err := toks.Revoke(ctx, admin, tk.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := toks.Authenticate(ctx, sec); !errors.Is(err, tenant.ErrUnauthenticated) {
				t.Fatalf("revoked token accepted: %v", err)
			}
		},
		"fail/enroll-token-is-not-api-token": func(t *testing.T) {
			sec, _, err := toks.Create(ctx, admin, tenant.NewTokenRequest{Kind: store.TokenEnroll, Tenant: "acme", Device: "d1", TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := toks.Authenticate(ctx, sec); !errors.Is(err, tenant.ErrUnauthenticated) {
				t.Fatalf("enrollment token used as API token: %v", err)
			}
		},
		"fail/tenant-admin-cannot-mint-global": func(t *testing.T) {
			sec, _, _ := toks.Create(ctx, admin, tenant.NewTokenRequest{Role: tenant.RoleAdmin, Tenant: "acme"})
			ta, _ := toks.Authenticate(ctx, sec)
			if _, _, err := toks.Create(ctx, ta, tenant.NewTokenRequest{Role: tenant.RoleAdmin}); !errors.Is(err, tenant.ErrForbidden) {
				t.Fatalf("escalation: %v", err)
			}
			if _, _, err := toks.Create(ctx, ta, tenant.NewTokenRequest{Role: tenant.RoleViewer, Tenant: "globex"}); !errors.Is(err, tenant.ErrForbidden) {
				t.Fatalf("cross-tenant mint: %v", err)
			}
		},
		"fail/operator-cannot-mint-api-tokens": func(t *testing.T) {
			sec, _, _ := toks.Create(ctx, admin, tenant.NewTokenRequest{Role: tenant.RoleOperator, Tenant: "acme"})
			op, _ := toks.Authenticate(ctx, sec)
			if _, _, err := toks.Create(ctx, op, tenant.NewTokenRequest{Role: tenant.RoleViewer, Tenant: "acme"}); !errors.Is(err, tenant.ErrForbidden) {
				t.Fatalf("got %v", err)
			}
		},
		"redeem/once-and-bound": func(t *testing.T) {
			sec, _, _ := toks.Create(ctx, admin, tenant.NewTokenRequest{Kind: store.TokenEnroll, Tenant: "acme", Device: "d7", TTL: time.Hour})
			redeem := func(tn, dev string) error {
				return s.InTx(ctx, func(tx store.Tx) error { _, err := toks.Redeem(ctx, tx, sec, tn, dev); return err })
			}
			if err := redeem("acme", "other"); !errors.Is(err, tenant.ErrTokenWrongDevice) {
				t.Fatalf("other device: %v", err)
			}
			if err := redeem("globex", "d7"); !errors.Is(err, tenant.ErrTokenWrongTenant) {
				t.Fatalf("other tenant: %v", err)
			}
			if err := redeem("acme", "d7"); err != nil {
				t.Fatalf("first use: %v", err)
			}
			if err := redeem("acme", "d7"); !errors.Is(err, tenant.ErrTokenUsed) {
				t.Fatalf("second use: %v", err)
			}
		},
	}
	for name, fn := range tests {
		t.Run(name, fn)
	}
}

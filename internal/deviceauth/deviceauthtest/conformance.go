package deviceauthtest

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/deviceauth"
)

// RunStoreTests checks that a [deviceauth.Store] keeps the contract. SQL
// implementations run it against a fresh database per test.
func RunStoreTests(t *testing.T, newStore func(t *testing.T) deviceauth.Store) {
	ctx := context.Background()
	// Whole seconds: SQL backends may keep less than nanoseconds.
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := func(kind deviceauth.Kind, family string) deviceauth.Token {
		var h deviceauth.Hash
		rand.Read(h[:])
		return deviceauth.Token{Hash: h, Kind: kind, Family: family, Tenant: "acme", Device: "dev-1",
			CertSerial: "1f2e", IssuedAt: now, ExpiresAt: now.Add(10 * time.Minute),
			FamilyExpiresAt: now.Add(30 * 24 * time.Hour)}
	}
	same := func(t *testing.T, got *deviceauth.Token, want deviceauth.Token) {
		t.Helper()
		if got == nil {
			t.Fatal("got no token")
		}
		if got.Hash != want.Hash || got.Kind != want.Kind || got.Family != want.Family ||
			got.Tenant != want.Tenant || got.Device != want.Device || got.CertSerial != want.CertSerial ||
			!got.IssuedAt.Equal(want.IssuedAt) || !got.ExpiresAt.Equal(want.ExpiresAt) ||
			!got.FamilyExpiresAt.Equal(want.FamilyExpiresAt) {
			t.Fatalf("token did not round-trip:\n got %+v\nwant %+v", *got, want)
		}
	}

	t.Run("ok/access-token-round-trips", func(t *testing.T) {
		s := newStore(t)
		a, r := tok(deviceauth.KindAccess, "f1"), tok(deviceauth.KindRefresh, "f1")
		if err := s.PutTokens(ctx, []deviceauth.Token{a, r}); err != nil {
			t.Fatal(err)
		}
		got, err := s.AccessToken(ctx, a.Hash)
		if err != nil {
			t.Fatal(err)
		}
		same(t, got, a)
	})
	t.Run("fail/access-lookup-of-refresh-token", func(t *testing.T) {
		s := newStore(t)
		r := tok(deviceauth.KindRefresh, "f1")
		if err := s.PutTokens(ctx, []deviceauth.Token{r}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AccessToken(ctx, r.Hash); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("AccessToken(refresh hash) = %v, want ErrNotFound", err)
		}
		if _, err := s.AccessToken(ctx, deviceauth.Hash{1}); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("AccessToken(unknown) = %v, want ErrNotFound", err)
		}
	})
	t.Run("fail/duplicate-hash-is-all-or-nothing", func(t *testing.T) {
		s := newStore(t)
		a := tok(deviceauth.KindAccess, "f1")
		if err := s.PutTokens(ctx, []deviceauth.Token{a}); err != nil {
			t.Fatal(err)
		}
		b := tok(deviceauth.KindAccess, "f2")
		if err := s.PutTokens(ctx, []deviceauth.Token{b, a}); err == nil {
			t.Fatal("PutTokens with an existing hash succeeded")
		}
		if _, err := s.AccessToken(ctx, b.Hash); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("token of a failed PutTokens is present: %v", err)
		}
	})
	t.Run("ok/refresh-used-once-then-reused", func(t *testing.T) {
		s := newStore(t)
		r := tok(deviceauth.KindRefresh, "f1")
		if err := s.PutTokens(ctx, []deviceauth.Token{r}); err != nil {
			t.Fatal(err)
		}
		got, err := s.UseRefreshToken(ctx, r.Hash, now)
		if err != nil {
			t.Fatal(err)
		}
		same(t, got, r)
		got, err = s.UseRefreshToken(ctx, r.Hash, now.Add(time.Second))
		if !errors.Is(err, deviceauth.ErrReused) {
			t.Fatalf("second use: err = %v, want ErrReused", err)
		}
		same(t, got, r)
		if _, err := s.UseRefreshToken(ctx, deviceauth.Hash{2}, now); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("unknown refresh token: %v, want ErrNotFound", err)
		}
	})
	t.Run("fail/refresh-use-of-access-token", func(t *testing.T) {
		s := newStore(t)
		a := tok(deviceauth.KindAccess, "f1")
		if err := s.PutTokens(ctx, []deviceauth.Token{a}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.UseRefreshToken(ctx, a.Hash, now); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("UseRefreshToken(access hash) = %v, want ErrNotFound", err)
		}
	})
	t.Run("ok/concurrent-refresh-use-succeeds-once", func(t *testing.T) {
		s := newStore(t)
		r := tok(deviceauth.KindRefresh, "f1")
		if err := s.PutTokens(ctx, []deviceauth.Token{r}); err != nil {
			t.Fatal(err)
		}
		var ok, reused atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				_, err := s.UseRefreshToken(ctx, r.Hash, now)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, deviceauth.ErrReused):
					reused.Add(1)
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 1 || reused.Load() != 15 {
			t.Fatalf("16 concurrent uses: %d succeeded, %d reused; want 1 and 15", ok.Load(), reused.Load())
		}
	})
	t.Run("ok/revoke-family", func(t *testing.T) {
		s := newStore(t)
		a, used, fresh := tok(deviceauth.KindAccess, "f1"), tok(deviceauth.KindRefresh, "f1"), tok(deviceauth.KindRefresh, "f1")
		other := tok(deviceauth.KindAccess, "f2")
		if err := s.PutTokens(ctx, []deviceauth.Token{a, used, fresh, other}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.UseRefreshToken(ctx, used.Hash, now); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeFamily(ctx, "f1"); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeFamily(ctx, "f1"); err != nil {
			t.Fatalf("revoking twice: %v", err)
		}
		if err := s.RevokeFamily(ctx, "no-such-family"); err != nil {
			t.Fatalf("revoking an unknown family: %v", err)
		}
		if _, err := s.AccessToken(ctx, a.Hash); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("access token of revoked family: %v, want ErrNotFound", err)
		}
		if _, err := s.UseRefreshToken(ctx, fresh.Hash, now); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("unused refresh token of revoked family: %v, want ErrNotFound", err)
		}
		if got, err := s.UseRefreshToken(ctx, used.Hash, now); !errors.Is(err, deviceauth.ErrReused) || got == nil {
			t.Fatalf("used refresh token of revoked family: (%v, %v), want the token and ErrReused", got, err)
		}
		if _, err := s.AccessToken(ctx, other.Hash); err != nil {
			t.Fatalf("another family was revoked too: %v", err)
		}
		late := tok(deviceauth.KindAccess, "f1")
		if err := s.PutTokens(ctx, []deviceauth.Token{late}); err == nil {
			if _, err := s.AccessToken(ctx, late.Hash); !errors.Is(err, deviceauth.ErrNotFound) {
				t.Fatalf("token put into a revoked family is usable: %v", err)
			}
		}
	})
	t.Run("ok/assertion-id-single-use-until-expiry", func(t *testing.T) {
		s := newStore(t)
		k := deviceauth.Hash{9}
		exp := now.Add(5 * time.Minute)
		if err := s.UseAssertionID(ctx, k, exp, now); err != nil {
			t.Fatal(err)
		}
		if err := s.UseAssertionID(ctx, k, exp, now.Add(time.Minute)); !errors.Is(err, deviceauth.ErrReused) {
			t.Fatalf("second use: %v, want ErrReused", err)
		}
		if err := s.UseAssertionID(ctx, deviceauth.Hash{8}, exp, now); err != nil {
			t.Fatalf("another ID: %v", err)
		}
		if err := s.UseAssertionID(ctx, k, exp.Add(5*time.Minute), exp); err != nil {
			t.Fatalf("use after expiry: %v", err)
		}
	})
	t.Run("ok/concurrent-assertion-id-succeeds-once", func(t *testing.T) {
		s := newStore(t)
		var ok atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				err := s.UseAssertionID(ctx, deviceauth.Hash{7}, now.Add(time.Minute), now)
				switch {
				case err == nil:
					ok.Add(1)
				case !errors.Is(err, deviceauth.ErrReused):
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 1 {
			t.Fatalf("16 concurrent uses of one assertion ID: %d succeeded, want 1", ok.Load())
		}
	})
}

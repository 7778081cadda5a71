package deviceauthsql_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/deviceauth"
	"github.com/wardiot/ward/internal/deviceauth/deviceauthtest"
	"github.com/wardiot/ward/internal/store/deviceauthsql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/internal/store/storetest"
)

func newStore(open func(testing.TB) *sqlstore.DB) func(t *testing.T) deviceauth.Store {
	return func(t *testing.T) deviceauth.Store {
		db := open(t)
		return deviceauthsql.New(db.SQL(), db.SQLDialect())
	}
}

func TestStoreConformanceSQLite(t *testing.T) {
	deviceauthtest.RunStoreTests(t, newStore(storetest.SQLite))
}

func TestStoreConformancePostgres(t *testing.T) {
	storetest.PostgresDSN(t)
	deviceauthtest.RunStoreTests(t, newStore(storetest.Postgres))
}

// TestPrune checks that expired tokens, assertion IDs and spent
// revocations go, and that a revocation stays while the family has tokens.
func TestPrune(t *testing.T) {
	storetest.Each(t, func(t *testing.T, db *sqlstore.DB) {
		ctx := context.Background()
		s := deviceauthsql.New(db.SQL(), db.SQLDialect())
		now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
		tok := func(b byte, family string, exp, famExp time.Time) deviceauth.Token {
			return deviceauth.Token{Hash: deviceauth.Hash{b}, Kind: deviceauth.KindRefresh, Family: family, Tenant: "acme",
				Device: "d", CertSerial: "01", IssuedAt: now.Add(-time.Hour), ExpiresAt: exp, FamilyExpiresAt: famExp}
		}
		old, live := tok(1, "old", now.Add(-time.Minute), now.Add(-time.Second)), tok(2, "live", now.Add(time.Minute), now.Add(time.Hour))
		if err := s.PutTokens(ctx, []deviceauth.Token{old, live}); err != nil {
			t.Fatal(err)
		}
		s.RevokeFamily(ctx, "old")
		s.RevokeFamily(ctx, "live")
		s.RevokeFamily(ctx, "unknown") // no deadline known: kept
		s.UseAssertionID(ctx, deviceauth.Hash{3}, now.Add(-time.Second), now.Add(-time.Minute))
		s.UseAssertionID(ctx, deviceauth.Hash{4}, now.Add(time.Minute), now)
		n, err := s.Prune(ctx, now)
		if err != nil || n != 3 { // token 1, assertion 3, revocation "old"
			t.Fatalf("Prune = %d, %v; want 3 rows", n, err)
		}
		if _, err := s.UseRefreshToken(ctx, live.Hash, now); !errors.Is(err, deviceauth.ErrNotFound) {
			t.Fatalf("revocation of a family with live tokens was pruned: %v", err)
		}
		if err := s.UseAssertionID(ctx, deviceauth.Hash{4}, now.Add(time.Minute), now); !errors.Is(err, deviceauth.ErrReused) {
			t.Fatalf("live assertion ID was pruned: %v", err)
		}
		if err := s.PutTokens(ctx, []deviceauth.Token{tok(5, "unknown", now.Add(time.Minute), now.Add(time.Hour))}); err == nil {
			t.Fatal("revocation of a family without a deadline was pruned")
		}
	})
}

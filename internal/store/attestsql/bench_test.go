package attestsql_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/internal/store/storetest"
)

// BenchmarkAttestationRound measures the store work of one attestation:
// issue a challenge, take it, advance the counters, store the result.
func BenchmarkAttestationRound(b *testing.B) {
	for _, e := range []struct {
		name string
		open func(testing.TB) *sqlstore.DB
	}{{"SQLite", storetest.SQLite}, {"Postgres", storetest.Postgres}} {
		b.Run(e.name, func(b *testing.B) {
			s := open(e.open(b))
			ctx := context.Background()
			now := time.Unix(1_900_000_000, 0)
			b.ResetTimer()
			for i := range b.N {
				dev := fmt.Sprint("d", i%1000)
				id := fmt.Sprint("c", i)
				c := attest.Challenge{Tenant: "t1", Device: dev, ID: id, Nonce: make([]byte, 32), PCRs: []int{0, 7}, Expires: now.Add(time.Minute)}
				if err := s.PutChallenge(ctx, c, now, attest.MaxPendingChallenges); err != nil {
					b.Fatal(err)
				}
				if _, err := s.TakeChallenge(ctx, "t1", dev, id); err != nil {
					b.Fatal(err)
				}
				if _, _, err := s.AdvanceCounters(ctx, "t1", dev, attest.Counters{Clock: uint64(i)}); err != nil {
					b.Fatal(err)
				}
				r := attest.Result{Tenant: "t1", Device: dev, ChallengeID: id, Verdict: attest.Verdict{Result: "pass", Time: now}}
				if err := s.PutResult(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

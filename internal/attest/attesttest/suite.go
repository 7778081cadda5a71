package attesttest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/attest"
)

// Subject is a store under test and the one write attest.Store does not
// have (policies are set by operators, outside the verifier).
type Subject struct {
	Store attest.Store
	// SetPolicy sets a group's policy (group "" for the tenant default).
	SetPolicy func(ctx context.Context, tenant, group string, p attest.Policy) error
}

// RunStoreTests checks every attest.Store contract against stores made by
// open, a fresh empty one per subtest: single-use takes (also under
// concurrency), the pending-challenge bound (also under concurrency),
// replacement semantics, tenant and device isolation, and
// keep-the-highest TPM counters.
func RunStoreTests(t *testing.T, open func(t *testing.T) Subject) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s Subject)
	}{
		{"ChallengeTakeOnce", testChallengeTakeOnce},
		{"ChallengeLimit", testChallengeLimit},
		{"ChallengeExpiredFreesSlot", testChallengeExpired},
		{"ChallengeConcurrentTake", testChallengeConcurrentTake},
		{"ChallengeConcurrentPut", testChallengeConcurrentPut},
		{"ActivationTakeOnce", testActivationTakeOnce},
		{"ActivationConcurrentTake", testActivationConcurrentTake},
		{"AK", testAK},
		{"RefValues", testRefValues},
		{"Result", testResult},
		{"CountersKeepHighest", testCountersKeepHighest},
		{"CountersConcurrent", testCountersConcurrent},
		{"Policy", testPolicy},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// Times are whole UTC instants so that every store returns them equal.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)

func challenge(tenant, device, id string) attest.Challenge {
	return attest.Challenge{Tenant: tenant, Device: device, ID: id,
		Nonce: []byte("nonce-" + id), PCRs: []int{0, 2, 7}, Expires: t0.Add(time.Minute)}
}

func mustEqual[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, attest.ErrNotFound) {
		t.Fatalf("%s: got %v, want ErrNotFound", what, err)
	}
}

func testChallengeTakeOnce(t *testing.T, s Subject) {
	ctx := context.Background()
	c := challenge("t1", "d1", "c1")
	r := challenge("t1", "d1", "c2")
	r.BoundSPKI = []byte("spki-hash")
	for _, x := range []attest.Challenge{c, r} {
		if err := s.Store.PutChallenge(ctx, x, t0, 4); err != nil {
			t.Fatal(err)
		}
	}
	for _, miss := range [][3]string{{"t2", "d1", "c1"}, {"t1", "d2", "c1"}, {"t1", "d1", "c3"}} {
		_, err := s.Store.TakeChallenge(ctx, miss[0], miss[1], miss[2])
		wantNotFound(t, fmt.Sprint("take ", miss), err)
	}
	got, err := s.Store.TakeChallenge(ctx, "t1", "d1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "scheduled challenge", got, c)
	got, err = s.Store.TakeChallenge(ctx, "t1", "d1", "c2")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "renewal challenge", got, r)
	_, err = s.Store.TakeChallenge(ctx, "t1", "d1", "c1")
	wantNotFound(t, "second take", err)
}

func testChallengeLimit(t *testing.T, s Subject) {
	ctx := context.Background()
	for i := range 3 {
		if err := s.Store.PutChallenge(ctx, challenge("t1", "d1", fmt.Sprint("c", i)), t0, 3); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Store.PutChallenge(ctx, challenge("t1", "d1", "c3"), t0, 3)
	if !errors.Is(err, attest.ErrTooManyChallenges) {
		t.Fatalf("fourth challenge: got %v, want ErrTooManyChallenges", err)
	}
	// Other devices and tenants have their own bound.
	for _, k := range [][2]string{{"t1", "d2"}, {"t2", "d1"}} {
		if err := s.Store.PutChallenge(ctx, challenge(k[0], k[1], "c0"), t0, 3); err != nil {
			t.Fatalf("%v: %v", k, err)
		}
	}
	// Taking one frees its place.
	if _, err := s.Store.TakeChallenge(ctx, "t1", "d1", "c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Store.PutChallenge(ctx, challenge("t1", "d1", "c3"), t0, 3); err != nil {
		t.Fatalf("after a take: %v", err)
	}
	for _, id := range []string{"c0", "c2", "c3"} {
		if _, err := s.Store.TakeChallenge(ctx, "t1", "d1", id); err != nil {
			t.Fatalf("take %s: %v", id, err)
		}
	}
}

func testChallengeExpired(t *testing.T, s Subject) {
	ctx := context.Background()
	old := challenge("t1", "d1", "old")
	old.Expires = t0
	if err := s.Store.PutChallenge(ctx, old, t0, 1); err != nil {
		t.Fatal(err)
	}
	// At its expiry instant it still counts.
	if err := s.Store.PutChallenge(ctx, challenge("t1", "d1", "new"), t0, 1); !errors.Is(err, attest.ErrTooManyChallenges) {
		t.Fatalf("at expiry: got %v, want ErrTooManyChallenges", err)
	}
	if err := s.Store.PutChallenge(ctx, challenge("t1", "d1", "new"), t0.Add(time.Nanosecond), 1); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	got, err := s.Store.TakeChallenge(ctx, "t1", "d1", "new")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "new challenge", got, challenge("t1", "d1", "new"))
}

// parallel runs fn(i) for i in [0, n) at once and waits.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

const racers = 16

func testChallengeConcurrentTake(t *testing.T, s Subject) {
	ctx := context.Background()
	for round := range 5 {
		id := fmt.Sprint("c", round)
		if err := s.Store.PutChallenge(ctx, challenge("t1", "d1", id), t0, 4); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		won, errs := 0, []error{}
		parallel(racers, func(int) {
			_, err := s.Store.TakeChallenge(ctx, "t1", "d1", id)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won++
			} else if !errors.Is(err, attest.ErrNotFound) {
				errs = append(errs, err)
			}
		})
		if len(errs) > 0 {
			t.Fatalf("round %d: %v", round, errs)
		}
		if won != 1 {
			t.Fatalf("round %d: challenge taken %d times, want once", round, won)
		}
	}
}

func testChallengeConcurrentPut(t *testing.T, s Subject) {
	ctx := context.Background()
	const max = 4
	var mu sync.Mutex
	var stored []string
	var errs []error
	parallel(racers, func(i int) {
		id := fmt.Sprint("c", i)
		err := s.Store.PutChallenge(ctx, challenge("t1", "d1", id), t0, max)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			stored = append(stored, id)
		case !errors.Is(err, attest.ErrTooManyChallenges):
			errs = append(errs, err)
		}
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(stored) != max {
		t.Fatalf("%d concurrent puts stored %d challenges, want %d", racers, len(stored), max)
	}
	for _, id := range stored {
		if _, err := s.Store.TakeChallenge(ctx, "t1", "d1", id); err != nil {
			t.Fatalf("take %s: %v", id, err)
		}
	}
}

func activation(id string) attest.Activation {
	return attest.Activation{Tenant: "t1", Device: "d1", ID: id, SecretHash: []byte("secret-hash-" + id),
		AKPublic: []byte("ak-" + id), EKKeyHash: []byte("ek-hash"), EKIssuer: "CN=EK CA", Expires: t0}
}

func testActivationTakeOnce(t *testing.T, s Subject) {
	ctx := context.Background()
	_, err := s.Store.TakeActivation(ctx, "t1", "d1", "a1")
	wantNotFound(t, "empty store", err)
	a := activation("a1")
	if err := s.Store.PutActivation(ctx, a); err != nil {
		t.Fatal(err)
	}
	_, err = s.Store.TakeActivation(ctx, "t2", "d1", "a1")
	wantNotFound(t, "other tenant", err)
	_, err = s.Store.TakeActivation(ctx, "t1", "d2", "a1")
	wantNotFound(t, "other device", err)
	got, err := s.Store.TakeActivation(ctx, "t1", "d1", "a1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "activation", got, a)
	_, err = s.Store.TakeActivation(ctx, "t1", "d1", "a1")
	wantNotFound(t, "second take", err)
}

func testActivationConcurrentTake(t *testing.T, s Subject) {
	ctx := context.Background()
	for round := range 5 {
		id := fmt.Sprint("a", round)
		if err := s.Store.PutActivation(ctx, activation(id)); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		won := 0
		var errs []error
		parallel(racers, func(int) {
			_, err := s.Store.TakeActivation(ctx, "t1", "d1", id)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won++
			} else if !errors.Is(err, attest.ErrNotFound) {
				errs = append(errs, err)
			}
		})
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		if won != 1 {
			t.Fatalf("round %d: activation taken %d times, want once", round, won)
		}
	}
}

func testAK(t *testing.T, s Subject) {
	ctx := context.Background()
	_, err := s.Store.AK(ctx, "t1", "d1")
	wantNotFound(t, "empty store", err)
	a := attest.AKRecord{Tenant: "t1", Device: "d1", Public: []byte("tpmt-public-1"),
		EKKeyHash: []byte("ek-hash"), EKIssuer: "CN=EK CA", Enrolled: t0}
	if err := s.Store.PutAK(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, err := s.Store.AK(ctx, "t1", "d1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "AK", got, a)
	b := a
	b.Public, b.Enrolled = []byte("tpmt-public-2"), t0.Add(time.Hour)
	if err := s.Store.PutAK(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, err = s.Store.AK(ctx, "t1", "d1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "replaced AK", got, b)
	_, err = s.Store.AK(ctx, "t2", "d1")
	wantNotFound(t, "other tenant", err)
	_, err = s.Store.AK(ctx, "t1", "d2")
	wantNotFound(t, "other device", err)
}

// refValues returns parsed reference values as the verifier stores them.
func refValues(t *testing.T, tenant, hw, release, digest string) attest.RefValues {
	t.Helper()
	doc := fmt.Sprintf(`{"ward_attest":{"schema":1,"hw_model":%q,"release":%q,"hash":"sha256",
		"stages":[{"name":"bootloader","pcr":0,"event":"EV_POST_CODE","sha256":%q}],
		"pcrs":{"7":%q}}}`, hw, release, digest, digest)
	r, err := attest.ParseRefValues([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	r.Tenant, r.Signature, r.Imported = tenant, []byte("sig-"+release), t0
	return *r
}

const (
	digestA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func testRefValues(t *testing.T, s Subject) {
	ctx := context.Background()
	_, err := s.Store.RefValues(ctx, "t1", "gw-100", "fw@1")
	wantNotFound(t, "empty store", err)
	r1 := refValues(t, "t1", "gw-100", "fw@1", digestA)
	r2 := refValues(t, "t1", "gw-100", "fw@2", digestB)
	for _, r := range []attest.RefValues{r1, r2} {
		if err := s.Store.PutRefValues(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Store.RefValues(ctx, "t1", "gw-100", "fw@1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "fw@1", got, r1)
	got, err = s.Store.RefValues(ctx, "t1", "gw-100", "fw@2")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "fw@2", got, r2)
	// Re-import replaces.
	r1b := refValues(t, "t1", "gw-100", "fw@1", digestB)
	r1b.Imported = t0.Add(time.Hour)
	if err := s.Store.PutRefValues(ctx, r1b); err != nil {
		t.Fatal(err)
	}
	got, err = s.Store.RefValues(ctx, "t1", "gw-100", "fw@1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "re-imported fw@1", got, r1b)
	_, err = s.Store.RefValues(ctx, "t2", "gw-100", "fw@1")
	wantNotFound(t, "other tenant", err)
	_, err = s.Store.RefValues(ctx, "t1", "gw-200", "fw@1")
	wantNotFound(t, "other model", err)
}

func testResult(t *testing.T, s Subject) {
	ctx := context.Background()
	_, err := s.Store.LastResult(ctx, "t1", "d1")
	wantNotFound(t, "empty store", err)
	r := attest.Result{Tenant: "t1", Device: "d1", ChallengeID: "c1",
		Verdict: attest.Verdict{Result: attest.Outcome("fail"), Reasons: []string{"PCR 7 mismatch"}, Release: "fw@1",
			Assurance: attest.Assurance("tpm"), TPMVerified: true, Time: t0, Quarantine: true},
		BoundSPKI: []byte("spki-hash"),
		Summary: attest.EvidenceSummary{AKHash: []byte("ak-hash"), PCRs: map[int][]byte{0: []byte("p0"), 7: []byte("p7")},
			Events: 42, Counters: attest.Counters{Clock: 9, ResetCount: 1, RestartCount: 2, Safe: true}, TPMInfo: "SW 1.0"}}
	if err := s.Store.PutResult(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.Store.LastResult(ctx, "t1", "d1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "result", got, r)
	r2 := attest.Result{Tenant: "t1", Device: "d1", ChallengeID: "c2",
		Verdict: attest.Verdict{Result: attest.Outcome("pass"), Time: t0.Add(time.Hour)},
		Summary: attest.EvidenceSummary{AKHash: []byte("ak-hash")}}
	if err := s.Store.PutResult(ctx, r2); err != nil {
		t.Fatal(err)
	}
	got, err = s.Store.LastResult(ctx, "t1", "d1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "replaced result", got, r2)
	_, err = s.Store.LastResult(ctx, "t1", "d2")
	wantNotFound(t, "other device", err)
	_, err = s.Store.LastResult(ctx, "t2", "d1")
	wantNotFound(t, "other tenant", err)
}

func testCountersKeepHighest(t *testing.T, s Subject) {
	ctx := context.Background()
	adv := func(c attest.Counters) (attest.Counters, bool) {
		t.Helper()
		prev, found, err := s.Store.AdvanceCounters(ctx, "t1", "d1", c)
		if err != nil {
			t.Fatal(err)
		}
		return prev, found
	}
	a := attest.Counters{Clock: 1000, ResetCount: 3, RestartCount: 5, Safe: true}
	if _, found := adv(a); found {
		t.Fatal("first AdvanceCounters found previous counters")
	}
	// Each step: submit, want the previous value reported; the stored
	// value is the highest so far, with its own Safe flag.
	steps := []struct {
		name string
		c    attest.Counters
		prev attest.Counters
	}{
		{"lower clock kept out", attest.Counters{Clock: 999, ResetCount: 3, RestartCount: 5}, a},
		{"equal not stored", attest.Counters{Clock: 1000, ResetCount: 3, RestartCount: 5}, a},
		{"higher clock", attest.Counters{Clock: 1001, ResetCount: 3, RestartCount: 5}, a},
		{"lower restart kept out", attest.Counters{Clock: 1 << 40, ResetCount: 3, RestartCount: 4, Safe: true},
			attest.Counters{Clock: 1001, ResetCount: 3, RestartCount: 5}},
		{"higher restart, lower clock", attest.Counters{Clock: 1, ResetCount: 3, RestartCount: 6, Safe: true},
			attest.Counters{Clock: 1001, ResetCount: 3, RestartCount: 5}},
		{"lower reset kept out", attest.Counters{Clock: math.MaxUint64, ResetCount: 2, RestartCount: math.MaxUint32},
			attest.Counters{Clock: 1, ResetCount: 3, RestartCount: 6, Safe: true}},
		{"full range", attest.Counters{Clock: math.MaxUint64, ResetCount: math.MaxUint32, RestartCount: math.MaxUint32},
			attest.Counters{Clock: 1, ResetCount: 3, RestartCount: 6, Safe: true}},
		{"zero kept out", attest.Counters{},
			attest.Counters{Clock: math.MaxUint64, ResetCount: math.MaxUint32, RestartCount: math.MaxUint32}},
	}
	for _, st := range steps {
		prev, found := adv(st.c)
		if !found {
			t.Fatalf("%s: previous counters not found", st.name)
		}
		mustEqual(t, st.name, prev, st.prev)
	}
	// Devices and tenants are separate.
	for _, k := range [][2]string{{"t1", "d2"}, {"t2", "d1"}} {
		_, found, err := s.Store.AdvanceCounters(ctx, k[0], k[1], attest.Counters{Clock: 1})
		if err != nil {
			t.Fatal(err)
		}
		if found {
			t.Fatalf("%v: found another device's counters", k)
		}
	}
}

func testCountersConcurrent(t *testing.T, s Subject) {
	ctx := context.Background()
	const n = 64
	cs := make([]attest.Counters, n)
	for i := range cs {
		cs[i] = attest.Counters{ResetCount: uint32(i / 16), RestartCount: uint32(i % 4), Clock: uint64(i)}
	}
	rand.Shuffle(n, func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
	var mu sync.Mutex
	firsts := 0
	var prevs []attest.Counters
	var errs []error
	parallel(n, func(i int) {
		prev, found, err := s.Store.AdvanceCounters(ctx, "t1", "d1", cs[i])
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			errs = append(errs, err)
		case !found:
			firsts++
		default:
			prevs = append(prevs, prev)
		}
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if firsts != 1 {
		t.Fatalf("%d callers found no previous counters, want exactly 1", firsts)
	}
	// Linearizable keep-the-highest: every reported previous value is one
	// that was submitted, and the stored value is the maximum.
	submitted := map[attest.Counters]bool{}
	var top attest.Counters
	for _, c := range cs {
		submitted[c] = true
		if attest.CountersAfter(c, top) {
			top = c
		}
	}
	for _, p := range prevs {
		if !submitted[p] {
			t.Fatalf("reported previous counters %+v were never submitted", p)
		}
	}
	final, found, err := s.Store.AdvanceCounters(ctx, "t1", "d1", attest.Counters{})
	if err != nil || !found {
		t.Fatalf("final read: found %v, err %v", found, err)
	}
	mustEqual(t, "highest counters", final, top)
}

func testPolicy(t *testing.T, s Subject) {
	ctx := context.Background()
	_, err := s.Store.Policy(ctx, "t1", "g1")
	wantNotFound(t, "empty store", err)
	def := attest.Policy{Interval: time.Hour, ChallengeTTL: time.Minute, QuarantineOnFailure: true, AllowSoftware: true}
	grp := attest.Policy{Interval: 5 * time.Minute, ChallengeTTL: 30 * time.Second,
		RenewalRequiresPass: true, RenewalMaxAge: 10 * time.Minute}
	if err := s.SetPolicy(ctx, "t1", "g1", grp); err != nil {
		t.Fatal(err)
	}
	_, err = s.Store.Policy(ctx, "t1", "g2")
	wantNotFound(t, "no default yet", err)
	if err := s.SetPolicy(ctx, "t1", "", def); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		group string
		want  attest.Policy
	}{{"g1", grp}, {"g2", def}, {"", def}} {
		got, err := s.Store.Policy(ctx, "t1", tc.group)
		if err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "policy of group "+tc.group, got, tc.want)
	}
	grp.Interval = 7 * time.Minute
	if err := s.SetPolicy(ctx, "t1", "g1", grp); err != nil {
		t.Fatal(err)
	}
	got, err := s.Store.Policy(ctx, "t1", "g1")
	if err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "replaced group policy", got, grp)
	_, err = s.Store.Policy(ctx, "t2", "g1")
	wantNotFound(t, "other tenant", err)
}

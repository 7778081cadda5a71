package storetest

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
)

func init() {
	extra["pki/cas"] = testCAs
	extra["pki/crl-number-monotonic"] = testCRLNumber
	extra["pki/certs"] = testCerts
	extra["pki/revoked-streaming"] = testRevokedStreaming
}

func testCAs(t *testing.T, s store.Store) {
	now := time.Now().UTC()
	root := &store.CA{ID: "r1", Tenant: "acme", Kind: "root", CertDER: []byte{1}, KeyRef: []byte("k"), Status: "active", Created: now}
	iss := &store.CA{ID: "i1", Tenant: "acme", Kind: "issuing", ParentID: "r1", CertDER: []byte{2}, KeyRef: []byte("k2"), Status: "active", Created: now.Add(time.Second)}
	mustTx(t, s, func(tx store.Tx) error {
		if err := tx.PutCA(ctx, root); err != nil {
			return err
		}
		return tx.PutCA(ctx, iss)
	})
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.PutCA(ctx, root) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate CA: %v", err)
	}
	root.KeyRef, root.Status = nil, "offline"
	mustTx(t, s, func(tx store.Tx) error { return tx.UpdateCA(ctx, root) })
	cas, err := s.ListCAs(ctx, "acme")
	if err != nil || len(cas) != 2 || cas[0].ID != "r1" || cas[0].KeyRef != nil || cas[0].Status != "offline" || cas[1].ParentID != "r1" {
		t.Fatalf("cas = %+v %v", cas, err)
	}
	if cas, _ := s.ListCAs(ctx, "other"); len(cas) != 0 {
		t.Fatal("tenant filter broken")
	}
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.UpdateCA(ctx, &store.CA{ID: "nope"}) }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update missing CA: %v", err)
	}
}

func testCRLNumber(t *testing.T, s store.Store) {
	mustTx(t, s, func(tx store.Tx) error {
		return tx.PutCA(ctx, &store.CA{ID: "c", Tenant: "t", Kind: "issuing", CertDER: []byte{1}, Status: "active", Created: time.Now()})
	})
	var mu sync.Mutex
	var got []int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				var n int64
				err := s.InTx(ctx, func(tx store.Tx) error {
					var err error
					n, err = tx.NextCRLNumber(ctx, "c")
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, n)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	for i, n := range got {
		if n != int64(i+1) {
			t.Fatalf("CRL numbers %v are not 1..20 without repeats", got)
		}
	}
}

func cert(serial, tenant, device, ca string, nb time.Time) *store.Cert {
	return &store.Cert{Serial: serial, Tenant: tenant, Device: device, CAID: ca, Profile: "device", SPKISHA256: []byte{9},
		NotBefore: nb, NotAfter: nb.Add(time.Hour), Status: "good", CertDER: []byte{1, 2}}
}

func testCerts(t *testing.T, s store.Store) {
	base := time.Now().UTC().Truncate(time.Second)
	mustTx(t, s, func(tx store.Tx) error {
		for i, d := range []string{"d1", "d2", "d1"} {
			if err := tx.RecordCert(ctx, cert(fmt.Sprintf("a%d", i), "acme", d, "i1", base.Add(time.Duration(i)*time.Minute))); err != nil {
				return err
			}
		}
		return tx.RecordCert(ctx, cert("b0", "globex", "d1", "i2", base))
	})
	if err := s.InTx(ctx, func(tx store.Tx) error { return tx.RecordCert(ctx, cert("a0", "acme", "x", "i1", base)) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("duplicate serial: %v", err)
	}
	list, err := s.ListCerts(ctx, store.CertFilter{Tenant: "acme", Device: "d1"})
	if err != nil || len(list) != 2 || list[0].Serial != "a0" || list[1].Serial != "a2" {
		t.Fatalf("list = %v %v", list, err)
	}
	var rec *store.Cert
	at := base.Add(time.Hour)
	mustTx(t, s, func(tx store.Tx) error {
		var err error
		rec, err = tx.RevokeCert(ctx, "a1", 1, at)
		return err
	})
	if rec.Status != "revoked" || rec.Reason != 1 || !rec.RevokedAt.Equal(at) {
		t.Fatalf("revoked record %+v", rec)
	}
	err = s.InTx(ctx, func(tx store.Tx) error {
		r, err := tx.RevokeCert(ctx, "a1", 4, at.Add(time.Hour))
		if r == nil || r.Reason != 1 {
			t.Errorf("second revocation changed the record: %+v", r)
		}
		return err
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("revoke twice: %v", err)
	}
	if err := s.InTx(ctx, func(tx store.Tx) error { _, err := tx.RevokeCert(ctx, "zz", 1, at); return err }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoke missing: %v", err)
	}
	if l, _ := s.ListCerts(ctx, store.CertFilter{Status: "revoked"}); len(l) != 1 || l[0].Serial != "a1" {
		t.Fatalf("status filter: %v", l)
	}
	if _, err := s.GetCert(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	// Deleting a tenant deletes its certificates and CAs.
	mustTx(t, s, func(tx store.Tx) error {
		if err := tx.CreateTenant(ctx, &store.Tenant{ID: "acme", Name: "a", CreatedAt: base, WrappedKey: []byte{1}}); err != nil {
			return err
		}
		return tx.DeleteTenant(ctx, "acme")
	})
	if l, _ := s.ListCerts(ctx, store.CertFilter{Tenant: "acme"}); len(l) != 0 {
		t.Fatalf("certificates of a deleted tenant survive: %d", len(l))
	}
}

func testRevokedStreaming(t *testing.T, s store.Store) {
	const n = 10007 // more than one page
	base := time.Now().UTC()
	mustTx(t, s, func(tx store.Tx) error {
		for i := 0; i < n; i++ {
			c := cert(fmt.Sprintf("%08x", i), "t", "d", "ca", base)
			if i%2 == 0 {
				c.Status, c.RevokedAt, c.Reason = "revoked", base, 1
			}
			if err := tx.RecordCert(ctx, c); err != nil {
				return err
			}
		}
		return tx.RecordCert(ctx, &store.Cert{Serial: "other", Tenant: "t", CAID: "ca2", Profile: "device", Status: "revoked", CertDER: []byte{1}})
	})
	seen := map[string]bool{}
	err := s.ForEachRevoked(ctx, "ca", func(c *store.Cert) error {
		if seen[c.Serial] || c.Status != "revoked" || c.CAID != "ca" {
			return fmt.Errorf("bad or repeated record %+v", c)
		}
		seen[c.Serial] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != (n+1)/2 {
		t.Fatalf("streamed %d revoked, want %d", len(seen), (n+1)/2)
	}
	stop := errors.New("stop")
	calls := 0
	if err := s.ForEachRevoked(ctx, "", func(*store.Cert) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("fn error not propagated: %v after %d calls", err, calls)
	}
}

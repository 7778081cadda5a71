package e2e

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/wardiot/ward/internal/api"
)

// TestSIGKILLDuringTenantBurst fires 1,000 tenant creations at a real
// server process from 8 clients and kills it with SIGKILL part-way. After
// a restart, every creation the server acknowledged exists, and the audit
// chain verifies and records each of them.
func TestSIGKILLDuringTenantBurst(t *testing.T) {
	dir := t.TempDir()
	p := startServer(t, dir)
	admin := p.admin(t)

	const total, workers, killAfter = 1000, 8, 300
	var (
		acked    sync.Map
		nAcked   atomic.Int64
		killOnce sync.Once
		next     atomic.Int64
		wg       sync.WaitGroup
		failures atomic.Int64
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				id := fmt.Sprintf("t-%04d", i)
				err := admin.Do(bg, "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: id}, nil)
				if err != nil {
					failures.Add(1)
					continue
				}
				acked.Store(id, true)
				if nAcked.Add(1) == killAfter {
					killOnce.Do(func() { p.cmd.Process.Signal(syscall.SIGKILL) })
				}
			}
		}()
	}
	wg.Wait()
	p.cmd.Wait()
	n := nAcked.Load()
	if n < killAfter || failures.Load() == 0 {
		t.Fatalf("the kill did not land mid-burst: %d acknowledged, %d failed", n, failures.Load())
	}
	t.Logf("acknowledged before SIGKILL: %d of %d; refused after: %d", n, total, failures.Load())

	p2 := startServer(t, dir)
	admin = p2.admin(t)
	var ts []api.Tenant
	if err := admin.Do(bg, "GET", "/api/v1/tenants", nil, &ts); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, tn := range ts {
		have[tn.ID] = true
	}
	lost := 0
	acked.Range(func(k, _ any) bool {
		if !have[k.(string)] {
			lost++
			t.Errorf("acknowledged tenant %s lost", k)
		}
		return true
	})
	var v api.AuditVerification
	if err := admin.Do(bg, "GET", "/api/v1/audit/verify", nil, &v); err != nil {
		t.Fatal(err)
	}
	if !v.OK {
		t.Fatalf("audit chain broken after SIGKILL at %d: %s", v.BrokenAt, v.Reason)
	}
	// Every tenant that exists has its audit entry (they committed together).
	var entries []api.AuditEntry
	if err := admin.Do(bg, "GET", "/api/v1/audit?limit=10000", nil, &entries); err != nil {
		t.Fatal(err)
	}
	audited := map[string]bool{}
	for _, e := range entries {
		if e.Action == "tenant.create" {
			audited[e.Target] = true
		}
	}
	for id := range have {
		if !audited[id] {
			t.Errorf("tenant %s exists without its audit entry", id)
		}
	}
	t.Logf("after restart: %d tenants, %d audit entries, chain intact, %d acknowledged lost", len(have), v.Entries, lost)
}

// TestAuditVerifyCLI runs `ward audit verify` as an operator would: exit 0
// on an intact chain.
func TestAuditVerifyCLI(t *testing.T) {
	dir := t.TempDir()
	p := startServer(t, dir)
	if err := p.admin(t).Do(bg, "POST", "/api/v1/tenants", api.CreateTenantRequest{ID: "acme"}, nil); err != nil {
		t.Fatal(err)
	}
	out, errs, code := ward(t, nil, "--data", dir, "audit", "verify")
	if code != 0 || !strings.Contains(out, "intact") {
		t.Fatalf("exit %d: %s %s", code, out, errs)
	}
	// An unauthenticated call through the CLI gets a hint.
	_, errs, code = ward(t, []string{"WARD_ADDR=" + p.apiAddr, "WARD_CACERT=" + dir + "/ca.pem", "WARD_TOKEN=wardapi_0000000000000000_bogus"}, "tenant", "list")
	if code != 1 || !strings.Contains(errs, "401") || !strings.Contains(errs, "hint") {
		t.Fatalf("bogus token: exit %d %s", code, errs)
	}
}

package broker

import "testing"

func TestRegistryAdmitRemove(t *testing.T) {
	r := newRegistry()
	mk := func(dev, remote string, cert byte) *session {
		s := &session{id: Identity{Tenant: "acme", Device: dev, Kind: KindDevice, Serial: "a" + dev}, remote: remote}
		s.id.CertSHA256[0] = cert
		return s
	}
	a, b, c := mk("d1", "10.0.0.1:1", 1), mk("d1", "10.0.0.1:2", 1), mk("d2", "10.0.0.2:1", 2)
	for _, s := range []*session{a, b, c} {
		if clones := r.admit(s); clones != nil {
			t.Fatalf("admit %s: clones %v", s.remote, clones)
		}
	}
	if clones := r.admit(mk("d1", "10.9.9.9:1", 1)); len(clones) != 2 {
		t.Fatalf("clone from another address: %d clones, want 2", len(clones))
	}
	if got := r.byDevice("acme", "d1"); len(got) != 2 {
		t.Fatalf("byDevice = %d sessions", len(got))
	}
	r.remove(a)
	r.remove(a) // idempotent
	if got := r.bySerial("acme", "Ad1"); len(got) != 1 || got[0] != b {
		t.Fatalf("bySerial after remove = %v", got)
	}
	r.remove(b)
	r.remove(c)
	if st := r.stats(); st.Devices != 0 || len(st.ByTenant) != 0 || len(r.byCert) != 0 || len(r.bySer) != 0 || len(r.byDev) != 0 {
		t.Fatalf("registry not empty: %+v", st)
	}
}

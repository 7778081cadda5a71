package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardiot/ward/agent"
	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/internal/pki"
	"github.com/wardiot/ward/internal/server"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

const otaHW = "wardboard-1"

// adminClient is an API client with the initial admin token.
func (e *estEnv) adminClient(t *testing.T) *client.Client {
	t.Helper()
	tok, err := os.ReadFile(server.AdminTokenPath(e.dir))
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := readFile(t, server.CABundlePath(e.dir))
	c, err := client.New(e.srv.APIAddr(), string(tok), ca)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// publishRelease uploads an image the way `ward release publish` does.
func publishRelease(t *testing.T, c *client.Client, version string, sv uint64, img []byte) (*api.Release, int) {
	t.Helper()
	q := url.Values{"name": {"fw"}, "version": {version}, "hw": {otaHW}, "security_version": {fmt.Sprint(sv)}}
	req, _ := http.NewRequest("POST", c.Base+"/api/v1/tenants/acme/releases?"+q.Encode(), bytes.NewReader(img))
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return nil, resp.StatusCode
	}
	var r api.Release
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	return &r, resp.StatusCode
}

// otaDevice is an enrolled agent with an update engine on files.
type otaDevice struct {
	t     *testing.T
	e     *estEnv
	id    string
	a     *agent.Agent
	conn  *agent.Conn
	http  *http.Client
	fs    agentota.DirFS
	floor *agentota.LogFloor
	src   *agentota.Client
	jobs  chan wire.OTAJob
}

func (e *estEnv) otaDevice(t *testing.T, id string) *otaDevice {
	t.Helper()
	d := &otaDevice{t: t, e: e, id: id, a: e.enrollAgent(t, id), fs: agentota.DirFS(t.TempDir()), jobs: make(chan wire.OTAJob, 4)}
	// The device's HTTPS client: the server is trusted through the CA
	// bundle from enrollment, the device presents its certificate.
	d.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: e.pool, GetClientCertificate: d.a.GetClientCertificate}}}
	c, err := d.a.ConnectMQTT(ctx, e.srv.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	d.conn = c
	t.Cleanup(c.Close)
	if err := c.Subscribe(wire.TopicOTAJob, func(_ string, p []byte) {
		var j wire.OTAJob
		if json.Unmarshal(p, &j) == nil {
			d.jobs <- j
		}
	}); err != nil {
		t.Fatal(err)
	}
	rep, _ := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName, Patch: json.RawMessage(`{"firmware":{"hw_model":"` + otaHW + `"}}`)})
	if err := c.Publish(wire.TopicTwinReported, rep, 1); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the hardware model in the twin", func() bool {
		tw, err := e.srv.Twins.Get(ctx, "acme", id, wire.DefaultTwinName)
		return err == nil && strings.Contains(string(tw.Reported.Doc), otaHW)
	})
	return d
}

// client fetches the two roots (trust on first use over the verified TLS
// channel) and builds the TUF client.
func (d *otaDevice) client() {
	d.t.Helper()
	server := "https://" + d.e.srv.APIAddr()
	img, dir, err := agentota.FetchRoots(ctx, d.http, server, d.id)
	if err != nil {
		d.t.Fatal(err)
	}
	d.src, err = agentota.NewClient(agentota.ClientConfig{Server: server, DeviceID: d.id, HardwareID: otaHW,
		ImageRoot: img, DirectorRoot: dir, CacheDir: filepath.Join(string(d.fs), "tuf"), HTTPClient: d.http, Now: d.e.clock.Now})
	if err != nil {
		d.t.Fatal(err)
	}
	if d.floor, err = agentota.NewLogFloor(d.fs, bytes.Repeat([]byte{7}, 32)); err != nil {
		d.t.Fatal(err)
	}
}

func (d *otaDevice) engine(booted string) *agentota.Engine {
	d.t.Helper()
	e, err := agentota.New(agentota.Config{FS: d.fs, Source: d.src, Floor: d.floor, Booted: booted,
		Reboot: func() error { return agentota.ErrRebooting },
		Health: func(context.Context) error { return nil },
		Report: func(st wire.OTAStatus) {
			b, _ := json.Marshal(st)
			if err := d.conn.Publish(wire.TopicOTAStatus, b, 1); err != nil {
				d.t.Errorf("publish status: %v", err)
			}
		},
		Now: d.e.clock.Now})
	if err != nil {
		d.t.Fatal(err)
	}
	return e
}

// update handles the next job, reboots (simulated bootloader) and lets
// the engine judge the trial boot.
func (d *otaDevice) update(booted string) (string, agentota.Journal) {
	d.t.Helper()
	var job wire.OTAJob
	select {
	case job = <-d.jobs:
	case <-time.After(10 * time.Second):
		d.t.Fatal("no OTA job arrived")
	}
	if err := d.engine(booted).Handle(ctx, job); !errors.Is(err, agentota.ErrRebooting) {
		d.t.Fatalf("Handle(%s) = %v, want a reboot", job.Release, err)
	}
	next, err := agentota.Boot(d.fs)
	if err != nil {
		d.t.Fatal(err)
	}
	e := d.engine(next)
	if err := e.Start(ctx); err != nil {
		d.t.Fatal(err)
	}
	return next, e.Journal()
}

func (d *otaDevice) get(path string) int {
	d.t.Helper()
	resp, err := d.http.Get("https://" + d.e.srv.APIAddr() + path)
	if err != nil {
		d.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func randomImage(t *testing.T) []byte {
	b := make([]byte, 32<<10)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOTAEndToEnd: releases published through the API, assigned to a
// device, fetched over mTLS by the real agent engine from both
// repositories, installed on the inactive slot, booted on trial and
// committed; the status and the floor reach the server.
func TestOTAEndToEnd(t *testing.T) {
	e := newESTEnv(t)
	c := e.adminClient(t)
	v10, v11 := randomImage(t), randomImage(t)
	copy(v11, v10[:16<<10]) // half shared, so a delta pays off
	r10, code := publishRelease(t, c, "1.0", 1, v10)
	if code != http.StatusCreated {
		t.Fatalf("publish 1.0: %d", code)
	}
	r11, code := publishRelease(t, c, "1.1", 2, v11)
	if code != http.StatusCreated {
		t.Fatalf("publish 1.1: %d", code)
	}
	if r10.ReleaseCounter != 1 || r11.ReleaseCounter != 2 || len(r11.Deltas) != 1 || r11.Length != int64(len(v11)) {
		t.Fatalf("published %+v and %+v", r10, r11)
	}
	if _, code := publishRelease(t, c, "1.1", 2, v11); code != http.StatusConflict {
		t.Fatalf("publishing 1.1 again: %d, want 409", code)
	}
	var list []api.Release
	if err := c.Do(ctx, "GET", "/api/v1/tenants/acme/releases", nil, &list); err != nil || len(list) != 2 {
		t.Fatalf("release list: %v %+v", err, list)
	}

	d := e.otaDevice(t, "gw-1")
	d.client()
	assign := func(rel string) *api.OTAAssignment {
		var as api.OTAAssignment
		if err := c.Do(ctx, "POST", "/api/v1/tenants/acme/devices/"+d.id+"/ota/assign", api.AssignRequest{Release: rel}, &as); err != nil {
			t.Fatalf("assign %s: %v", rel, err)
		}
		return &as
	}
	// First 1.0 (full image into slot b), then 1.1 (delta into slot a).
	for i, step := range []struct {
		rel, slot string
		img       []byte
		floor     uint64
	}{{"fw@1.0", agentota.SlotB, v10, 1}, {"fw@1.1", agentota.SlotA, v11, 2}} {
		if as := assign(step.rel); !as.Published || as.Target == "" {
			t.Fatalf("assignment %+v", as)
		}
		booted, j := d.update(map[int]string{0: agentota.SlotA, 1: agentota.SlotB}[i])
		if booted != step.slot || j.Phase != agentota.PhaseCommitted || j.Installed.Release != step.rel {
			t.Fatalf("%s: booted %s, journal %+v", step.rel, booted, j)
		}
		if step.rel == "fw@1.1" && j.Delta == "" {
			t.Fatalf("1.1 was not installed through the delta: %+v", j)
		}
		got, err := os.ReadFile(filepath.Join(string(d.fs), "slots", step.slot+".img"))
		if err != nil || !bytes.Equal(got, step.img) {
			t.Fatalf("slot %s does not hold %s (%v)", step.slot, step.rel, err)
		}
		var st *api.OTAState
		waitUntil(t, "the committed status of "+step.rel, func() bool {
			st, _ = e.srv.OTAState(ctx, "acme", d.id)
			return st != nil && st.Last != nil && st.Last.Phase == wire.OTAPhaseCommitted && st.Last.Release == step.rel &&
				st.Floor != nil && *st.Floor == step.floor
		})
	}

	// device show carries the OTA state.
	var dev api.Device
	if err := c.Do(ctx, "GET", "/api/v1/tenants/acme/devices/"+d.id, nil, &dev); err != nil {
		t.Fatal(err)
	}
	if dev.OTA == nil || dev.OTA.Last == nil || dev.OTA.Last.Release != "fw@1.1" || len(dev.OTA.Assigned) != 1 {
		t.Fatalf("device show OTA: %+v", dev.OTA)
	}
	// Every phase change is audited.
	recs, err := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Action == "ota.status" && strings.Contains(r.Detail, "phase=committed") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d committed statuses audited, want 2", n)
	}

	// The server never assigns below the device's floor (2).
	if err := c.Do(ctx, "POST", "/api/v1/tenants/acme/devices/"+d.id+"/ota/assign", api.AssignRequest{Release: "fw@1.0"}, nil); !isProblem(err, http.StatusConflict) {
		t.Fatalf("assigning 1.0 below the floor: %v, want 409", err)
	}
}

// TestOTAFloorDecreaseRaisesEvent: a device that reports a lower floor
// than before raises ota.floor_decreased and the server keeps the higher.
func TestOTAFloorDecreaseRaisesEvent(t *testing.T) {
	e := newESTEnv(t)
	d := e.otaDevice(t, "gw-floor")
	report := func(floor uint64) {
		b, _ := json.Marshal(wire.OTAStatus{Phase: wire.OTAPhaseCommitted, Release: "fw@1.1", Floor: floor, Time: e.clock.Now()})
		if err := d.conn.Publish(wire.TopicOTAStatus, b, 1); err != nil {
			t.Fatal(err)
		}
	}
	report(5)
	waitUntil(t, "floor 5", func() bool {
		st, _ := e.srv.OTAState(ctx, "acme", d.id)
		return st != nil && st.Floor != nil && *st.Floor == 5
	})
	report(3)
	var evs []*store.Event
	waitUntil(t, "the floor_decreased event", func() bool {
		e.srv.Monitor.Flush(ctx)
		evs, _ = e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "ota.floor_decreased"})
		return len(evs) == 1
	})
	if evs[0].Device != d.id || evs[0].Severity != "high" || !strings.Contains(evs[0].Reason, "floor 3 after 5") {
		t.Fatalf("event %+v", evs[0])
	}
	st, _ := e.srv.OTAState(ctx, "acme", d.id)
	if *st.Floor != 5 || st.Last.Floor != 3 {
		t.Fatalf("state after the lower report: floor %d, last %+v", *st.Floor, st.Last)
	}
	// Malformed and oversized reports are refused by the gateway.
	if err := d.conn.Publish(wire.TopicOTAStatus, []byte(`{"phase":"hacked"}`), 1); err == nil {
		t.Fatal("a status with an unknown phase was accepted")
	}
}

// TestOTARepositoryAccess: the repositories need a valid, unrevoked
// device certificate of the tenant, and a device reads only its own
// Director repository.
func TestOTARepositoryAccess(t *testing.T) {
	e := newESTEnv(t)
	if _, code := publishRelease(t, e.adminClient(t), "1.0", 1, randomImage(t)); code != http.StatusCreated {
		t.Fatalf("publish: %d", code)
	}
	d1, d2 := e.otaDevice(t, "gw-a"), e.otaDevice(t, "gw-b")
	if c := d1.get(wire.OTAImagePath + "timestamp.json"); c != 200 {
		t.Fatalf("image timestamp: %d", c)
	}
	if c := d1.get(wire.OTADirectorPath + "gw-a/1.root.json"); c != 200 {
		t.Fatalf("own director root: %d", c)
	}
	if c := d1.get(wire.OTADirectorPath + "gw-b/1.root.json"); c != http.StatusForbidden {
		t.Fatalf("another device's director: %d, want 403", c)
	}
	// No client certificate: 401.
	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool}}}
	resp, err := anon.Get("https://" + e.srv.APIAddr() + wire.OTAImagePath + "timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no certificate: %d, want 401", resp.StatusCode)
	}
	// Revoked: refused, and a security event says so.
	if c := d2.get(wire.OTAImagePath + "timestamp.json"); c != 200 {
		t.Fatalf("before revocation: %d", c)
	}
	serial := pki.SerialString(d2.a.TLSCertificate().Leaf.SerialNumber)
	if _, err := e.srv.PKI.Revoke(ctx, serial, pki.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	d2.http.CloseIdleConnections() // a new handshake, as a device would make
	for _, p := range []string{wire.OTAImagePath + "timestamp.json", wire.OTADirectorPath + "gw-b/timestamp.json", wire.OTAImagePath + "1.root.json"} {
		if c := d2.get(p); c != http.StatusForbidden {
			t.Fatalf("revoked certificate, %s: %d, want 403", p, c)
		}
	}
	e.srv.Monitor.Flush(ctx)
	evs, _ := e.srv.Store().ListEvents(ctx, store.EventFilter{Tenant: "acme", Type: "cert.revoked_presented"})
	if len(evs) == 0 {
		t.Fatal("no cert.revoked_presented event")
	}
	// A disabled device is refused too.
	if err := e.srv.Fleet.SetState(ctx, "test", "acme", "gw-a", store.DeviceDisabled, "test"); err != nil {
		t.Fatal(err)
	}
	d1.http.CloseIdleConnections()
	if c := d1.get(wire.OTAImagePath + "timestamp.json"); c != http.StatusForbidden {
		t.Fatalf("disabled device: %d, want 403", c)
	}
}

func isProblem(err error, code int) bool {
	var p *client.Problem
	return errors.As(err, &p) && p.Status == code
}

// directorMinSV is the minSecurityVersion the device's Director targets
// metadata carries for each target, as the device fetches it.
func (d *otaDevice) directorMinSV() map[string]uint64 {
	d.t.Helper()
	resp, err := d.http.Get("https://" + d.e.srv.APIAddr() + wire.OTADirectorPath + d.id + "/targets.json")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	var tm struct {
		Signed struct {
			Targets map[string]struct {
				Custom struct {
					MinSV *uint64 `json:"minSecurityVersion"`
				} `json:"custom"`
			} `json:"targets"`
		} `json:"signed"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tm); err != nil || resp.StatusCode != http.StatusOK {
		d.t.Fatalf("director targets of %s: %d %v", d.id, resp.StatusCode, err)
	}
	out := map[string]uint64{}
	for p, tf := range tm.Signed.Targets {
		if tf.Custom.MinSV == nil {
			d.t.Fatalf("director target %s of %s has no minSecurityVersion", p, d.id)
		}
		out[p] = *tf.Custom.MinSV
	}
	return out
}

// TestTenantMinimumSecurityVersion: after a vulnerable release is
// withdrawn the operator raises the tenant minimum; it never goes down,
// cannot exceed every published release, re-signs assignments at or
// above it (their Director metadata carries it), lists the devices
// assigned below it, and bounds every later assignment. The real agent
// installs under the new minimum.
func TestTenantMinimumSecurityVersion(t *testing.T) {
	e := newESTEnv(t)
	c := e.adminClient(t)
	rel := map[string]*api.Release{}
	for _, r := range []struct {
		v  string
		sv uint64
	}{{"1.0", 1}, {"1.1", 2}, {"1.2", 2}} {
		p, code := publishRelease(t, c, r.v, r.sv, randomImage(t))
		if code != http.StatusCreated {
			t.Fatalf("publish %s: %d", r.v, code)
		}
		rel[r.v] = p
	}
	old, fixed := e.otaDevice(t, "gw-old"), e.otaDevice(t, "gw-fixed")
	old.client()
	fixed.client()
	e.otaDevice(t, "gw-none") // never assigned anything
	path := "/api/v1/tenants/acme/ota/min-security-version"
	assign := func(d, r string) error {
		return c.Do(ctx, "POST", "/api/v1/tenants/acme/devices/"+d+"/ota/assign", api.AssignRequest{Release: r}, nil)
	}
	if err := assign("gw-old", "fw@1.0"); err != nil {
		t.Fatal(err)
	}
	if booted, j := old.update(agentota.SlotA); booted != agentota.SlotB || j.Phase != agentota.PhaseCommitted {
		t.Fatalf("gw-old: %s %+v", booted, j)
	}
	if err := assign("gw-fixed", "fw@1.1"); err != nil {
		t.Fatal(err)
	}
	if got := fixed.directorMinSV(); got[rel["1.1"].Target] != 0 {
		t.Fatalf("before the raise: %v", got)
	}
	var m api.MinSecurityVersion
	if err := c.Do(ctx, "GET", path, nil, &m); err != nil || m.MinSecurityVersion != 0 {
		t.Fatalf("fresh minimum %+v %v", m, err)
	}
	raise := func(v uint64) (*api.MinSecurityVersion, error) {
		var m api.MinSecurityVersion
		err := c.Do(ctx, "PUT", path, api.MinSecurityVersionRequest{MinSecurityVersion: &v}, &m)
		return &m, err
	}
	if _, err := raise(3); !isProblem(err, http.StatusConflict) || !strings.Contains(err.Error(), "highest: 2") {
		t.Fatalf("raising above every release: %v, want 409", err)
	}
	if err := c.Do(ctx, "PUT", path, map[string]any{}, nil); !isProblem(err, http.StatusBadRequest) {
		t.Fatalf("empty body: %v, want 400", err)
	}
	got, err := raise(2)
	if err != nil {
		t.Fatal(err)
	}
	if got.MinSecurityVersion != 2 || !slices.Equal(got.Restaged, []string{"gw-fixed"}) ||
		len(got.Below) != 1 || got.Below[0].Device != "gw-old" || !strings.Contains(got.Below[0].Detail, "has 1") {
		t.Fatalf("raise to 2: %+v", got)
	}
	if got := fixed.directorMinSV(); got[rel["1.1"].Target] != 2 {
		t.Fatalf("gw-fixed's Director after the raise: %v", got)
	}
	if _, err := raise(1); !isProblem(err, http.StatusConflict) || !strings.Contains(err.Error(), "only goes up") {
		t.Fatalf("lowering: %v, want 409", err)
	}
	if err := c.Do(ctx, "GET", path, nil, &m); err != nil || m.MinSecurityVersion != 2 {
		t.Fatalf("after a refused lowering %+v %v", m, err)
	}
	// Every later assignment is bounded; the vulnerable release is out.
	if err := assign("gw-none", "fw@1.0"); !isProblem(err, http.StatusConflict) {
		t.Fatalf("assigning fw@1.0 under minimum 2: %v, want 409", err)
	}
	// gw-old gets the fixed release and the real engine installs it.
	if err := assign("gw-old", "fw@1.2"); err != nil {
		t.Fatal(err)
	}
	if got := old.directorMinSV(); got[rel["1.2"].Target] != 2 {
		t.Fatalf("gw-old's Director: %v", got)
	}
	if booted, j := old.update(agentota.SlotB); booted != agentota.SlotA || j.Phase != agentota.PhaseCommitted || j.Installed.Release != "fw@1.2" {
		t.Fatalf("gw-old on 1.2: %s %+v", booted, j)
	}
	if f, err := old.floor.Floor(); err != nil || f != 2 {
		t.Fatalf("gw-old's floor %d %v, want 2", f, err)
	}
	// A raise to the same value is a no-op that re-signs again; none below now.
	if got, err := raise(2); err != nil || len(got.Below) != 0 || len(got.Restaged) != 2 {
		t.Fatalf("second raise to 2: %+v %v", got, err)
	}
	recs, _ := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 10000})
	var denied, ok int
	for _, r := range recs {
		if r.Action == "ota.min_security_version" {
			if r.Result == "denied" {
				denied++
			} else {
				ok++
			}
		}
	}
	if denied != 2 || ok != 2 {
		t.Fatalf("audited %d denied and %d ok raises, want 2 and 2", denied, ok)
	}
}

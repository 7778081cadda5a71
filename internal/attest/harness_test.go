package attest_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	agent "github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/attest/attesttest"
	"github.com/wardiot/ward/wire"
)

const (
	tenant  = "acme"
	hwModel = "gw-100"
	relN    = "gw-fw@1.0.0"
	relN1   = "gw-fw@1.1.0"
)

// chainFor returns the boot chain of a release: same bootloader, config
// and kernel, the release's rootfs image.
func chainFor(release string) agent.BootChain {
	return agent.BootChain{
		Bootloader: sha256.Sum256([]byte("u-boot 2026.01")),
		Config:     sha256.Sum256([]byte("boot config v1")),
		Kernel:     sha256.Sum256([]byte("linux 6.12.9")),
		Rootfs:     sha256.Sum256([]byte("rootfs image of " + release)),
	}
}

// refDoc builds the reference-value document of a release from stages,
// as release tooling would.
func refDoc(t testing.TB, release string, stages []agent.Stage) []byte {
	t.Helper()
	type stage struct {
		Name   string `json:"name"`
		PCR    int    `json:"pcr"`
		Event  string `json:"event"`
		SHA256 string `json:"sha256"`
	}
	body := map[string]any{"schema": 1, "hw_model": hwModel, "release": release, "hash": "sha256"}
	var ss []stage
	for _, s := range stages {
		ss = append(ss, stage{Name: s.Name, PCR: s.PCR, Event: fmt.Sprintf("0x%x", s.Type), SHA256: hex.EncodeToString(s.Digest[:])})
	}
	body["stages"] = ss
	b, err := json.MarshalIndent(map[string]any{"ward_attest": body}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// harness is one device with a manufactured swtpm, its agent, and a
// verifier with an in-memory store and an injected clock.
type harness struct {
	t        testing.TB
	ctx      context.Context
	sim      *tpmtest.Sim
	agentDir string
	boot     agent.SimulatedBoot
	tpm      *agent.TPM
	store    *attesttest.Store
	v        *attest.Verifier
	dev      attest.Device
	now      time.Time
	refKey   ed25519.PrivateKey
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	sim := tpmtest.Manufactured(t)
	h := &harness{t: t, ctx: context.Background(), sim: sim, agentDir: t.TempDir(),
		store: attesttest.New(), now: time.Now().UTC().Truncate(time.Second)}
	h.boot = agent.SimulatedBoot{Path: filepath.Join(h.agentDir, "eventlog.bin")}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h.refKey = priv
	h.store.SetRefValueKey(tenant, pub)
	roots, inter := ekPools(t, sim.EKCADir)
	v, err := attest.New(attest.Config{Store: h.store, RefKeys: h.store, EKRoots: roots,
		EKIntermediates: inter, Now: func() time.Time { return h.now }})
	if err != nil {
		t.Fatal(err)
	}
	h.v = v
	h.dev = attest.Device{Tenant: tenant, ID: "dev-1", HWModel: hwModel, Release: relN}
	h.open()
	t.Cleanup(func() {
		if h.tpm != nil {
			h.tpm.Close()
		}
	})
	return h
}

// ekPools loads swtpm's local CA: the root and the issuing certificate.
func ekPools(t testing.TB, dir string) (roots, inter *x509.CertPool) {
	t.Helper()
	roots, inter = x509.NewCertPool(), x509.NewCertPool()
	for name, pool := range map[string]*x509.CertPool{
		"swtpm-localca-rootca-cert.pem": roots, "issuercert.pem": inter,
	} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !pool.AppendCertsFromPEM(b) {
			t.Fatalf("%s: no certificate", name)
		}
	}
	return roots, inter
}

func (h *harness) open() {
	h.t.Helper()
	tpm, err := agent.Open(agent.Config{Path: "tcp://" + h.sim.Addr, StateDir: h.agentDir, Boot: h.boot})
	if err != nil {
		h.t.Fatal(err)
	}
	h.tpm = tpm
}

func (h *harness) bootStages(stages []agent.Stage) {
	h.t.Helper()
	if err := h.boot.Boot(h.tpm, stages); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) importRefs(release string, stages []agent.Stage) {
	h.t.Helper()
	doc := refDoc(h.t, release, stages)
	sig, err := attest.SignRefValues(doc, h.refKey)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.v.ImportRefValues(h.ctx, tenant, doc, sig); err != nil {
		h.t.Fatal(err)
	}
}

// enroll runs AK enrollment end to end, through the wire encoding.
func (h *harness) enroll() {
	h.t.Helper()
	req, err := h.tpm.AKEnrollRequest()
	if err != nil {
		h.t.Fatal(err)
	}
	req = roundTrip(h.t, req, wire.ParseAKEnrollRequest)
	ch, err := h.v.BeginAKEnrollment(h.ctx, h.dev, req)
	if err != nil {
		h.t.Fatal(err)
	}
	ch = roundTrip(h.t, ch, wire.ParseAKActivationChallenge)
	resp, err := h.tpm.ActivateCredential(ch)
	if err != nil {
		h.t.Fatal(err)
	}
	resp = roundTrip(h.t, resp, wire.ParseAKActivationResponse)
	if err := h.v.FinishAKEnrollment(h.ctx, h.dev, resp); err != nil {
		h.t.Fatal(err)
	}
}

// ready is the usual start: release N's values imported, the device
// booted into N, its AK enrolled.
func (h *harness) ready() {
	h.t.Helper()
	h.importRefs(relN, chainFor(relN).Stages())
	h.bootStages(chainFor(relN).Stages())
	h.enroll()
}

func roundTrip[T any](t testing.TB, v *T, parse func([]byte) (*T, error)) *T {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := parse(b)
	if err != nil {
		t.Fatalf("parse %T: %v", v, err)
	}
	return out
}

// evidence answers a fresh challenge with the device's TPM.
func (h *harness) evidence() (*wire.AttestChallenge, *wire.AttestEvidence) {
	h.t.Helper()
	ch, err := h.v.NewChallenge(h.ctx, h.dev)
	if err != nil {
		h.t.Fatal(err)
	}
	ch = roundTrip(h.t, ch, wire.ParseAttestChallenge)
	ev, err := h.tpm.Attest(ch)
	if err != nil {
		h.t.Fatal(err)
	}
	return ch, roundTrip(h.t, ev, wire.ParseAttestEvidence)
}

// attest runs one scheduled attestation, one minute after the last.
func (h *harness) attest() attest.Verdict {
	h.t.Helper()
	h.now = h.now.Add(time.Minute)
	_, ev := h.evidence()
	vd, err := h.v.Verify(h.ctx, h.dev, ev)
	if err != nil {
		h.t.Fatal(err)
	}
	return vd
}

// reboot power-cycles the TPM through swtpm's control channel. An
// orderly reboot sends TPM2_Shutdown(CLEAR) first, as an OS does; a power
// loss does not. The device then boots the stages again.
func (h *harness) reboot(orderly bool, stages []agent.Stage) {
	h.t.Helper()
	var err error
	if orderly {
		err = h.tpm.Shutdown()
	} else {
		err = h.tpm.Close()
	}
	if err != nil {
		h.t.Fatal(err)
	}
	h.tpm = nil
	swtpmInit(h.t, h.sim.CtrlAddr)
	startup(h.t, h.sim.Addr)
	h.open()
	h.bootStages(stages)
}

// swtpmInit sends CMD_INIT (PTM_INIT) on swtpm's control channel: the
// TPM is re-initialised as at power-on and waits for TPM2_Startup.
func swtpmInit(t testing.TB, ctrl string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", ctrl, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	const cmdInit = 0x02
	msg := binary.BigEndian.AppendUint32(nil, cmdInit)
	msg = binary.BigEndian.AppendUint32(msg, 0) // init flags
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var rc [4]byte
	if _, err := io.ReadFull(c, rc[:]); err != nil {
		t.Fatal(err)
	}
	if r := binary.BigEndian.Uint32(rc[:]); r != 0 {
		t.Fatalf("swtpm CMD_INIT: result 0x%x", r)
	}
}

// startup sends TPM2_Startup(CLEAR) as firmware does at power-on.
// TPM_RC_INITIALIZE means swtpm already did.
func startup(t testing.TB, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	// tag TPM_ST_NO_SESSIONS, size 12, TPM_CC_Startup, TPM_SU_CLEAR.
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0}
	if _, err := c.Write(cmd); err != nil {
		t.Fatal(err)
	}
	var rsp [10]byte
	if _, err := io.ReadFull(c, rsp[:]); err != nil {
		t.Fatal(err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:]); rc != 0 && rc != 0x100 {
		t.Fatalf("TPM2_Startup: rc 0x%x", rc)
	}
}

func copyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func wantResult(t testing.TB, vd attest.Verdict, want attest.Outcome, quarantine bool) {
	t.Helper()
	if vd.Result != want || vd.Quarantine != quarantine {
		t.Fatalf("verdict = %s (quarantine %v), want %s (quarantine %v); reasons: %q",
			vd.Result, vd.Quarantine, want, quarantine, vd.Reasons)
	}
}

func wantReason(t testing.TB, vd attest.Verdict, substr string) {
	t.Helper()
	for _, r := range vd.Reasons {
		if contains(r, substr) {
			return
		}
	}
	t.Fatalf("no reason mentions %q: %q", substr, vd.Reasons)
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

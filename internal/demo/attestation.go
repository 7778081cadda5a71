package demo

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wardiot/ward/agent"
	agentattest "github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/agent/keystore/swtpm"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/client"
	"github.com/wardiot/ward/internal/server"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

const (
	// attestWait bounds each wait on the attestation flows (AK enrollment,
	// a verdict, quarantine): they run over MQTT and a software TPM, and
	// take well under a second when healthy.
	attestWait  = 30 * time.Second
	demoHWModel = "wardboard-1"
	demoRelease = "1.0.0"
)

// releasedChain is what release 1.0.0 boots; its digests are the
// reference values the release tooling signs.
func releasedChain() agentattest.BootChain {
	return agentattest.BootChain{
		Bootloader: sha256.Sum256([]byte("u-boot 2026.01")),
		Config:     sha256.Sum256([]byte("boot config v1")),
		Kernel:     sha256.Sum256([]byte("linux 6.12.9")),
		Rootfs:     sha256.Sum256([]byte("rootfs image of " + demoRelease)),
	}
}

// tpmLab is the two software TPMs of the attestation step. They are made
// before the server starts because the server reads the TPM makers' CA
// roots (ek_roots) when it opens.
type tpmLab struct {
	// skip says why the step cannot run; the TPMs are nil then.
	skip      string
	good, bad *swtpm.Sim
	// rootsFile holds both local CAs' root and issuer certificates.
	rootsFile string
}

// prepareTPMs manufactures two swtpms under dir with swtpm_setup (an EK
// certificate from a private maker CA each) and starts them, or says why
// it cannot: swtpm is not installed.
func prepareTPMs(dir string) (*tpmLab, error) {
	if missing := swtpm.Missing(); len(missing) > 0 {
		return &tpmLab{skip: fmt.Sprintf("%s not installed (Debian packages swtpm and swtpm-tools)", strings.Join(missing, ", "))}, nil
	}
	l := &tpmLab{}
	sims := make([]*swtpm.Sim, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, name := range []string{"good", "bad"} {
		wg.Go(func() { sims[i], errs[i] = swtpm.StartManufactured(filepath.Join(dir, name)) })
	}
	wg.Wait()
	l.good, l.bad = sims[0], sims[1]
	if err := errors.Join(errs...); err != nil {
		l.close()
		return nil, err
	}
	var roots []byte
	for _, s := range sims {
		b, err := s.EKRootsPEM()
		if err != nil {
			l.close()
			return nil, err
		}
		roots = append(roots, b...)
	}
	l.rootsFile = filepath.Join(dir, "ek-roots.pem")
	if err := os.WriteFile(l.rootsFile, roots, 0o600); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

func (l *tpmLab) close() {
	for _, s := range []*swtpm.Sim{l.good, l.bad} {
		if s != nil {
			s.Stop()
		}
	}
}

// tpmDevice is an enrolled device whose agent answers attestation
// challenges with its TPM.
type tpmDevice struct {
	id   string
	ks   keystore.Keystore
	a    *agent.Agent
	tpm  *agentattest.TPM
	conn *agent.Conn
}

func (d *tpmDevice) close() {
	if d.conn != nil {
		d.conn.Close()
	}
	if d.tpm != nil {
		d.tpm.Close()
	}
	if d.a != nil {
		d.a.Close()
	}
	if d.ks != nil {
		d.ks.Close()
	}
}

// attestation shows remote attestation end to end through the API: a
// device booting the released chain passes; one booting a tampered
// kernel fails, is quarantined and cannot renew; the events say so.
func (r *run) attestation(ctx context.Context, srv *server.Server, admin *client.Client, dir string, caPEM []byte, lab *tpmLab) error {
	if lab.skip != "" {
		r.say("Remote attestation: SKIPPED, %s", lab.skip)
		fmt.Fprintln(r.out, "    (install them to see a tampered kernel caught, quarantined and refused renewal)")
		return nil
	}
	r.say("Remote attestation: publishing signed reference values for %s release %s", demoHWModel, demoRelease)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	if err := admin.Do(ctx, "PUT", "/api/v1/tenants/acme/refvalues/key",
		api.RefValueKey{PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}, nil); err != nil {
		return err
	}
	doc, err := refValuesDoc(releasedChain().Stages())
	if err != nil {
		return err
	}
	sig, err := attest.SignRefValues(doc, priv)
	if err != nil {
		return err
	}
	var info api.RefValuesInfo
	if err := admin.Do(ctx, "POST", "/api/v1/tenants/acme/refvalues", api.RefValues{Doc: doc, Signature: sig}, &info); err != nil {
		return fmt.Errorf("import reference values: %w", err)
	}
	if info.HWModel != demoHWModel || info.Release != demoRelease {
		return fmt.Errorf("imported reference values for %s %s", info.HWModel, info.Release)
	}
	k := releasedChain().Kernel
	forged := []byte(strings.Replace(string(doc), hex.EncodeToString(k[:]), strings.Repeat("ab", 32), 1))
	err = admin.Do(ctx, "POST", "/api/v1/tenants/acme/refvalues", api.RefValues{Doc: forged, Signature: sig}, nil)
	var p *client.Problem
	if !errors.As(err, &p) || p.Status < 400 || p.Status >= 500 {
		return fmt.Errorf("reference values with a swapped kernel digest were not refused: %v", err)
	}
	r.proved("stages %s imported, signature checked against acme's release key (Ed25519)", strings.Join(info.Stages, ", "))
	r.proved("the same document with the kernel digest swapped, same signature → %d", p.Status)

	r.say("Two devices with TPMs (swtpm, manufactured by swtpm_setup with an EK certificate) enroll their attestation keys")
	tampered := releasedChain()
	tampered.Kernel = sha256.Sum256([]byte("linux 6.12.9 with a rootkit"))
	good, err := r.tpmDevice(ctx, srv, admin, dir, caPEM, "gw-good", lab.good, releasedChain())
	if good != nil {
		defer good.close()
	}
	if err != nil {
		return fmt.Errorf("gw-good: %w", err)
	}
	bad, err := r.tpmDevice(ctx, srv, admin, dir, caPEM, "gw-tampered", lab.bad, tampered)
	if bad != nil {
		defer bad.close()
	}
	if err != nil {
		return fmt.Errorf("gw-tampered: %w", err)
	}
	r.proved("gw-good and gw-tampered enrolled over EST with one-time tokens, then sent their AKs over MQTT")
	r.proved("each EK certificate verified against its maker's CA (ek_roots); an operator approved; credential activation proved AK and EK share a TPM")

	r.say("Challenging both devices: a fresh nonce, a TPM quote over the PCRs and the boot event log")
	st, err := attestNow(ctx, admin, good.id)
	if err != nil {
		return err
	}
	if st.Result != wire.VerdictPass || !st.TPMVerified || st.Assurance != wire.AssuranceTPM || st.Release != demoRelease {
		return fmt.Errorf("gw-good did not pass: %+v", st)
	}
	r.proved("gw-good → %s: quote signed by its AK over the nonce, event log (%d events) replays to the quoted PCRs, every stage matches release %s",
		st.Result, st.Events, st.Release)
	st, err = attestNow(ctx, admin, bad.id)
	if err != nil {
		return err
	}
	if st.Result != wire.VerdictFail || !st.Quarantine {
		return fmt.Errorf("gw-tampered was not failed and quarantined: %+v", st)
	}
	r.proved("gw-tampered → %s: %s", st.Result, strings.Join(st.Reasons, "; "))
	if err := waitFor(ctx, "gw-tampered to be quarantined", func() (bool, error) {
		s, err := deviceState(ctx, admin, bad.id)
		return s == store.DeviceQuarantined, err
	}); err != nil {
		return err
	}
	if s, err := deviceState(ctx, admin, good.id); err != nil || s != store.DeviceActive {
		return fmt.Errorf("gw-good's state is %q (%v), want active", s, err)
	}
	if err := waitFor(ctx, "gw-tampered's session to be cut", func() (bool, error) { return !bad.conn.Connected(), nil }); err != nil {
		return err
	}
	r.proved("GET /api/v1/tenants/acme/devices/gw-tampered → state %q, its MQTT session cut; gw-good stays %q",
		store.DeviceQuarantined, store.DeviceActive)

	r.say("gw-tampered tries to renew its certificate")
	if err := bad.connect(ctx, srv); err != nil {
		return err
	}
	err = bad.a.Renew(ctx)
	var se *agent.ServerError
	if !errors.As(err, &se) || se.Status != 403 {
		return fmt.Errorf("the quarantined device's renewal was not refused: %v", err)
	}
	r.proved("simplereenroll → %d: %s", se.Status, se.Message)

	srv.Monitor.Flush(ctx)
	var evs []api.SecurityEvent
	if err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/events?type=attestation", nil, &evs); err != nil {
		return err
	}
	var types []string
	for _, e := range evs {
		if e.Device != bad.id {
			return fmt.Errorf("an attestation event about %s: %+v", e.Device, e)
		}
		types = append(types, e.Type)
	}
	for _, want := range []string{"attestation.failed", "attestation.renewal_refused"} {
		if !slices.Contains(types, want) {
			return fmt.Errorf("no %s event (have %v)", want, types)
		}
	}
	slices.Sort(types)
	r.proved("`ward event list --type attestation`: %s, all about gw-tampered", strings.Join(types, ", "))
	return nil
}

// tpmDevice enrolls device with a token (its operational key in a file
// keystore: swtpm serves one connection at a time and the TPM's is the
// attestation agent's), boots chain on sim, reports its release and gets
// its AK enrollment approved through the API.
func (r *run) tpmDevice(ctx context.Context, srv *server.Server, admin *client.Client, dir string, caPEM []byte,
	id string, sim *swtpm.Sim, chain agentattest.BootChain) (*tpmDevice, error) {
	var tok api.CreatedToken
	if err := admin.Do(ctx, "POST", "/api/v1/tokens", api.CreateTokenRequest{Kind: "enroll", Tenant: "acme", Device: id, TTL: "1h"}, &tok); err != nil {
		return nil, err
	}
	base := filepath.Join(dir, id)
	d := &tpmDevice{id: id}
	ks, err := keystore.Open("file:" + filepath.Join(base, "keys"))
	if err != nil {
		return nil, err
	}
	d.ks = ks
	cfg := agent.Config{Server: "https://" + srv.APIAddr(), CABundle: caPEM, Tenant: "acme", Device: id,
		Keystore: ks, StateDir: filepath.Join(base, "state")}
	if _, err := agent.Enroll(ctx, cfg, agent.Token(tok.Secret)); err != nil {
		return d, fmt.Errorf("enroll: %w", err)
	}
	if d.a, err = agent.New(agent.Config{Keystore: ks, StateDir: cfg.StateDir}); err != nil {
		return d, err
	}
	boot := agentattest.SimulatedBoot{Path: filepath.Join(base, "eventlog.bin")}
	if d.tpm, err = agentattest.Open(agentattest.Config{Path: "tcp://" + sim.Addr, StateDir: cfg.StateDir, Boot: boot}); err != nil {
		return d, err
	}
	if err := boot.Boot(d.tpm, chain.Stages()); err != nil {
		return d, fmt.Errorf("measured boot: %w", err)
	}
	if err := d.connect(ctx, srv); err != nil {
		return d, err
	}
	// The device says which release it runs, in its twin's reported state.
	rep, err := json.Marshal(wire.TwinReported{Twin: wire.DefaultTwinName,
		Patch: json.RawMessage(`{"firmware":{"hw_model":"` + demoHWModel + `","release":"` + demoRelease + `"}}`)})
	if err != nil {
		return d, err
	}
	if err := d.conn.Publish(wire.TopicTwinReported, rep, 1); err != nil {
		return d, err
	}
	path := "/api/v1/tenants/acme/devices/" + id + "/attestation"
	if err := waitFor(ctx, id+"'s AK enrollment request", func() (bool, error) {
		var st api.AttestationState
		err := admin.Do(ctx, "GET", path, nil, &st)
		return st.AKPending, err
	}); err != nil {
		return d, err
	}
	if err := admin.Do(ctx, "POST", path+"/enroll", nil, nil); err != nil {
		return d, fmt.Errorf("approve the AK: %w", err)
	}
	if err := waitFor(ctx, id+"'s AK to be enrolled", func() (bool, error) {
		var st api.AttestationState
		err := admin.Do(ctx, "GET", path, nil, &st)
		return st.AKEnrolled, err
	}); err != nil {
		return d, err
	}
	return d, nil
}

// connect opens an MQTT session that answers attestation challenges.
func (d *tpmDevice) connect(ctx context.Context, srv *server.Server) error {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	c, err := d.a.ConnectMQTT(ctx, srv.MQTTAddr())
	if err != nil {
		return err
	}
	d.conn = c
	return c.ServeAttestation(d.tpm)
}

// attestNow challenges device through the API and waits for the verdict.
func attestNow(ctx context.Context, admin *client.Client, device string) (*api.AttestationState, error) {
	path := "/api/v1/tenants/acme/devices/" + device
	var ch api.AttestChallenge
	if err := admin.Do(ctx, "POST", path+"/attest", nil, &ch); err != nil {
		return nil, fmt.Errorf("challenge %s: %w", device, err)
	}
	var st api.AttestationState
	err := waitFor(ctx, device+"'s verdict", func() (bool, error) {
		err := admin.Do(ctx, "GET", path+"/attestation", nil, &st)
		return st.Result != "", err
	})
	return &st, err
}

func deviceState(ctx context.Context, admin *client.Client, device string) (string, error) {
	var d api.Device
	err := admin.Do(ctx, "GET", "/api/v1/tenants/acme/devices/"+device, nil, &d)
	return d.State, err
}

// refValuesDoc is the reference-value document release tooling publishes
// for stages.
func refValuesDoc(stages []agentattest.Stage) ([]byte, error) {
	type stage struct {
		Name   string `json:"name"`
		PCR    int    `json:"pcr"`
		Event  string `json:"event"`
		SHA256 string `json:"sha256"`
	}
	var ss []stage
	for _, s := range stages {
		ss = append(ss, stage{Name: s.Name, PCR: s.PCR, Event: fmt.Sprintf("0x%x", s.Type), SHA256: hex.EncodeToString(s.Digest[:])})
	}
	return json.MarshalIndent(map[string]any{"ward_attest": map[string]any{
		"schema": 1, "hw_model": demoHWModel, "release": demoRelease, "hash": "sha256", "stages": ss}}, "", "  ")
}

// waitFor polls cond until it holds, fails, or attestWait passes.
func waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(attestWait)
	var lastErr error
	for {
		ok, err := cond()
		if ok && err == nil {
			return nil
		}
		lastErr = err
		if time.Now().After(deadline) {
			if lastErr != nil {
				return fmt.Errorf("waiting for %s: %w", what, lastErr)
			}
			return fmt.Errorf("%s did not happen within %v", what, attestWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

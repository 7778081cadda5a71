package attest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	gattest "github.com/google/go-attestation/attest"

	agent "github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/attest/attesttest"
	"github.com/wardiot/ward/wire"
)

func TestHappyPath(t *testing.T) {
	h := newHarness(t)
	h.ready()
	if due, err := h.v.Due(h.ctx, h.dev); err != nil || !due {
		t.Fatalf("Due before any attestation = %v, %v", due, err)
	}
	vd := h.attest()
	wantResult(t, vd, attest.Pass, false)
	if vd.Release != relN || vd.Assurance != attest.AssuranceTPM || !vd.TPMVerified || len(vd.Reasons) != 0 {
		t.Fatalf("verdict = %+v", vd)
	}
	res, err := h.store.LastResult(h.ctx, tenant, h.dev.ID)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := chainFor(relN).Rootfs
	if res.Summary.Events != 4 || len(res.Summary.PCRs) != 4 || res.Summary.PCRs[agent.PCRRootfs] == nil ||
		res.Summary.Counters.ResetCount == 0 && res.Summary.Counters.Clock == 0 {
		t.Fatalf("summary = %+v", res.Summary)
	}
	// PCR 9 = SHA-256(0^32 || rootfs digest): the TPM really holds it.
	want := sha256.Sum256(append(make([]byte, 32), rootfs[:]...))
	if !bytes.Equal(res.Summary.PCRs[agent.PCRRootfs], want[:]) {
		t.Fatalf("PCR 9 = %x, want %x", res.Summary.PCRs[agent.PCRRootfs], want)
	}
	if due, _ := h.v.Due(h.ctx, h.dev); due {
		t.Fatal("Due right after a pass")
	}
	h.now = h.now.Add(25 * time.Hour)
	if due, _ := h.v.Due(h.ctx, h.dev); !due {
		t.Fatal("not Due after the interval")
	}
	roundTrip(t, vd.Wire("c"), wire.ParseAttestVerdict)
}

func TestStaleOrReplayedNonce(t *testing.T) {
	h := newHarness(t)
	h.ready()
	_, ev := h.evidence()
	if vd, err := h.v.Verify(h.ctx, h.dev, ev); err != nil || vd.Result != attest.Pass {
		t.Fatalf("first answer: %v %+v", err, vd)
	}
	// The same evidence again: the challenge is single use.
	if _, err := h.v.Verify(h.ctx, h.dev, ev); !errors.Is(err, attest.ErrChallenge) {
		t.Fatalf("replayed evidence: err = %v, want ErrChallenge", err)
	}
	// An old quote relabelled for a fresh challenge: the nonce differs.
	fresh, _ := h.v.NewChallenge(h.ctx, h.dev)
	ev.ChallengeID = fresh.ID
	vd, err := h.v.Verify(h.ctx, h.dev, ev)
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "nonce")
	// An answer after the challenge expired.
	_, late := h.evidence()
	h.now = h.now.Add(attest.DefaultPolicy().ChallengeTTL + time.Second)
	if _, err := h.v.Verify(h.ctx, h.dev, late); !errors.Is(err, attest.ErrChallenge) {
		t.Fatalf("late evidence: err = %v, want ErrChallenge", err)
	}
	// Another device cannot answer this device's challenge.
	_, ev2 := h.evidence()
	other := h.dev
	other.ID = "dev-2"
	if _, err := h.v.Verify(h.ctx, other, ev2); !errors.Is(err, attest.ErrChallenge) {
		t.Fatalf("other device's evidence: err = %v", err)
	}
}

func TestChallengesBounded(t *testing.T) {
	store := attestStoreOnly(t)
	for i := 0; i < attest.MaxPendingChallenges; i++ {
		if _, err := store.v.NewChallenge(store.ctx, store.dev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.v.NewChallenge(store.ctx, store.dev); !errors.Is(err, attest.ErrTooManyChallenges) {
		t.Fatalf("challenge beyond the bound: %v", err)
	}
	store.now = store.now.Add(time.Hour)
	if _, err := store.v.NewChallenge(store.ctx, store.dev); err != nil {
		t.Fatalf("expired challenges were not purged: %v", err)
	}
}

func TestTamperedEventLog(t *testing.T) {
	h := newHarness(t)
	h.ready()
	_, ev := h.evidence()
	// Flip one bit of the kernel event's digest.
	k := chainFor(relN).Kernel
	i := bytes.Index(ev.TPM.EventLog, k[:])
	if i < 0 {
		t.Fatal("kernel digest not in log")
	}
	ev.TPM.EventLog[i] ^= 1
	vd, err := h.v.Verify(h.ctx, h.dev, ev)
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "does not replay")
}

func TestUnapprovedRelease(t *testing.T) {
	h := newHarness(t)
	h.importRefs(relN, chainFor(relN).Stages())
	// A genuine boot and log, of an image nobody approved.
	h.bootStages(chainFor("gw-fw@6.6.6-evil").Stages())
	h.enroll()
	vd := h.attest()
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "PCR 9: measurement")
	if vd.TPMVerified != true || vd.Release != "" {
		t.Fatalf("verdict = %+v", vd)
	}
}

func TestPolicyPCRWithoutEvents(t *testing.T) {
	h := newHarness(t)
	h.importRefs(relN, chainFor(relN).Stages())
	stages := chainFor(relN).Stages()
	h.bootStages(stages)
	// PCR 9 was extended but the log the device sends omits its event.
	if err := writeLog(h.boot.Path, agent.BuildEventLog(stages[:3])); err != nil {
		t.Fatal(err)
	}
	h.enroll()
	_, ev := h.evidence()
	// go-attestation alone accepts this log: a PCR without events replays.
	el, err := gattest.ParseEventLog(ev.TPM.EventLog)
	if err != nil {
		t.Fatal(err)
	}
	var pcrs []gattest.PCR
	for _, p := range ev.TPM.PCRs {
		if p.Alg == "sha256" {
			pcrs = append(pcrs, gattest.PCR{Index: p.Index, Digest: p.Digest, DigestAlg: crypto.SHA256})
		}
	}
	if _, err := el.Verify(pcrs); err != nil {
		t.Fatalf("go-attestation replay unexpectedly failed: %v", err)
	}
	vd, err := h.v.Verify(h.ctx, h.dev, ev)
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "PCR 9 has no events")
}

func TestMissingStage(t *testing.T) {
	h := newHarness(t)
	// The release measures an initrd into the kernel's PCR; this device
	// skipped it.
	ref := append(chainFor(relN).Stages(), agent.Stage{Name: "initrd", PCR: agent.PCRKernel,
		Type: agent.EvIPL, Digest: sha256.Sum256([]byte("initrd"))})
	h.importRefs(relN, ref)
	h.bootStages(chainFor(relN).Stages())
	h.enroll()
	vd := h.attest()
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "stage initrd (PCR 4) was not measured")
}

func TestSwappedAKRefused(t *testing.T) {
	h := newHarness(t)
	h.ready()
	// A second AK in the same TPM, never enrolled for the device.
	if err := h.tpm.Close(); err != nil {
		t.Fatal(err)
	}
	other, err := agent.Open(agent.Config{Path: "tcp://" + h.sim.Addr, StateDir: t.TempDir(), Boot: h.boot})
	if err != nil {
		t.Fatal(err)
	}
	h.tpm = other
	vd := h.attest()
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "other than the enrolled")
	if vd.TPMVerified {
		t.Fatal("a quote by an unenrolled AK counted as TPM-verified")
	}
}

func TestNoEnrolledAK(t *testing.T) {
	h := newHarness(t)
	h.importRefs(relN, chainFor(relN).Stages())
	h.bootStages(chainFor(relN).Stages())
	vd := h.attest()
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "no enrolled attestation key")
}

// TestEKFromAnotherCARefused presents the device's genuine EK public key
// in a certificate from a CA that is not a registered TPM manufacturer.
func TestEKFromAnotherCARefused(t *testing.T) {
	h := newHarness(t)
	req, err := h.tpm.AKEnrollRequest()
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := x509.ParseCertificate(req.EKCert)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Rogue TPM CA"},
		NotBefore: h.now.Add(-time.Hour), NotAfter: h.now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	ekTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: h.now.Add(-time.Hour),
		NotAfter: h.now.Add(time.Hour), KeyUsage: x509.KeyUsageKeyEncipherment}
	forged, err := x509.CreateCertificate(rand.Reader, ekTmpl, ca, genuine.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	req.EKCert = forged
	if _, err := h.v.BeginAKEnrollment(h.ctx, h.dev, req); !errors.Is(err, attest.ErrEnrollment) ||
		!contains(err.Error(), "registered TPM manufacturer root") {
		t.Fatalf("EK from another CA: err = %v", err)
	}
}

// TestActivationWithWrongEK: the device presents another genuine TPM's EK
// certificate with its own AK. The credential is encrypted to that EK, so
// the device's TPM cannot recover it.
func TestActivationWithWrongEK(t *testing.T) {
	h := newHarness(t)
	simB := tpmtest.Manufactured(t)
	h.now = time.Now().UTC() // B's EK certificate was issued just now
	tpmB, err := agent.Open(agent.Config{Path: "tcp://" + simB.Addr, StateDir: t.TempDir(), Boot: agent.KernelLog{}})
	if err != nil {
		t.Fatal(err)
	}
	reqB, err := tpmB.AKEnrollRequest()
	tpmB.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Register B's manufacturer too, so its EK certificate is genuine.
	v, err := attest.New(attest.Config{Store: h.store, RefKeys: h.store,
		EKRoots:         mergePools(t, "swtpm-localca-rootca-cert.pem", h.sim.EKCADir, simB.EKCADir),
		EKIntermediates: mergePools(t, "issuercert.pem", h.sim.EKCADir, simB.EKCADir),
		Now:             func() time.Time { return h.now }})
	if err != nil {
		t.Fatal(err)
	}
	req, err := h.tpm.AKEnrollRequest()
	if err != nil {
		t.Fatal(err)
	}
	req.EKCert = reqB.EKCert
	ch, err := v.BeginAKEnrollment(h.ctx, h.dev, req)
	if err != nil {
		t.Fatalf("B's genuine EK certificate refused: %v", err)
	}
	resp, err := h.tpm.ActivateCredential(ch)
	if err != nil {
		t.Logf("the device's TPM cannot activate a credential made for another EK: %v", err)
	} else {
		// Whatever the TPM returned, it is not the secret.
		err = v.FinishAKEnrollment(h.ctx, h.dev, resp)
		if !errors.Is(err, attest.ErrEnrollment) {
			t.Fatalf("activation with the wrong EK accepted: %v", err)
		}
	}
	// A guessed secret is refused too, and the activation is single use.
	if err := v.FinishAKEnrollment(h.ctx, h.dev, &wire.AKActivationResponse{ID: ch.ID, Secret: make([]byte, 32)}); !errors.Is(err, attest.ErrEnrollment) {
		t.Fatalf("guessed secret: %v", err)
	}
	if _, err := h.store.AK(h.ctx, tenant, h.dev.ID); !errors.Is(err, attest.ErrNotFound) {
		t.Fatalf("an AK was registered: %v", err)
	}
}

func TestOrderlyRebootAccepted(t *testing.T) {
	h := newHarness(t)
	h.ready()
	wantResult(t, h.attest(), attest.Pass, false)
	before := counters(t, h)
	h.reboot(true, chainFor(relN).Stages())
	vd := h.attest()
	wantResult(t, vd, attest.Pass, false)
	after := counters(t, h)
	if after.ResetCount != before.ResetCount+1 || !after.Safe {
		t.Fatalf("counters %+v -> %+v, want reset count +1 and safe", before, after)
	}
}

func TestPowerLossFlaggedNotQuarantined(t *testing.T) {
	h := newHarness(t)
	h.ready()
	wantResult(t, h.attest(), attest.Pass, false)
	h.reboot(false, chainFor(relN).Stages())
	vd := h.attest()
	wantResult(t, vd, attest.Flag, false)
	wantReason(t, vd, "Safe=0")
	if vd.Release != relN || !vd.TPMVerified {
		t.Fatalf("verdict = %+v", vd)
	}
}

// TestResetCountDecreaseQuarantined restores a copy of the TPM's state
// taken two reboots ago (a rolled-back or cloned TPM): its reset count is
// lower than one the verifier has already seen.
func TestResetCountDecreaseQuarantined(t *testing.T) {
	h := newHarness(t)
	h.ready()
	wantResult(t, h.attest(), attest.Pass, false)
	snapshot := copyDir(t, h.sim.StateDir)
	for range 2 {
		h.reboot(true, chainFor(relN).Stages())
		wantResult(t, h.attest(), attest.Pass, false)
	}
	seen := counters(t, h)
	if err := h.tpm.Close(); err != nil {
		t.Fatal(err)
	}
	h.sim = tpmtest.StartState(t, snapshot)
	h.open()
	h.bootStages(chainFor(relN).Stages())
	vd := h.attest()
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "reset count went down")
	if c := counters(t, h); c != seen {
		t.Fatalf("stored counters moved backwards: %+v -> %+v", seen, c)
	}
}

func TestReleaseUpgradeAccepted(t *testing.T) {
	h := newHarness(t)
	h.ready()
	wantResult(t, h.attest(), attest.Pass, false)
	// The OTA engine assigns N+1: the record names it, N stays approved,
	// the device has not rebooted yet.
	h.dev.Release, h.dev.PreviousRelease = relN1, relN
	vd := h.attest()
	wantResult(t, vd, attest.Pass, false)
	if vd.Release != relN {
		t.Fatalf("matched %q, want previous release %s", vd.Release, relN)
	}
	// Rebooted into N+1 before its reference values were imported.
	h.reboot(true, chainFor(relN1).Stages())
	vd = h.attest()
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "no approved reference values")
	h.importRefs(relN1, chainFor(relN1).Stages())
	vd = h.attest()
	wantResult(t, vd, attest.Pass, false)
	if vd.Release != relN1 {
		t.Fatalf("matched %q, want %s", vd.Release, relN1)
	}
}

func TestSoftwareTierLowAssurance(t *testing.T) {
	s := attestStoreOnly(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s.dev.PublicKey = &key.PublicKey
	s.importRefs(relN, chainFor(relN).Stages())
	slots := map[string][32]byte{"a": chainFor(relN).Rootfs, "b": sha256.Sum256([]byte("old"))}
	answer := func(active string, signer *ecdsa.PrivateKey) attest.Verdict {
		ch, err := s.v.NewChallenge(s.ctx, s.dev)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := agent.SoftwareEvidence(ch, slots, active, signer, s.now)
		if err != nil {
			t.Fatal(err)
		}
		vd, err := s.v.Verify(s.ctx, s.dev, roundTrip(t, ev, wire.ParseAttestEvidence))
		if err != nil {
			t.Fatal(err)
		}
		return vd
	}
	vd := answer("a", key)
	wantResult(t, vd, attest.Pass, false)
	if vd.Assurance != attest.AssuranceSoftware || vd.TPMVerified || vd.Release != relN {
		t.Fatalf("verdict = %+v", vd)
	}
	wantReason(t, vd, "low assurance")
	wantResult(t, answer("b", key), attest.Fail, true)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	vd = answer("a", other)
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "does not verify with the device key")
	// A device with an enrolled AK cannot downgrade to the software tier.
	s.store.PutAK(s.ctx, attest.AKRecord{Tenant: tenant, Device: s.dev.ID, Public: []byte{1}})
	vd = answer("a", key)
	wantResult(t, vd, attest.Fail, true)
	wantReason(t, vd, "downgrade")
}

func TestRenewalGating(t *testing.T) {
	h := newHarness(t)
	h.store.SetPolicy(tenant, "", attest.Policy{Interval: time.Hour, ChallengeTTL: time.Minute,
		QuarantineOnFailure: true, RenewalRequiresPass: true, RenewalMaxAge: 10 * time.Minute})
	h.ready()
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(&newKey.PublicKey)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherSPKI, _ := x509.MarshalPKIXPublicKey(&otherKey.PublicKey)

	if err := h.v.RenewalAllowed(h.ctx, h.dev, spki, h.now); !errors.Is(err, attest.ErrRenewalRefused) {
		t.Fatalf("renewal without attestation: %v", err)
	}
	// A scheduled pass does not bind the CSR key.
	wantResult(t, h.attest(), attest.Pass, false)
	if err := h.v.RenewalAllowed(h.ctx, h.dev, spki, h.now); !errors.Is(err, attest.ErrRenewalRefused) {
		t.Fatalf("renewal with an unbound pass: %v", err)
	}
	ch, err := h.v.RenewalChallenge(h.ctx, h.dev, spki)
	if err != nil {
		t.Fatal(err)
	}
	ch = roundTrip(t, ch, wire.ParseAttestChallenge)
	if !bytes.Equal(ch.Nonce, wire.RenewalNonce(ch.ServerNonce, spki)) {
		t.Fatal("renewal nonce does not bind the CSR key")
	}
	ev, err := h.tpm.Attest(ch)
	if err != nil {
		t.Fatal(err)
	}
	vd, err := h.v.Verify(h.ctx, h.dev, roundTrip(t, ev, wire.ParseAttestEvidence))
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, vd, attest.Pass, false)
	if err := h.v.RenewalAllowed(h.ctx, h.dev, spki, h.now.Add(time.Minute)); err != nil {
		t.Fatalf("renewal with a fresh bound pass: %v", err)
	}
	if err := h.v.RenewalAllowed(h.ctx, h.dev, otherSPKI, h.now); !errors.Is(err, attest.ErrRenewalRefused) {
		t.Fatalf("renewal with another key: %v", err)
	}
	if err := h.v.RenewalAllowed(h.ctx, h.dev, spki, h.now.Add(11*time.Minute)); !errors.Is(err, attest.ErrRenewalRefused) {
		t.Fatalf("renewal with a stale pass: %v", err)
	}
}

func TestImportRefValuesSignature(t *testing.T) {
	s := attestStoreOnly(t)
	doc := refDoc(t, relN, chainFor(relN).Stages())
	_, rogue, _ := ed25519.GenerateKey(rand.Reader)
	sig, _ := attest.SignRefValues(doc, rogue)
	if _, err := s.v.ImportRefValues(s.ctx, tenant, doc, sig); !errors.Is(err, attest.ErrRefValues) {
		t.Fatalf("document signed by another key: %v", err)
	}
	good, _ := attest.SignRefValues(doc, s.refKey)
	// Re-serialized (as TUF custom metadata would be): still verifies.
	var compact bytes.Buffer
	if err := compactJSON(&compact, doc); err != nil {
		t.Fatal(err)
	}
	if _, err := s.v.ImportRefValues(s.ctx, tenant, compact.Bytes(), good); err != nil {
		t.Fatalf("re-serialized document: %v", err)
	}
	// A changed digest does not.
	tampered := bytes.Replace(doc, []byte(`"pcr": 9`), []byte(`"pcr": 8`), 1)
	if _, err := s.v.ImportRefValues(s.ctx, tenant, tampered, good); !errors.Is(err, attest.ErrRefValues) {
		t.Fatalf("tampered document: %v", err)
	}
	if _, err := s.v.ImportRefValues(s.ctx, "other-tenant", doc, good); err == nil {
		t.Fatal("imported for a tenant without a key")
	}
}

func counters(t testing.TB, h *harness) attest.Counters {
	t.Helper()
	c, _, err := h.store.AdvanceCounters(h.ctx, tenant, h.dev.ID, attest.Counters{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// attestStoreOnly is a verifier without a TPM (software tier, store
// behaviour).
func attestStoreOnly(t testing.TB) *harness {
	t.Helper()
	h := &harness{t: t, ctx: context.Background(), store: attesttest.New(),
		now: time.Now().UTC().Truncate(time.Second)}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h.refKey = priv
	h.store.SetRefValueKey(tenant, pub)
	v, err := attest.New(attest.Config{Store: h.store, RefKeys: h.store, Now: func() time.Time { return h.now }})
	if err != nil {
		t.Fatal(err)
	}
	h.v = v
	h.dev = attest.Device{Tenant: tenant, ID: "dev-1", HWModel: hwModel, Release: relN}
	return h
}

func mergePools(t testing.TB, file string, dirs ...string) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, file))
		if err != nil {
			t.Fatal(err)
		}
		if !pool.AppendCertsFromPEM(b) {
			t.Fatalf("%s: no certificate", file)
		}
	}
	return pool
}

func writeLog(path string, log []byte) error { return os.WriteFile(path, log, 0o600) }

func compactJSON(dst *bytes.Buffer, src []byte) error { return json.Compact(dst, src) }

package attest_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gattest "github.com/google/go-attestation/attest"

	"github.com/wardiot/ward/agent/attest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/wire"
)

func chain() attest.BootChain {
	return attest.BootChain{
		Bootloader: sha256.Sum256([]byte("u-boot 2026.01")),
		Config:     sha256.Sum256([]byte("boot config")),
		Kernel:     sha256.Sum256([]byte("linux 6.12")),
		Rootfs:     sha256.Sum256([]byte("rootfs slot a")),
	}
}

// TestSimulatedBootQuoteReplays boots a swtpm with the simulated boot,
// quotes it and replays the log with go-attestation, then has tpm2-tools
// (written by others) parse the same log.
func TestSimulatedBootQuoteReplays(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	dir := t.TempDir()
	boot := attest.SimulatedBoot{Path: filepath.Join(dir, "eventlog.bin")}
	tpm, err := attest.Open(attest.Config{Path: "tcp://" + sim.Addr, StateDir: dir, Boot: boot})
	if err != nil {
		t.Fatal(err)
	}
	if err := boot.Boot(tpm, chain().Stages()); err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	ev, err := tpm.Attest(&wire.AttestChallenge{ID: "c1", Nonce: nonce, Expires: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	akPub := tpm.AKPublic()
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}

	pub, err := gattest.ParseAKPublic(ev.TPM.AKPublic)
	if err != nil || !bytes.Equal(ev.TPM.AKPublic, akPub) {
		t.Fatalf("AK public: %v", err)
	}
	var quotes []gattest.Quote
	for _, q := range ev.TPM.Quotes {
		quotes = append(quotes, gattest.Quote{Quote: q.Quote, Signature: q.Signature})
	}
	var pcrs []gattest.PCR
	for _, p := range ev.TPM.PCRs {
		h := crypto.SHA256
		if p.Alg == "sha1" {
			h = crypto.SHA1
		}
		pcrs = append(pcrs, gattest.PCR{Index: p.Index, Digest: p.Digest, DigestAlg: h})
	}
	if err := pub.VerifyAll(quotes, pcrs, nonce); err != nil {
		t.Fatalf("quote does not verify: %v", err)
	}
	el, err := gattest.ParseEventLog(ev.TPM.EventLog)
	if err != nil {
		t.Fatal(err)
	}
	var sha256PCRs []gattest.PCR
	for _, p := range pcrs {
		if p.DigestAlg == crypto.SHA256 {
			sha256PCRs = append(sha256PCRs, p)
		}
	}
	events, err := el.Verify(sha256PCRs)
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if len(events) != 4 {
		t.Fatalf("replayed %d events, want 4", len(events))
	}
	c := chain()
	if events[3].Index != attest.PCRRootfs || !bytes.Equal(events[3].Digest, c.Rootfs[:]) {
		t.Fatalf("rootfs event = PCR %d %x", events[3].Index, events[3].Digest)
	}

	if _, err := exec.LookPath("tpm2_eventlog"); err != nil {
		t.Log("tpm2_eventlog not installed (Debian tpm2-tools): skipping the cross-check")
		return
	}
	out, err := exec.Command("tpm2_eventlog", boot.Path).CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_eventlog: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "EV_IPL") || !strings.Contains(strings.ToLower(string(out)), strings.ToLower(hexs(c.Rootfs[:]))) {
		t.Fatalf("tpm2_eventlog output lacks the rootfs event:\n%s", out)
	}
}

func hexs(b []byte) string {
	const h = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, h[c>>4], h[c&15])
	}
	return string(out)
}

// TestAKPersists reopens the TPM and gets the same AK back from the blob.
func TestAKPersists(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	dir := t.TempDir()
	cfg := attest.Config{Path: "tcp://" + sim.Addr, StateDir: dir, Boot: attest.KernelLog{}}
	a, err := attest.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := a.AKPublic()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, attest.AKBlobFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("AK blob: %v %v", fi, err)
	}
	b, err := attest.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !bytes.Equal(first, b.AKPublic()) {
		t.Fatal("reopened TPM has a different AK")
	}
	req, err := b.AKEnrollRequest()
	if err != nil {
		t.Fatal(err)
	}
	if len(req.EKCert) == 0 || !bytes.Equal(req.AK.Public, first) {
		t.Fatal("enroll request lacks EK certificate or AK")
	}
}

func TestSoftwareEvidenceSigned(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c := &wire.AttestChallenge{ID: "c", Nonce: make([]byte, 32)}
	ev, err := attest.SoftwareEvidence(c, map[string][32]byte{"a": sha256.Sum256([]byte("a")), "b": sha256.Sum256([]byte("b"))}, "a", key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := ev.Software.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(&key.PublicKey, d[:], ev.Software.Signature) {
		t.Fatal("software report signature does not verify")
	}
	if _, err := attest.SoftwareEvidence(c, map[string][32]byte{"a": {}}, "b", key, time.Now()); err == nil {
		t.Fatal("accepted an active slot without a hash")
	}
}

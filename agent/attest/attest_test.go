package attest_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
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
	msg, _ := json.Marshal(&wire.AttestChallenge{ID: "c1", Nonce: nonce, PCRs: []int{0, 1, 4, 9}, Expires: time.Now()})
	reply, err := tpm.Respond(msg)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := wire.ParseAttestEvidence(reply)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.Respond([]byte(`{"id":"c2"}`)); err == nil {
		t.Fatal("answered a challenge without a nonce")
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

	var pcr9 []byte
	for _, p := range ev.TPM.PCRs {
		if p.Index == 9 && p.Alg == "sha256" {
			pcr9 = p.Digest
		}
	}
	if len(pcr9) != sha256.Size {
		t.Fatal("evidence lacks SHA-256 PCR 9")
	}
	checkQuoteWithTPM2Tools(t, dir, pub.Public, ev.TPM.Quotes[0], nonce, pcr9, sim)

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

// checkQuoteWithTPM2Tools has tpm2_checkquote (tpm2-tools) verify the
// quote's signature and nonce with the AK public key, and compares PCRs
// tpm2_pcrread reads from the TPM with those Attest reported.
func checkQuoteWithTPM2Tools(t *testing.T, dir string, akPub crypto.PublicKey, q wire.TPMQuote, nonce, pcr9 []byte, sim *tpmtest.Sim) {
	t.Helper()
	if _, err := exec.LookPath("tpm2_checkquote"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tpm2_checkquote not installed (Debian tpm2-tools), mandatory because CI is set")
		}
		t.Log("tpm2_checkquote not installed (Debian tpm2-tools): skipping the cross-check")
		return
	}
	der, err := x509.MarshalPKIXPublicKey(akPub)
	if err != nil {
		t.Fatal(err)
	}
	akPEM := filepath.Join(dir, "ak.pem")
	msg := filepath.Join(dir, "quote.bin")
	sig := filepath.Join(dir, "quote.sig")
	os.WriteFile(akPEM, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	os.WriteFile(msg, q.Quote, 0o600)
	os.WriteFile(sig, q.Signature, 0o600)
	out, err := exec.Command("tpm2_checkquote", "-u", akPEM, "-m", msg, "-s", sig, "-q", hexs(nonce), "-g", "sha256").CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_checkquote refused our quote: %v\n%s", err, out)
	}
	// The TPM's own PCR 9, read by tpm2_pcrread, is what Attest reported.
	pcrOut, err := exec.Command("tpm2_pcrread", "-T", sim.TCTI(), "sha256:9").CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_pcrread: %v\n%s", err, pcrOut)
	}
	if !strings.Contains(strings.ToLower(string(pcrOut)), hexs(pcr9)) {
		t.Fatalf("tpm2_pcrread PCR 9 differs from the evidence (%x):\n%s", pcr9, pcrOut)
	}
	bad := append([]byte(nil), nonce...)
	bad[0] ^= 1
	if out, err := exec.Command("tpm2_checkquote", "-u", akPEM, "-m", msg, "-s", sig, "-q", hexs(bad), "-g", "sha256").CombinedOutput(); err == nil {
		t.Fatalf("tpm2_checkquote accepted a wrong nonce:\n%s", out)
	}
}

func TestCheckRenewalBinding(t *testing.T) {
	server := bytes.Repeat([]byte{7}, 32)
	c := &wire.AttestChallenge{ID: "r", Nonce: wire.RenewalNonce(server, []byte("spki")), ServerNonce: server}
	if err := attest.CheckRenewalBinding(c, []byte("spki")); err != nil {
		t.Fatal(err)
	}
	if err := attest.CheckRenewalBinding(c, []byte("other")); err == nil {
		t.Fatal("accepted a challenge binding another key")
	}
	c.ServerNonce = nil
	if err := attest.CheckRenewalBinding(c, []byte("spki")); err == nil {
		t.Fatal("accepted a scheduled challenge as a renewal challenge")
	}
}

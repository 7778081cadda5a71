package keystore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/wardiot/ward/agent/internal/peertest"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
)

// stateDir returns a fresh 0700 directory (t.TempDir is 0755, which the
// keystore rightly refuses).
func stateDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

func openTPMStore(t *testing.T, sim *tpmtest.Sim, state string) *tpmStore {
	t.Helper()
	return mustOpen(t, sim.Spec(), WithStateDir(state)).(*tpmStore)
}

// TestTPMPublicMatchesTPM reads the key back from the TPM with
// TPM2_ReadPublic and checks both the point and the attributes that keep
// it inside the TPM.
func TestTPMPublicMatchesTPM(t *testing.T) {
	sim := tpmtest.StartSim(t)
	s := openTPMStore(t, sim, stateDir(t))
	k, err := s.Generate(context.Background(), "device-1", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signVerify(t, k) // loads the key
	s.mu.Lock()
	h := s.loaded["device-1"].handle
	rsp, err := tpm2.ReadPublic{ObjectHandle: h.Handle}.Execute(s.tpm)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	want := tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true}
	if pub.ObjectAttributes != want {
		t.Errorf("attributes %+v, want exactly fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|sign", pub.ObjectAttributes)
	}
	fromTPM, err := checkTPMPublic(rsp.OutPublic)
	if err != nil {
		t.Fatal(err)
	}
	if !fromTPM.Equal(k.Public()) {
		t.Fatal("TPM2_ReadPublic returns a different public key than the keystore")
	}
}

// TestTPMKeyVisibleToTPM2Tools leaves the keystore's objects loaded in
// swtpm and has tpm2-tools (another TPM stack) list the key, read its
// public part, and sign with it.
func TestTPMKeyVisibleToTPM2Tools(t *testing.T) {
	for _, p := range []string{"tpm2_getcap", "tpm2_readpublic", "tpm2_sign", "tpm2_flushcontext"} {
		peertest.Require(t, p, "tpm2-tools")
	}
	sim := tpmtest.StartSim(t)
	s := openTPMStore(t, sim, stateDir(t))
	k, err := s.Generate(context.Background(), "device-1", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signVerify(t, k)
	handle := fmt.Sprintf("0x%x", uint32(s.loaded["device-1"].handle.Handle))
	// swtpm serves one connection at a time: hang up without flushing,
	// so the objects stay for tpm2-tools.
	s.mu.Lock()
	s.closed = true
	s.tpm.Close()
	s.mu.Unlock()

	dir := t.TempDir()
	tool := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+sim.TCTI())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := tool("tpm2_getcap", "handles-transient"); !strings.Contains(strings.ToLower(out), handle) {
		t.Fatalf("tpm2_getcap handles-transient does not list %s:\n%s", handle, out)
	}
	pubPath := filepath.Join(dir, "pub.pem")
	tool("tpm2_readpublic", "-c", handle, "-f", "pem", "-o", pubPath)
	b, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("tpm2_readpublic wrote no PEM: %s", b)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !samePublic(k.Public(), pub) {
		t.Fatal("tpm2_readpublic shows a different public key than the keystore")
	}

	msg := []byte("signed by tpm2-tools with the keystore's key")
	msgPath, sigPath := filepath.Join(dir, "msg"), filepath.Join(dir, "sig")
	if err := os.WriteFile(msgPath, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	tool("tpm2_sign", "-c", handle, "-g", "sha256", "-s", "ecdsa", "-f", "plain", "-o", sigPath, msgPath)
	sig, err := os.ReadFile(sigPath)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("tpm2_sign's signature with the key does not verify against the keystore's public key")
	}
	tool("tpm2_flushcontext", "-t")
}

// TestTPMBlobIsNotAPrivateKey shows what is on disk: TPM-wrapped blobs
// that no key parser accepts and that no other TPM will load.
func TestTPMBlobIsNotAPrivateKey(t *testing.T) {
	ctx := context.Background()
	sim := tpmtest.StartSim(t)
	state := stateDir(t)
	s := openTPMStore(t, sim, state)
	if _, err := s.Generate(ctx, "device-1", ECDSAP256); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(state, "device-1"+tpmKeySuffix)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemTSS2Key {
		t.Fatalf("state file is not a %q PEM", pemTSS2Key)
	}
	var blob tss2Key
	if _, err := asn1.Unmarshal(block.Bytes, &blob); err != nil {
		t.Fatal(err)
	}
	for name, der := range map[string][]byte{"file": block.Bytes, "private blob": blob.PrivKey} {
		if _, err := x509.ParsePKCS8PrivateKey(der); err == nil {
			t.Errorf("%s parses as PKCS#8", name)
		}
		if _, err := x509.ParseECPrivateKey(der); err == nil {
			t.Errorf("%s parses as an EC private key", name)
		}
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		if out, err := exec.Command(openssl, "pkey", "-in", path, "-noout").CombinedOutput(); err == nil {
			t.Errorf("openssl pkey accepts the TPM blob as a private key:\n%s", out)
		}
	}

	// Another TPM (different storage seed) refuses to load the blob.
	other := tpmtest.StartSim(t)
	otherState := stateDir(t)
	if err := os.WriteFile(filepath.Join(otherState, "device-1"+tpmKeySuffix), data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = openTPMStore(t, other, otherState).Load(ctx, "device-1")
	if err == nil || !strings.Contains(err.Error(), "TPM2_Load failed") {
		t.Fatalf("another TPM: err = %v, want a TPM2_Load failure", err)
	}
}

// TestTPMSwappedPublicAreaRefused puts one key's public area next to
// another key's private blob: the TPM's integrity check must refuse it,
// so the attributes in a state file cannot be forged.
func TestTPMSwappedPublicAreaRefused(t *testing.T) {
	ctx := context.Background()
	sim := tpmtest.StartSim(t)
	state := stateDir(t)
	s := openTPMStore(t, sim, state)
	for _, n := range []string{"a", "b"} {
		if _, err := s.Generate(ctx, n, ECDSAP256); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.readBlob("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.readBlob("b")
	if err != nil {
		t.Fatal(err)
	}
	a.PubKey = b.PubKey
	data, err := a.encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "mixed"+tpmKeySuffix), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "mixed"); err == nil || !strings.Contains(err.Error(), "TPM2_Load failed") {
		t.Fatalf("err = %v, want a TPM2_Load failure", err)
	}
}

// TestTPMMoreKeysThanObjectSlots uses more keys than swtpm has transient
// object slots, in an order that forces evictions and reloads.
func TestTPMMoreKeysThanObjectSlots(t *testing.T) {
	ctx := context.Background()
	sim := tpmtest.StartSim(t)
	s := openTPMStore(t, sim, stateDir(t))
	var keys []Key
	for i := range 5 {
		k, err := s.Generate(ctx, fmt.Sprintf("k%d", i), ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	for range 2 {
		for _, k := range keys {
			signVerify(t, k)
		}
	}
	if n := len(s.loaded); n > maxLoadedKeys {
		t.Fatalf("%d keys loaded, limit %d", n, maxLoadedKeys)
	}
}

func TestTPMRejectsBadDigests(t *testing.T) {
	sim := tpmtest.StartSim(t)
	s := openTPMStore(t, sim, stateDir(t))
	k, err := s.Generate(context.Background(), "device-1", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	for name, c := range map[string]struct {
		digest []byte
		opts   crypto.SignerOpts
	}{
		"raw-message":     {[]byte("x"), crypto.Hash(0)},
		"ed25519-opts":    {[]byte("x"), &ed25519.Options{}},
		"length-mismatch": {d[:20], crypto.SHA256},
		"sha1":            {d[:20], crypto.SHA1},
	} {
		if _, err := k.Sign(rand.Reader, c.digest, c.opts); err == nil {
			t.Errorf("%s: Sign succeeded", name)
		}
	}
}

// TestTPMManufactured runs the keystore on a TPM provisioned like a real
// device (EKs persisted, NV locked), next to the endorsement keys.
func TestTPMManufactured(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	s := openTPMStore(t, sim, stateDir(t))
	k, err := s.Generate(context.Background(), "device-1", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signVerify(t, k)
}

func TestTPMNeedsStateDir(t *testing.T) {
	if _, err := Open("tpm:tcp://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "WithStateDir") {
		t.Fatalf("err = %v, want a hint about WithStateDir", err)
	}
}

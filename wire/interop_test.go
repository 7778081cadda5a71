package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pythonCOSE is an independent COSE implementation for the interop test:
// cbor2 for CBOR and pyca/cryptography for Ed25519, ECDSA, HMAC and HKDF.
// It verifies what Go produced and produces envelopes for Go to verify.
const pythonCOSE = `
import sys, json, cbor2, hmac, hashlib
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

inp = json.load(open(sys.argv[1]))
out = {}

def ward_fields(prot):
    return [prot[-70001], prot[-70002], prot[-70003], prot[-70004], prot[-70005]]

# 1. HKDF epoch key.
secret = bytes.fromhex(inp["secret"])
info = b"ward telemetry" + inp["epoch"].to_bytes(8, "big")
key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
out["epoch_key"] = key.hex()

# 2. Verify Go's COSE_Mac0.
msg = cbor2.loads(bytes.fromhex(inp["mac0"]))
assert msg.tag == 17, msg.tag
prot_b, unprot, payload, tag = msg.value
prot = cbor2.loads(prot_b)
assert prot[1] == 5 and unprot == {}
to_mac = cbor2.dumps(["MAC0", prot_b, b"", payload])
assert hmac.compare_digest(hmac.new(key, to_mac, hashlib.sha256).digest(), tag), "mac0"
out["mac0_fields"] = ward_fields(prot) + [prot[-70006], payload.decode()]

# 3. Verify Go's COSE_Sign1 (EdDSA and ES256).
for name in ("ed", "ec"):
    msg = cbor2.loads(bytes.fromhex(inp["sign1_" + name]))
    assert msg.tag == 18
    prot_b, unprot, payload, sig = msg.value
    prot = cbor2.loads(prot_b)
    tbs = cbor2.dumps(["Signature1", prot_b, b"", payload])
    pub = serialization.load_der_public_key(bytes.fromhex(inp["pub_" + name]))
    if name == "ed":
        assert prot[1] == -8
        pub.verify(sig, tbs)
    else:
        assert prot[1] == -7
        r = int.from_bytes(sig[:32], "big"); s = int.from_bytes(sig[32:], "big")
        pub.verify(utils.encode_dss_signature(r, s), tbs, ec.ECDSA(hashes.SHA256()))
    out["sign1_" + name + "_fields"] = ward_fields(prot) + [prot[4].hex(), payload.decode()]

# 4. Produce envelopes for Go.
prot_b = cbor2.dumps({1: 5, -70001: "py-dev", -70002: 77, -70003: 1790000000999,
                      -70004: "py", -70005: 2, -70006: inp["epoch"]}, canonical=True)
payload = b'{"from":"python"}'
tag = hmac.new(key, cbor2.dumps(["MAC0", prot_b, b"", payload]), hashlib.sha256).digest()
out["py_mac0"] = cbor2.dumps(cbor2.CBORTag(17, [prot_b, {}, payload, tag])).hex()

sk = ed25519.Ed25519PrivateKey.generate()
prot_b = cbor2.dumps({1: -8, 4: b"py-kid", -70001: "py-dev", -70002: 78, -70003: 1790000000999,
                      -70004: "py", -70005: 2}, canonical=True)
sig = sk.sign(cbor2.dumps(["Signature1", prot_b, b"", payload]))
out["py_sign1"] = cbor2.dumps(cbor2.CBORTag(18, [prot_b, {}, payload, sig])).hex()
out["py_pub"] = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
json.dump(out, open(sys.argv[2], "w"))
`

// findPythonCOSE returns a python3 that has cbor2 and cryptography (Debian:
// python3-cbor2, python3-cryptography).
func findPythonCOSE(t *testing.T) string {
	for _, p := range []string{"python3", "/usr/bin/python3"} {
		if exec.Command(p, "-c", "import cbor2, cryptography").Run() == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("python3 with cbor2 and cryptography is required in CI (apt-get install python3-cbor2 python3-cryptography)")
	}
	t.Skip("python3 with cbor2 and cryptography not found (apt-get install python3-cbor2 python3-cryptography)")
	return ""
}

// TestPythonCOSEInterop proves the envelopes interoperate with an
// implementation no one here wrote: Python's cbor2 and pyca/cryptography.
func TestPythonCOSEInterop(t *testing.T) {
	py := findPythonCOSE(t)
	dir := t.TempDir()
	secret := bytes.Repeat([]byte{0x42}, 32)
	const epoch = 12
	key, err := EpochKey(secret, epoch)
	if err != nil {
		t.Fatal(err)
	}
	h := testHeader()
	h.Epoch = epoch
	mac0, err := MacTelemetry(key, h, []byte(`{"t":1}`))
	if err != nil {
		t.Fatal(err)
	}
	ss := signers(t)
	in := map[string]any{"secret": hex.EncodeToString(secret), "epoch": epoch, "mac0": hex.EncodeToString(mac0)}
	for name, alg := range map[string]string{"ed": "EdDSA", "ec": "ES256"} {
		h := testHeader()
		h.KeyID = []byte("kid-" + name)
		b, err := SignTelemetry(ss[alg], h, []byte(`{"t":2}`))
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKIXPublicKey(ss[alg].Public())
		if err != nil {
			t.Fatal(err)
		}
		in["sign1_"+name] = hex.EncodeToString(b)
		in["pub_"+name] = hex.EncodeToString(der)
	}
	inPath, outPath, script := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json"), filepath.Join(dir, "cose.py")
	js, _ := json.Marshal(in)
	os.WriteFile(inPath, js, 0o600)
	os.WriteFile(script, []byte(pythonCOSE), 0o600)
	if out, err := exec.Command(py, script, inPath, outPath).CombinedOutput(); err != nil {
		t.Fatalf("python rejected Go's envelopes: %v\n%s", err, out)
	}
	var out map[string]any
	ob, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ob, &out); err != nil {
		t.Fatal(err)
	}
	if out["epoch_key"] != hex.EncodeToString(key) {
		t.Fatalf("HKDF differs: python %v, Go %x", out["epoch_key"], key)
	}
	fields := func(k string) string { b, _ := json.Marshal(out[k]); return string(b) }
	want := `["dev-1",42,1790000000123,"env",3,12,"{\"t\":1}"]`
	if got := fields("mac0_fields"); got != want {
		t.Fatalf("python read Mac0 fields %s, want %s", got, want)
	}
	if got := fields("sign1_ed_fields"); !strings.Contains(got, hex.EncodeToString([]byte("kid-ed"))) {
		t.Fatalf("python read Sign1 fields %s", got)
	}

	pm, _ := hex.DecodeString(out["py_mac0"].(string))
	e, err := ParseEnvelope(pm)
	if err != nil {
		t.Fatalf("python's Mac0: %v", err)
	}
	if err := e.VerifyMac0(key); err != nil {
		t.Fatalf("python's Mac0: %v", err)
	}
	if e.Header.Device != "py-dev" || e.Header.Seq != 77 || e.Header.Epoch != epoch {
		t.Fatalf("python's Mac0 header: %+v", e.Header)
	}
	ps, _ := hex.DecodeString(out["py_sign1"].(string))
	pub, _ := hex.DecodeString(out["py_pub"].(string))
	e, err = ParseEnvelope(ps)
	if err != nil {
		t.Fatalf("python's Sign1: %v", err)
	}
	if err := e.VerifySign1(ed25519.PublicKey(pub)); err != nil {
		t.Fatalf("python's Sign1: %v", err)
	}
}

package server_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wardiot/ward/agent/keystore/softhsmtest"
	agentota "github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/internal/api"
	"github.com/wardiot/ward/internal/attest"
	"github.com/wardiot/ward/internal/cli"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/attestsql"
	"github.com/wardiot/ward/internal/store/sqlstore"
	"github.com/wardiot/ward/wire"
)

// ward runs the real CLI in-process.
func ward(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = cli.Main(args, strings.NewReader(""), &o, &e)
	return code, o.String(), e.String()
}

func needOpenSSL(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl is required in CI")
		}
		t.Skip("openssl not installed; apt-get install -y openssl")
	}
	return p
}

// opensslKey generates a private key with openssl and exports its public
// key; it returns both file names.
func opensslKey(t *testing.T, openssl, dir, name string, alg ...string) (priv, pub string) {
	t.Helper()
	priv, pub = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".pub.pem")
	if out, err := exec.Command(openssl, append(append([]string{"genpkey"}, alg...), "-out", priv)...).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v: %s", err, out)
	}
	if out, err := exec.Command(openssl, "pkey", "-in", priv, "-pubout", "-out", pub).CombinedOutput(); err != nil {
		t.Fatalf("openssl pkey -pubout: %v: %s", err, out)
	}
	return priv, pub
}

// TestOfflineTargetsSigning: a tenant switches to two offline targets
// keys made by openssl (Ed25519 and ECDSA P-256, threshold 2) with
// `ward release init-offline`; `ward release publish` stages a release
// and hands back the unsigned targets; `ward release sign` runs with no
// server configured at all, once per key; `ward release commit` refuses
// one signature, refuses one good signature plus one by an unregistered
// key, and accepts two. The device, which pinned the first (server-signed)
// root before the switch, follows the root rotation, verifies the
// offline-signed targets and installs the release.
func TestOfflineTargetsSigning(t *testing.T) {
	openssl := needOpenSSL(t)
	e := newESTEnv(t)
	keys := t.TempDir()
	edPriv, edPub := opensslKey(t, openssl, keys, "ed25519", "-algorithm", "ED25519")
	ecPriv, ecPub := opensslKey(t, openssl, keys, "p256", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
	strangerPriv, _ := opensslKey(t, openssl, keys, "stranger", "-algorithm", "ED25519")
	files := t.TempDir()
	file := func(n string) string { return filepath.Join(files, n) }
	online := func(args ...string) (int, string, string) {
		return ward(t, append([]string{"--data", e.dir}, args...)...)
	}

	d := e.otaDevice(t, "gw-offline")
	d.client() // pins image root 1 (development mode)

	code, out, errs := online("release", "init-offline", "--tenant", "acme", "--targets-key", edPub, "--targets-key", ecPub,
		"--targets-threshold", "2", "--out", file("resign.json"))
	if code != 0 || !strings.Contains(out, "version 2") || !regexp.MustCompile(`targets\s+2 of \S+, \S+ \(offline\)\n`).MatchString(out) {
		t.Fatalf("init-offline: %d\n%s%s", code, out, errs)
	}
	img := randomImage(t)
	if err := os.WriteFile(file("fw.img"), img, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs = online("release", "publish", "--tenant", "acme", "--name", "fw", "--version", "1.0", "--hw", otaHW,
		"--security-version", "1", "--image", file("fw.img"), "--out", file("pending.json"))
	if code != 0 || !strings.Contains(out, "awaiting offline signatures") {
		t.Fatalf("publish: %d\n%s%s", code, out, errs)
	}
	var rs []api.Release
	if code, out, _ := online("-o", "json", "release", "list", "--tenant", "acme"); code != 0 || json.Unmarshal([]byte(out), &rs) != nil || len(rs) != 0 {
		t.Fatalf("an unsigned release is listed as served: %d %s", code, out)
	}

	// The air-gapped half: no address, token or CA anywhere.
	t.Setenv("WARD_ADDR", "")
	t.Setenv("WARD_TOKEN", "")
	t.Setenv("WARD_CACERT", "")
	sign := func(in, key, outFile string) {
		t.Helper()
		code, out, errs := ward(t, "release", "sign", "--in", in, "--key", key, "--out", outFile)
		if code != 0 || !strings.Contains(out, "fw@1.0 for "+otaHW) {
			t.Fatalf("sign %s with %s: %d\n%s%s", in, key, code, out, errs)
		}
	}
	sign(file("pending.json"), edPriv, file("once.json"))
	sign(file("once.json"), strangerPriv, file("stranger.json"))
	sign(file("once.json"), ecPriv, file("twice.json"))

	for _, bad := range []string{"once.json", "stranger.json"} {
		code, out, errs := online("release", "commit", "--tenant", "acme", "--in", file(bad))
		if code != 1 || !strings.Contains(errs, "threshold") {
			t.Fatalf("commit %s: %d, want a threshold refusal\n%s%s", bad, code, out, errs)
		}
	}
	code, out, errs = online("release", "commit", "--tenant", "acme", "--in", file("twice.json"))
	if code != 0 || !strings.Contains(out, "serving") || !strings.Contains(out, "fw@1.0") {
		t.Fatalf("commit with two signatures: %d\n%s%s", code, out, errs)
	}
	if code, _, errs := online("release", "commit", "--tenant", "acme", "--in", file("twice.json")); code != 1 || !strings.Contains(errs, "409") {
		t.Fatalf("the same targets committed twice: %d %s", code, errs)
	}
	recs, err := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, r := range recs {
		if r.Action == "ota.targets_commit" && r.Result == "denied" {
			denied++
		}
	}
	if denied != 3 {
		t.Fatalf("%d refused commits audited, want 3", denied)
	}

	code, out, errs = online("release", "assign", "--tenant", "acme", "--device", d.id, "--release", "fw@1.0")
	if code != 0 {
		t.Fatalf("assign: %d\n%s%s", code, out, errs)
	}
	booted, j := d.update(agentota.SlotA)
	if booted != agentota.SlotB || j.Phase != agentota.PhaseCommitted || j.Installed.Release != "fw@1.0" {
		t.Fatalf("booted %s, journal %+v", booted, j)
	}
	got, err := os.ReadFile(filepath.Join(string(d.fs), "slots", agentota.SlotB+".img"))
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("slot b does not hold the release (%v)", err)
	}
}

// TestOfflineTargetsKeyChecks: keys that TUF cannot use as we sign, a
// threshold above the key count and publishing without --out are
// refused with a message.
func TestOfflineTargetsKeyChecks(t *testing.T) {
	openssl := needOpenSSL(t)
	e := newESTEnv(t)
	keys := t.TempDir()
	_, p384 := opensslKey(t, openssl, keys, "p384", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384")
	edPriv, edPub := opensslKey(t, openssl, keys, "ed", "-algorithm", "ED25519")
	online := func(args ...string) (int, string, string) {
		return ward(t, append([]string{"--data", e.dir}, args...)...)
	}
	if code, _, errs := online("release", "init-offline", "--tenant", "acme", "--targets-key", p384); code != 1 || !strings.Contains(errs, "P-256") {
		t.Fatalf("P-384 key: %d %s", code, errs)
	}
	if code, _, errs := online("release", "init-offline", "--tenant", "acme", "--targets-key", edPriv); code != 1 || !strings.Contains(errs, "PUBLIC KEY") {
		t.Fatalf("a private key file: %d %s", code, errs)
	}
	if code, _, errs := online("release", "init-offline", "--tenant", "acme", "--targets-key", edPub, "--targets-threshold", "2"); code != 1 || !strings.Contains(errs, "threshold") {
		t.Fatalf("threshold 2 of 1 key: %d %s", code, errs)
	}
	if code, out, errs := online("release", "init-offline", "--tenant", "acme", "--targets-key", edPub); code != 0 {
		t.Fatalf("init-offline: %d %s %s", code, out, errs)
	}
	img := filepath.Join(t.TempDir(), "fw.img")
	os.WriteFile(img, randomImage(t), 0o600)
	code, _, errs := online("release", "publish", "--tenant", "acme", "--name", "fw", "--version", "1", "--hw", otaHW, "--security-version", "1", "--image", img)
	if code != 1 || !strings.Contains(errs, "--out") {
		t.Fatalf("publish without --out: %d %s", code, errs)
	}
	// The release is staged all the same; pending fetches it again.
	out := filepath.Join(t.TempDir(), "pending.json")
	if code, _, errs := online("release", "pending", "--tenant", "acme", "--out", out); code != 0 {
		t.Fatalf("pending: %d %s", code, errs)
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.Contains(b, []byte(`"fw@1"`)) {
		t.Fatalf("pending targets: %v %s", err, b)
	}
}

// TestPublishWithSBOMAndRefValues: `ward release publish --sbom
// --refvalues --refvalues-sig` attaches both as targets of the release
// (listed, served through TUF) and imports the reference values into the
// attestation verifier; unsigned, mis-signed or mismatched reference
// values and a non-CycloneDX SBOM are refused and publish nothing.
func TestPublishWithSBOMAndRefValues(t *testing.T) {
	e := newESTEnv(t)
	dir := t.TempDir()
	file := func(n string, b []byte) string {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	online := func(args ...string) (int, string, string) {
		return ward(t, append([]string{"--data", e.dir}, args...)...)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(pub)
	keyFile := file("rv.pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if code, _, errs := online("release", "refvalues", "set-key", "--tenant", "acme", "--key", keyFile); code != 0 {
		t.Fatalf("set-key: %d %s", code, errs)
	}
	rvDoc := func(release string) []byte {
		return []byte(`{"ward_attest":{"schema":1,"hw_model":"` + otaHW + `","release":"` + release + `","hash":"sha256",
			"stages":[{"name":"kernel","pcr":9,"event":"EV_IPL","sha256":"` + strings.Repeat("ab", 32) + `"}]}}`)
	}
	doc := rvDoc("fw@2.0")
	sig, err := attest.SignRefValues(doc, priv)
	if err != nil {
		t.Fatal(err)
	}
	otherDoc := rvDoc("fw@9.9")
	otherSig, _ := attest.SignRefValues(otherDoc, priv)
	sbom := []byte(`{"bomFormat":"CycloneDX","specVersion":"1.5","version":1,"components":[{"type":"library","name":"busybox","version":"1.36.1","purl":"pkg:generic/busybox@1.36.1"}]}`)
	img := file("fw.img", randomImage(t))
	publish := func(extra ...string) (int, string, string) {
		return online(append([]string{"-o", "json", "release", "publish", "--tenant", "acme", "--name", "fw", "--version", "2.0", "--hw", otaHW,
			"--security-version", "2", "--image", img}, extra...)...)
	}
	forged := append([]byte(nil), sig...)
	forged[0] ^= 1
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"no signature":  {[]string{"--refvalues", file("rv.json", doc)}, "--refvalues-sig"},
		"bad signature": {[]string{"--refvalues", file("rv.json", doc), "--refvalues-sig", file("forged.sig", forged)}, "signature"},
		"other release": {[]string{"--refvalues", file("other.json", otherDoc), "--refvalues-sig", file("other.sig", otherSig)}, "fw@9.9"},
		"not CycloneDX": {[]string{"--sbom", file("spdx.json", []byte(`{"spdxVersion":"SPDX-2.3"}`))}, "CycloneDX"},
		"SBOM not JSON": {[]string{"--sbom", file("sbom.txt", []byte("busybox 1.36"))}, "JSON"},
	} {
		if code, out, errs := publish(c.args...); code == 0 || !strings.Contains(errs, c.want) {
			t.Fatalf("%s: %d, want a refusal mentioning %q\n%s%s", name, code, c.want, out, errs)
		}
	}
	var rs []api.Release
	if code, out, _ := online("-o", "json", "release", "list", "--tenant", "acme"); code != 0 || json.Unmarshal([]byte(out), &rs) != nil || len(rs) != 0 {
		t.Fatalf("a refused publish left a release: %s", out)
	}

	code, out, errs := publish("--sbom", file("bom.cdx.json", sbom), "--refvalues", file("rv.json", doc), "--refvalues-sig", file("rv.sig", sig))
	if code != 0 {
		t.Fatalf("publish: %d\n%s%s", code, out, errs)
	}
	var rel api.Release
	if err := json.Unmarshal([]byte(out), &rel); err != nil || rel.SBOM == "" || rel.RefValues == "" || rel.Manifest == "" {
		t.Fatalf("published %+v (%v)", rel, err)
	}
	// The verifier holds the reference values, signature included.
	db := e.srv.Store().(*sqlstore.DB)
	got, err := attestsql.New(db.SQL(), db.SQLDialect()).RefValues(ctx, "acme", otaHW, "fw@2.0")
	if err != nil || len(got.Stages) != 1 || got.Stages[0].PCR != 9 || !bytes.Equal(got.Signature, sig) {
		t.Fatalf("reference values in the verifier: %+v %v", got, err)
	}
	// Both are targets of the Image repository, served to devices byte
	// for byte.
	d := e.otaDevice(t, "gw-sbom")
	for path, want := range map[string][]byte{rel.SBOM: sbom, rel.RefValues: doc} {
		resp, err := d.http.Get("https://" + e.srv.APIAddr() + wire.OTAImagePath + "targets/" + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(b, want) {
			t.Fatalf("target %s: %d %q", path, resp.StatusCode, b)
		}
	}
	// Publishing the same release again is refused before its reference
	// values could replace the imported ones.
	if code, _, errs := publish("--refvalues", file("rv.json", doc), "--refvalues-sig", file("rv.sig", sig)); code != 1 || !strings.Contains(errs, "already published") {
		t.Fatalf("publish again: %d %s", code, errs)
	}
}

// TestOfflineTargetsSigningWithPKCS11: the offline targets key lives in a
// SoftHSM token and never leaves it. `ward release offline-key --generate`
// makes it and writes its public key, `init-offline` registers it, `sign
// --keystore` signs the staged release air-gapped, `commit` accepts it and
// the real agent installs the release. A PIN never appears in output.
func TestOfflineTargetsSigningWithPKCS11(t *testing.T) {
	tk := softhsmtest.New(t, "ward-targets")
	e := newESTEnv(t)
	files := t.TempDir()
	file := func(n string) string { return filepath.Join(files, n) }
	if err := os.WriteFile(file("pin"), []byte(tk.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := "pkcs11:module=" + tk.Module + ";token=" + tk.Label + ";pin-source=" + file("pin")
	online := func(args ...string) (int, string, string) {
		return ward(t, append([]string{"--data", e.dir}, args...)...)
	}
	d := e.otaDevice(t, "gw-hsm")
	d.client()

	code, out, errs := ward(t, "release", "offline-key", "--keystore", spec, "--key-name", "targets-1", "--generate", "--out", file("targets-1.pub"))
	if code != 0 || !strings.Contains(out, "key id") {
		t.Fatalf("offline-key --generate: %d\n%s%s", code, out, errs)
	}
	if code, _, errs := ward(t, "release", "offline-key", "--keystore", spec, "--key-name", "targets-1", "--generate", "--out", file("again.pub")); code != 1 || !strings.Contains(errs, "exists") {
		t.Fatalf("generating over an existing key: %d %s", code, errs)
	}
	// Without --generate the same public key comes back.
	if code, _, errs := ward(t, "release", "offline-key", "--keystore", spec, "--key-name", "targets-1", "--out", file("same.pub")); code != 0 {
		t.Fatalf("offline-key: %d %s", code, errs)
	}
	a, _ := os.ReadFile(file("targets-1.pub"))
	b, _ := os.ReadFile(file("same.pub"))
	if !bytes.Equal(a, b) || !bytes.Contains(a, []byte("PUBLIC KEY")) {
		t.Fatalf("public keys differ or are not PEM:\n%s\n%s", a, b)
	}
	if code, out, errs := online("release", "init-offline", "--tenant", "acme", "--targets-key", file("targets-1.pub")); code != 0 {
		t.Fatalf("init-offline: %d\n%s%s", code, out, errs)
	}
	if err := os.WriteFile(file("fw.img"), randomImage(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := online("release", "publish", "--tenant", "acme", "--name", "fw", "--version", "1.0", "--hw", otaHW,
		"--security-version", "1", "--image", file("fw.img"), "--out", file("pending.json")); code != 0 {
		t.Fatalf("publish: %d\n%s%s", code, out, errs)
	}
	t.Setenv("WARD_ADDR", "")
	t.Setenv("WARD_TOKEN", "")
	t.Setenv("WARD_CACERT", "")
	code, out, errs = ward(t, "release", "sign", "--in", file("pending.json"), "--keystore", spec, "--key-name", "targets-1", "--out", file("signed.json"))
	if code != 0 || !strings.Contains(out, "fw@1.0 for "+otaHW) {
		t.Fatalf("sign with the token: %d\n%s%s", code, out, errs)
	}
	// A wrong key name, with the PIN inline: a clear error without the PIN.
	code, out, errs = ward(t, "release", "sign", "--in", file("pending.json"), "--keystore", tk.Spec(), "--key-name", "nope", "--out", file("x.json"))
	if code != 1 || !strings.Contains(errs, `"nope"`) || strings.Contains(out+errs, tk.PIN) {
		t.Fatalf("sign with an unknown key: %d\n%s%s", code, out, errs)
	}
	if code, _, errs := ward(t, "release", "sign", "--in", file("pending.json"), "--key", file("pin"), "--keystore", spec, "--key-name", "targets-1", "--out", file("y.json")); code != 2 {
		t.Fatalf("--key with --keystore: %d %s", code, errs)
	}
	if code, out, errs := online("release", "commit", "--tenant", "acme", "--in", file("signed.json")); code != 0 || !strings.Contains(out, "serving") {
		t.Fatalf("commit: %d\n%s%s", code, out, errs)
	}
	if code, out, errs := online("release", "assign", "--tenant", "acme", "--device", d.id, "--release", "fw@1.0"); code != 0 {
		t.Fatalf("assign: %d\n%s%s", code, out, errs)
	}
	if booted, j := d.update(agentota.SlotA); booted != agentota.SlotB || j.Phase != agentota.PhaseCommitted || j.Installed.Release != "fw@1.0" {
		t.Fatalf("booted %s, journal %+v", booted, j)
	}
}

// TestOfflineRootSigning: `ward release init-offline --root-key` (two
// officers, threshold 2, plus an offline targets key) stages Image root
// 2, already signed by the server's development root key. `ward release
// commit` refuses it with one officer's signature and refuses a root the
// officers signed that differs from the staged one; with both it is
// imported and the server destroys its own root and targets keys (gone
// from the database, not recreated on restart). From then on the server
// alone can change nothing: a new targets key it registers stays pending
// and an attacker's signature does not commit it; renewing the root needs
// the officers too. The device, which pinned root 1 in development mode,
// follows roots 2 and 3 and installs a release signed offline.
func TestOfflineRootSigning(t *testing.T) {
	openssl := needOpenSSL(t)
	e := newESTEnv(t)
	keys := t.TempDir()
	r1Priv, r1Pub := opensslKey(t, openssl, keys, "root-1", "-algorithm", "ED25519")
	r2Priv, r2Pub := opensslKey(t, openssl, keys, "root-2", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
	tPriv, tPub := opensslKey(t, openssl, keys, "targets", "-algorithm", "ED25519")
	evilPriv, evilPub := opensslKey(t, openssl, keys, "evil", "-algorithm", "ED25519")
	files := t.TempDir()
	file := func(n string) string { return filepath.Join(files, n) }
	online := func(args ...string) (int, string, string) {
		t.Helper()
		return ward(t, append([]string{"--data", e.dir}, args...)...)
	}
	sign := func(in, key, out string) string {
		t.Helper()
		code, o, errs := ward(t, "release", "sign", "--in", file(in), "--key", key, "--out", file(out))
		if code != 0 {
			t.Fatalf("sign %s: %d\n%s%s", in, code, o, errs)
		}
		return o
	}
	sealedKey := func(name string) bool {
		t.Helper()
		var n int
		db := e.srv.Store().(*sqlstore.DB)
		if err := db.SQL().QueryRowContext(ctx, `SELECT COUNT(*) FROM ota_metadata WHERE tenant_id = 'acme' AND name = ?`, "keys/"+name+".sealed").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}

	d := e.otaDevice(t, "gw-root")
	d.client() // pins image root 1 (development mode)
	if !sealedKey("image-root") || !sealedKey("image-targets") {
		t.Fatal("development mode: the server should hold its root and targets keys")
	}

	code, out, errs := online("release", "init-offline", "--tenant", "acme", "--root-key", r1Pub, "--root-key", r2Pub,
		"--root-threshold", "2", "--targets-key", tPub, "--out", file("root2.json"))
	if code != 0 || !regexp.MustCompile(`pending root\s+version 2 awaits`).MatchString(out) {
		t.Fatalf("init-offline --root-key: %d\n%s%s", code, out, errs)
	}
	// Staged, not imported: root 1 still rules, signed only by the server.
	var k api.ImageKeys
	if err := e.adminClient(t).Do(ctx, "GET", "/api/v1/tenants/acme/releases/keys", nil, &k); err != nil {
		t.Fatal(err)
	}
	if k.RootVersion != 1 || k.PendingRoot == nil || !k.Roles[0].Online || len(k.PendingRootRoles) != 4 ||
		k.PendingRootRoles[0].Threshold != 2 || k.PendingRootRoles[0].Online || k.PendingRootRoles[1].Online {
		t.Fatalf("keys after staging: %+v", k)
	}

	t.Setenv("WARD_ADDR", "")
	t.Setenv("WARD_TOKEN", "")
	t.Setenv("WARD_CACERT", "")
	// The officer sees the keys they vouch for; the server's development
	// root key signed when staging.
	if o := sign("root2.json", r1Priv, "root2-r1.json"); !regexp.MustCompile(`(?m)^root\s+2 of `).MatchString(o) || !regexp.MustCompile(`signatures\s+2\n`).MatchString(o) {
		t.Fatalf("sign shows the root it signs:\n%s", o)
	}
	sign("root2-r1.json", r2Priv, "root2-both.json")
	// Officers signing something other than what was staged (here a later
	// expiry) cannot commit it.
	b, _ := os.ReadFile(file("root2-r1.json"))
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	doc["signed"].(map[string]any)["expires"] = "2099-01-01T00:00:00Z"
	doc["signatures"] = []any{}
	tampered, _ := json.Marshal(doc)
	os.WriteFile(file("tampered.json"), tampered, 0o600)
	sign("tampered.json", r1Priv, "tampered-1.json")
	sign("tampered-1.json", r2Priv, "tampered-2.json")

	for bad, want := range map[string]string{"root2-r1.json": "threshold", "tampered-2.json": "staged"} {
		code, out, errs := online("release", "commit", "--tenant", "acme", "--in", file(bad))
		if code != 1 || !strings.Contains(errs, want) {
			t.Fatalf("commit %s: %d, want a refusal naming %q\n%s%s", bad, code, want, out, errs)
		}
	}
	code, out, errs = online("release", "commit", "--tenant", "acme", "--in", file("root2-both.json"))
	if code != 0 || !regexp.MustCompile(`root\s+version 2 committed`).MatchString(out) || !regexp.MustCompile(`(?m)^root\s+2 of .*\(offline\)$`).MatchString(out) {
		t.Fatalf("commit root 2: %d\n%s%s", code, out, errs)
	}
	if sealedKey("image-root") || sealedKey("image-targets") {
		t.Fatal("the server still holds a root or targets key the new root does not list")
	}
	if !sealedKey("image-snapshot") || !sealedKey("image-timestamp") {
		t.Fatal("the online snapshot and timestamp keys are gone")
	}

	// The server alone cannot rotate anything any more.
	code, out, errs = online("release", "init-offline", "--tenant", "acme", "--targets-key", evilPub, "--out", file("evil-root.json"))
	if code != 0 || !regexp.MustCompile(`pending root\s+version 3`).MatchString(out) {
		t.Fatalf("a targets change under an offline root should only be staged: %d\n%s%s", code, out, errs)
	}
	sign("evil-root.json", evilPriv, "evil-signed.json")
	if code, _, errs := online("release", "commit", "--tenant", "acme", "--in", file("evil-signed.json")); code != 1 || !strings.Contains(errs, "threshold") {
		t.Fatalf("a root signed by an attacker's key: %d %s", code, errs)
	}
	// Renewal replaces the staged change, and needs both officers.
	if code, out, errs := online("release", "renew-root", "--tenant", "acme", "--out", file("root3.json")); code != 0 || !regexp.MustCompile(`pending root\s+version 3`).MatchString(out) {
		t.Fatalf("renew-root: %d\n%s%s", code, out, errs)
	}
	sign("root3.json", r1Priv, "root3-r1.json")
	sign("root3-r1.json", r2Priv, "root3-both.json")
	if code, out, errs := online("release", "commit", "--tenant", "acme", "--in", file("root3-both.json")); code != 0 || !strings.Contains(out, "version 3 committed") {
		t.Fatalf("commit root 3: %d\n%s%s", code, out, errs)
	}
	if code, _, errs := online("release", "commit", "--tenant", "acme", "--in", file("root3-both.json")); code != 1 || !strings.Contains(errs, "409") {
		t.Fatalf("root 3 committed twice: %d %s", code, errs)
	}

	// A release signed by the offline targets key reaches the device,
	// which walks root 1 -> 2 -> 3.
	if err := os.WriteFile(file("fw.img"), randomImage(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := online("release", "publish", "--tenant", "acme", "--name", "fw", "--version", "1.0", "--hw", otaHW,
		"--security-version", "1", "--image", file("fw.img"), "--out", file("targets.json")); code != 0 {
		t.Fatalf("publish: %d\n%s%s", code, out, errs)
	}
	sign("targets.json", tPriv, "targets-signed.json")
	if code, out, errs := online("release", "commit", "--tenant", "acme", "--in", file("targets-signed.json")); code != 0 || !strings.Contains(out, "serving") {
		t.Fatalf("commit targets: %d\n%s%s", code, out, errs)
	}
	if code, out, errs := online("release", "assign", "--tenant", "acme", "--device", d.id, "--release", "fw@1.0"); code != 0 {
		t.Fatalf("assign: %d\n%s%s", code, out, errs)
	}
	if booted, j := d.update(agentota.SlotA); booted != agentota.SlotB || j.Phase != agentota.PhaseCommitted || j.Installed.Release != "fw@1.0" {
		t.Fatalf("booted %s, journal %+v", booted, j)
	}

	recs, err := e.srv.Store().ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range recs {
		count[r.Action+"/"+r.Result]++
	}
	if count["ota.key_destroyed/ok"] != 2 || count["ota.root_commit/denied"] != 4 || count["ota.root/ok"] != 2 || count["ota.root_staged/ok"] != 3 {
		t.Fatalf("audit: %v", count)
	}

	// A restarted server does not make itself new root or targets keys.
	e.restart(t)
	if err := e.adminClient(t).Do(ctx, "GET", "/api/v1/tenants/acme/releases/keys", nil, &k); err != nil {
		t.Fatal(err)
	}
	if k.RootVersion != 3 || k.Roles[0].Online || k.Roles[1].Online || !k.Roles[2].Online || !k.Roles[3].Online {
		t.Fatalf("keys after restart: %+v", k)
	}
	if sealedKey("image-root") || sealedKey("image-targets") {
		t.Fatal("a restart recreated the server's root or targets key")
	}
}

//go:build cgo

package keystore

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"github.com/wardiot/ward/agent/internal/peertest"
	"github.com/wardiot/ward/agent/keystore/softhsmtest"
)

const haveCgo = true

// TestPKCS11KeyIsNonExtractable proves the private key cannot be read out
// of the token: it is sensitive and never extractable as seen by crypto11
// and by OpenSC's pkcs11-tool, and asking the token for its value fails.
func TestPKCS11KeyIsNonExtractable(t *testing.T) {
	tok := softhsmtest.New(t, "ward-nx")
	ks := mustOpen(t, tok.Spec())
	ctx := context.Background()
	k, err := ks.Generate(ctx, "device-1", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	p := ks.(*pkcs11Store)
	signer := k.(*pkcs11Key).signer

	attrs, err := p.ctx.GetAttributes(signer, []crypto11.AttributeType{
		crypto11.CkaSensitive, crypto11.CkaExtractable, crypto11.CkaToken,
		crypto11.CkaAlwaysSensitive, crypto11.CkaNeverExtractable,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[crypto11.AttributeType]bool{
		crypto11.CkaSensitive: true, crypto11.CkaExtractable: false, crypto11.CkaToken: true,
		crypto11.CkaAlwaysSensitive: true, crypto11.CkaNeverExtractable: true,
	}
	for typ, w := range want {
		a, ok := attrs[typ]
		if !ok || len(a.Value) != 1 || (a.Value[0] != 0) != w {
			t.Errorf("attribute %#x = %v, want %v", typ, a, w)
		}
	}
	_, err = p.ctx.GetAttribute(signer, crypto11.CkaValue)
	if !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
		t.Fatalf("reading CKA_VALUE: err = %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}

	tool := peertest.Require(t, "pkcs11-tool", "opensc")
	base := []string{"--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", tok.PIN}
	out, err := exec.Command(tool, append(base, "--list-objects", "--type", "privkey")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "device-1") {
		t.Fatalf("pkcs11-tool does not list the key: %v\n%s", err, out)
	}
	// OpenSC's own reading of the attributes (it refuses to even try to
	// read private key values, so the CKA_VALUE attempt above is ours).
	for _, w := range []string{"label:      device-1", "always sensitive", "never extractable"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("pkcs11-tool output lacks %q:\n%s", w, out)
		}
	}
}

func TestPKCS11PINSource(t *testing.T) {
	tok := softhsmtest.New(t, "ward-pin")
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := "pkcs11:module=" + tok.Module + ";token=" + tok.Label + ";pin-source=" + pinFile
	ks := mustOpen(t, spec)
	k, err := ks.Generate(context.Background(), "device-1", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	signVerify(t, k)
	ks.Close()

	if err := os.Chmod(pinFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(spec); !errors.Is(err, ErrInsecurePermissions) {
		t.Fatalf("world-readable PIN file: err = %v, want ErrInsecurePermissions", err)
	}
}

// TestPKCS11ErrorsNeverContainPIN opens the token with a wrong PIN and a
// wrong label, and checks that neither error, nor a spec's String, shows
// the PIN.
func TestPKCS11ErrorsNeverContainPIN(t *testing.T) {
	tok := softhsmtest.New(t, "ward-secret")
	wrong := "98765432109"
	for name, spec := range map[string]string{
		"wrong-pin":   "pkcs11:module=" + tok.Module + ";token=" + tok.Label + ";pin=" + wrong,
		"wrong-token": "pkcs11:module=" + tok.Module + ";token=nope;pin=" + wrong,
		"bad-module":  "pkcs11:module=/nonexistent/libnope.so;token=x;pin=" + wrong,
	} {
		t.Run(name, func(t *testing.T) {
			ks, err := Open(spec)
			if err == nil {
				ks.Close()
				t.Fatal("Open succeeded")
			}
			if strings.Contains(err.Error(), wrong) {
				t.Fatalf("error shows the PIN: %v", err)
			}
			s, _ := ParseSpec(spec)
			if strings.Contains(s.String(), "pin="+wrong) {
				t.Fatalf("Spec.String shows the PIN: %s", s)
			}
		})
	}
}

package deviceauth_test

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardiot/ward/wire"
)

// need returns the path of an external program, skipping the test if it is
// absent, unless CI is set, where absence is a failure.
func need(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed; skipping interop test (apt-get install -y %s)", name, name)
	}
	return p
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

// TestInteropOpenSSLCurl has a device side built from programs no one here
// wrote: openssl makes the key and signs the client assertion (Ed25519 raw
// and ECDSA P-256 DER), curl exchanges it for tokens over TLS and posts
// telemetry with the bearer token.
func TestInteropOpenSSLCurl(t *testing.T) {
	openssl, curl := need(t, "openssl"), need(t, "curl")
	for _, tc := range []struct {
		name, alg string
		genArgs   []string
		signArgs  func(key, in, sig string) []string
		toJWS     func(t *testing.T, sig []byte) []byte
	}{
		{
			name: "ok/ed25519", alg: "EdDSA",
			genArgs: []string{"-algorithm", "ed25519"},
			signArgs: func(key, in, sig string) []string {
				return []string{"pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", in, "-out", sig}
			},
			toJWS: func(t *testing.T, sig []byte) []byte { return sig },
		},
		{
			name: "ok/es256", alg: "ES256",
			genArgs: []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"},
			signArgs: func(key, in, sig string) []string {
				return []string{"dgst", "-sha256", "-sign", key, "-out", sig, in}
			},
			toJWS: func(t *testing.T, der []byte) []byte {
				var rs struct{ R, S *big.Int }
				if _, err := asn1.Unmarshal(der, &rs); err != nil {
					t.Fatalf("openssl ECDSA signature: %v", err)
				}
				out := make([]byte, 64)
				rs.R.FillBytes(out[:32])
				rs.S.FillBytes(out[32:])
				return out
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			dir := t.TempDir()
			keyPath := filepath.Join(dir, "device.pem")
			run(t, openssl, append([]string{"genpkey", "-out", keyPath}, tc.genArgs...)...)
			pubPEM := run(t, openssl, "pkey", "-in", keyPath, "-pubout")
			blk, _ := pem.Decode(pubPEM)
			pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			e.devs.Set(tenant, device, pub, "0a0b")

			in := b64.EncodeToString([]byte(`{"alg":"`+tc.alg+`","typ":"JWT"}`)) + "." + b64.EncodeToString([]byte(e.claims(nil)))
			inPath, sigPath := filepath.Join(dir, "input"), filepath.Join(dir, "sig")
			os.WriteFile(inPath, []byte(in), 0o600)
			run(t, openssl, tc.signArgs(keyPath, inPath, sigPath)...)
			sig, _ := os.ReadFile(sigPath)
			assertion := in + "." + b64.EncodeToString(tc.toJWS(t, sig))

			caPath := filepath.Join(dir, "ca.pem")
			os.WriteFile(caPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.ts.Certificate().Raw}), 0o600)
			out := run(t, curl, "-sS", "--fail-with-body", "--cacert", caPath,
				"--data-urlencode", "grant_type=client_credentials",
				"--data-urlencode", "client_assertion_type="+wire.ClientAssertionType,
				"--data-urlencode", "client_assertion="+assertion,
				e.aud)
			var tr struct {
				AccessToken string `json:"access_token"`
				TokenType   string `json:"token_type"`
			}
			if err := json.Unmarshal(out, &tr); err != nil || tr.TokenType != "Bearer" {
				t.Fatalf("curl got %s", out)
			}
			envPath := filepath.Join(dir, "envelope.cose")
			os.WriteFile(envPath, []byte{0xd2, 0x84}, 0o600)
			code := run(t, curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", caPath,
				"-H", "Authorization: Bearer "+tr.AccessToken, "-H", "Content-Type: application/cose",
				"--data-binary", "@"+envPath, e.ts.URL+wire.DeviceTelemetryPrefix+"temperature")
			if string(code) != "202" {
				t.Fatalf("curl telemetry post: HTTP %s", code)
			}
			// The same assertion again, from curl: refused as a replay.
			out, _ = exec.Command(curl, "-sS", "--cacert", caPath, "-d", url.Values{"grant_type": {"client_credentials"},
				"client_assertion_type": {wire.ClientAssertionType}, "client_assertion": {assertion}}.Encode(), e.aud).Output()
			if !strings.Contains(string(out), `"invalid_client"`) {
				t.Fatalf("replayed assertion: %s", out)
			}
		})
	}
}

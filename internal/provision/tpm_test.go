package provision_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/wardiot/ward/agent/keystore/tpmtest"
	"github.com/wardiot/ward/internal/provision"
	"github.com/wardiot/ward/internal/provision/tpmek"
	"github.com/wardiot/ward/wire"
)

// rawTPM frames TPM commands for swtpm's raw TCP port: go-attestation's
// legacy transport writes a command and does a single Read for the
// response, so Read returns the whole response (header, then the size it
// declares).
type rawTPM struct {
	net.Conn
	pending []byte
}

func (r *rawTPM) Read(p []byte) (int, error) {
	if len(r.pending) == 0 {
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(r.Conn, hdr); err != nil {
			return 0, err
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < 10 || size > 64<<10 {
			return 0, fmt.Errorf("bad TPM response size %d", size)
		}
		body := make([]byte, size-10)
		if _, err := io.ReadFull(r.Conn, body); err != nil {
			return 0, err
		}
		r.pending = append(hdr, body...)
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}

func (r *rawTPM) MeasurementLog() ([]byte, error) {
	return nil, errors.New("no event log on this simulator")
}

// device is the agent side: a TPM opened with go-attestation.
type device struct {
	tpm *attest.TPM
	ek  attest.EK
	ak  *attest.AK
}

func openDevice(t *testing.T, sim *tpmtest.Sim) *device {
	t.Helper()
	conn, err := net.Dial("tcp", sim.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := attest.OpenTPM(&attest.OpenConfig{CommandChannel: &rawTPM{Conn: conn}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	eks, err := tpm.EKCertificates()
	if err != nil || len(eks) == 0 || eks[0].Certificate == nil {
		t.Fatalf("EK certificate: %v (%d)", err, len(eks))
	}
	ak, err := tpm.NewAK(&attest.AKConfig{Algorithm: attest.ECDSA})
	if err != nil {
		t.Fatal(err)
	}
	return &device{tpm: tpm, ek: eks[0], ak: ak}
}

func (d *device) challengeRequest(t *testing.T) []byte {
	ap := d.ak.AttestationParameters()
	b, err := json.Marshal(&wire.TPMChallengeRequest{EKCert: d.ek.Certificate.Raw,
		AK: wire.TPMKeyParams{Public: ap.Public, CreateData: ap.CreateData, CreateAttestation: ap.CreateAttestation, CreateSignature: ap.CreateSignature}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// respond runs the device's round two: activate, make a certified key,
// and return the EST request.
func (d *device) respond(t *testing.T, chJSON []byte) (*provision.Request, *wire.TPMChallenge) {
	t.Helper()
	var ch wire.TPMChallenge
	if err := json.Unmarshal(chJSON, &ch); err != nil {
		t.Fatal(err)
	}
	secret, err := d.ak.ActivateCredential(d.tpm, attest.EncryptedCredential{Credential: ch.Credential, Secret: ch.Secret})
	if err != nil {
		t.Fatal(err)
	}
	key, err := d.tpm.NewKey(d.ak, &attest.KeyConfig{Algorithm: attest.ECDSA, Size: 256, QualifyingData: ch.Nonce})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	priv, err := key.Private(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	cp := key.CertificationParameters()
	tok, err := wire.EncodeTPMBearer(&wire.TPMResponse{Challenge: ch.Challenge, Secret: secret,
		Key: wire.TPMKeyParams{Public: cp.Public, CreateData: cp.CreateData, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature}})
	if err != nil {
		t.Fatal(err)
	}
	return &provision.Request{CSR: csr(t, priv.(crypto.Signer), ch.DeviceID), BearerToken: tok, RemoteAddr: "192.0.2.9:4000"}, &ch
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTPM runs the two-round TPM mechanism against swtpm with an EK
// certificate made by swtpm_setup, the device side in go-attestation.
func TestTPM(t *testing.T) {
	sim := tpmtest.Manufactured(t)
	root := readPEMCert(t, filepath.Join(sim.EKCADir, "swtpm-localca-rootca-cert.pem"))
	issuer := readPEMCert(t, filepath.Join(sim.EKCADir, "issuercert.pem"))
	dev := openDevice(t, sim)
	ekDER, err := x509.MarshalPKIXPublicKey(dev.ek.Certificate.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ekHash := tpmek.EKHash(ekDER)
	ctx := context.Background()

	newTPMEnv := func(t *testing.T, cfg *provision.TPMConfig) *env {
		e := newEnv(t)
		e.clock.Advance(time.Since(t0)) // swtpm_localca dates certificates from the real clock
		e.putGroup(t, &provision.Group{Tenant: "acme", Name: "tpm", Mechanism: provision.MechanismTPM, TPM: cfg,
			Template: provision.Template{Profile: "attested"}})
		return e
	}
	makerCfg := func() *provision.TPMConfig {
		return &provision.TPMConfig{EKRoots: [][]byte{root.Raw}, EKIntermediates: [][]byte{issuer.Raw}, IDPrefix: "tpm-"}
	}

	t.Run("ok/ek-certificate", func(t *testing.T) {
		e := newTPMEnv(t, makerCfg())
		ch, err := e.p.Challenge(ctx, "acme.tpm", provision.MechanismTPM, dev.challengeRequest(t), "192.0.2.9:4000")
		if err != nil {
			t.Fatal(err)
		}
		req, c := dev.respond(t, ch)
		if c.DeviceID != "tpm-"+ekHash {
			t.Fatalf("device ID %q", c.DeviceID)
		}
		en := e.mustEnroll(t, "acme.tpm", req)
		if en.DeviceID != "tpm-"+ekHash || en.Template.Profile != "attested" {
			t.Fatalf("%+v", en)
		}
		if string(en.AKPublic) != string(dev.ak.AttestationParameters().Public) {
			t.Fatal("AK public not returned")
		}
		d, _ := e.store.GetDevice(ctx, "acme", en.DeviceID)
		if d == nil || string(d.AKPublic) != string(en.AKPublic) || d.Fingerprint != "ek:"+ekHash {
			t.Fatalf("record %+v", d)
		}
		// The same response again is a replay, even where re-provisioning is allowed.
		g, _ := e.store.GetGroup(ctx, "acme", "tpm")
		g.Reprovision = true
		e.store.PutGroup(ctx, g)
		en, err = e.p.Enroll(ctx, "acme.tpm", req)
		e.assertRefused(t, en, err, provision.ReasonReplay)
	})
	t.Run("ok/allow-list", func(t *testing.T) {
		e := newTPMEnv(t, &provision.TPMConfig{AllowedEKs: []string{ekHash}})
		ch, err := e.p.Challenge(ctx, "acme", provision.MechanismTPM, dev.challengeRequest(t), "")
		if err != nil {
			t.Fatal(err)
		}
		req, _ := dev.respond(t, ch)
		e.mustEnroll(t, "acme", req)
	})
	t.Run("fail/ek-outside-allow-list", func(t *testing.T) {
		e := newTPMEnv(t, &provision.TPMConfig{AllowedEKs: []string{tpmek.EKHash([]byte("another TPM"))}})
		out, err := e.p.Challenge(ctx, "acme.tpm", provision.MechanismTPM, dev.challengeRequest(t), "")
		if out != nil {
			t.Fatal("challenge issued")
		}
		e.assertRefused(t, nil, err, provision.ReasonNotAllowed)
	})
	t.Run("fail/ek-cert-from-another-ca", func(t *testing.T) {
		other := newCA(t, "Other TPM Maker")
		e := newTPMEnv(t, &provision.TPMConfig{EKRoots: [][]byte{other.cert.Raw}})
		_, err := e.p.Challenge(ctx, "acme.tpm", provision.MechanismTPM, dev.challengeRequest(t), "")
		e.assertRefused(t, nil, err, provision.ReasonUnknownCA)
	})
	t.Run("fail/csr-key-not-in-tpm", func(t *testing.T) {
		e := newTPMEnv(t, makerCfg())
		ch, err := e.p.Challenge(ctx, "acme.tpm", provision.MechanismTPM, dev.challengeRequest(t), "")
		if err != nil {
			t.Fatal(err)
		}
		req, c := dev.respond(t, ch)
		req.CSR = csr(t, newKey(t), c.DeviceID) // a software key, not the certified one
		en, err := e.p.Enroll(ctx, "acme.tpm", req)
		e.assertRefused(t, en, err, provision.ReasonKeyNotAttested)
	})
	t.Run("fail/wrong-activation-secret", func(t *testing.T) {
		e := newTPMEnv(t, makerCfg())
		ch, err := e.p.Challenge(ctx, "acme.tpm", provision.MechanismTPM, dev.challengeRequest(t), "")
		if err != nil {
			t.Fatal(err)
		}
		req, _ := dev.respond(t, ch)
		r, _ := wire.ParseTPMBearer(req.BearerToken)
		r.Secret[0] ^= 1
		req.BearerToken, _ = wire.EncodeTPMBearer(r)
		en, err := e.p.Enroll(ctx, "acme.tpm", req)
		e.assertRefused(t, en, err, provision.ReasonActivation)
	})
	t.Run("fail/challenge-expired", func(t *testing.T) {
		e := newTPMEnv(t, makerCfg())
		ch, err := e.p.Challenge(ctx, "acme.tpm", provision.MechanismTPM, dev.challengeRequest(t), "")
		if err != nil {
			t.Fatal(err)
		}
		req, _ := dev.respond(t, ch)
		e.clock.Advance(tpmek.ChallengeTTL + time.Second)
		en, err := e.p.Enroll(ctx, "acme.tpm", req)
		e.assertRefused(t, en, err, provision.ReasonExpired)
	})
}

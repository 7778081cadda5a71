package attest

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	gattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"

	"github.com/wardiot/ward/agent/internal/tpmconn"
	"github.com/wardiot/ward/wire"
)

// AKBlobFile is the file in the state directory holding the AK: its
// public part and its private part wrapped by the TPM (useless without
// that TPM).
const AKBlobFile = "attest-ak.blob"

// maxAKBlobSize bounds reading the AK blob back.
const maxAKBlobSize = 16 << 10

// Config opens a TPM for attestation.
type Config struct {
	// Path is "tcp://HOST:PORT" for swtpm's command port or a device
	// such as /dev/tpmrm0.
	Path string
	// StateDir holds the AK blob (AKBlobFile).
	StateDir string
	// Boot supplies the event log quoted with the PCRs.
	Boot MeasuredBoot
}

// TPM is a TPM with the device's attestation key (AK), an ECDSA P-256
// restricted signing key under the TPM's storage root key.
type TPM struct {
	ch   *channel
	tpm  *gattest.TPM
	ak   *gattest.AK
	boot MeasuredBoot
}

// channel adapts a transport.TPM (one Send per command, whole responses)
// to the io.ReadWriteCloser go-attestation and go-tpm's legacy API expect:
// Write sends the command, Read returns the buffered response. A raw TCP
// connection would not do: legacy RunCommand does one Read and swtpm may
// deliver a response in several segments.
type channel struct {
	t   transport.TPMCloser
	rsp []byte
}

func (c *channel) Write(p []byte) (int, error) {
	rsp, err := c.t.Send(p)
	if err != nil {
		return 0, err
	}
	c.rsp = rsp
	return len(p), nil
}

func (c *channel) Read(p []byte) (int, error) {
	if len(c.rsp) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.rsp)
	c.rsp = c.rsp[n:]
	return n, nil
}

func (c *channel) Close() error { return c.t.Close() }

// MeasurementLog is never used: Attest always passes the log explicitly.
func (c *channel) MeasurementLog() ([]byte, error) {
	return nil, errors.New("attest: event log comes from MeasuredBoot")
}

// Open connects to the TPM and loads the AK from the state directory,
// creating and saving one the first time.
func Open(cfg Config) (*TPM, error) {
	if cfg.StateDir == "" || cfg.Boot == nil {
		return nil, errors.New("attest: Config needs StateDir and Boot")
	}
	tc, err := tpmconn.Open(cfg.Path)
	if err != nil {
		return nil, err
	}
	ch := &channel{t: tc}
	at, err := gattest.OpenTPM(&gattest.OpenConfig{CommandChannel: ch})
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("attest: open TPM: %w", err)
	}
	t := &TPM{ch: ch, tpm: at, boot: cfg.Boot}
	if err := t.loadOrCreateAK(filepath.Join(cfg.StateDir, AKBlobFile)); err != nil {
		ch.Close()
		return nil, err
	}
	return t, nil
}

func (t *TPM) loadOrCreateAK(path string) error {
	blob, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(blob) > maxAKBlobSize {
			return fmt.Errorf("attest: AK blob %s is larger than %d bytes", path, maxAKBlobSize)
		}
		ak, err := t.tpm.LoadAK(blob)
		if err != nil {
			return fmt.Errorf("attest: load AK (a blob from another TPM, or a cleared TPM?): %w", err)
		}
		t.ak = ak
		return nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		return fmt.Errorf("attest: read AK blob: %w", err)
	}
	ak, err := t.tpm.NewAK(&gattest.AKConfig{Algorithm: gattest.ECDSA})
	if err != nil {
		return fmt.Errorf("attest: create AK: %w", err)
	}
	blob, err = ak.Marshal()
	if err != nil {
		ak.Close(t.tpm)
		return fmt.Errorf("attest: marshal AK: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, blob, 0o600); err != nil {
		ak.Close(t.tpm)
		return fmt.Errorf("attest: save AK: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ak.Close(t.tpm)
		return fmt.Errorf("attest: save AK: %w", err)
	}
	t.ak = ak
	return nil
}

// AKPublic returns the AK's TPMT_PUBLIC, what the server registers.
func (t *TPM) AKPublic() []byte { return t.ak.AttestationParameters().Public }

// ExtendPCR extends a SHA-256 digest into pcr; only a simulated boot
// should call it.
func (t *TPM) ExtendPCR(pcr int, digest []byte) error {
	if len(digest) != sha256.Size {
		return fmt.Errorf("attest: digest is %d bytes, want %d", len(digest), sha256.Size)
	}
	return tpm2.PCRExtend(t.ch, tpmutil.Handle(pcr), tpm2.AlgSHA256, digest, "")
}

// ekCert returns the TPM's RSA EK certificate: go-attestation activates
// credentials against the RSA EK at the standard handle 0x81010001.
func (t *TPM) ekCert() (gattest.EK, error) {
	eks, err := t.tpm.EKCertificates()
	if err != nil {
		return gattest.EK{}, fmt.Errorf("attest: read EK certificates: %w", err)
	}
	for _, ek := range eks {
		if _, ok := ek.Public.(*rsa.PublicKey); ok && ek.Certificate != nil {
			return ek, nil
		}
	}
	return gattest.EK{}, errors.New("attest: the TPM has no RSA EK certificate in NV")
}

// AKEnrollRequest returns what the server needs to register the AK: the
// EK certificate and the AK's creation parameters.
func (t *TPM) AKEnrollRequest() (*wire.AKEnrollRequest, error) {
	ek, err := t.ekCert()
	if err != nil {
		return nil, err
	}
	p := t.ak.AttestationParameters()
	return &wire.AKEnrollRequest{
		EKCert: ek.Certificate.Raw,
		AK: wire.AKParams{
			Public: p.Public, CreateData: p.CreateData,
			CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature,
		},
	}, nil
}

// ActivateCredential recovers the server's secret with the EK and AK;
// only this TPM can.
func (t *TPM) ActivateCredential(c *wire.AKActivationChallenge) (*wire.AKActivationResponse, error) {
	ek, err := t.ekCert()
	if err != nil {
		return nil, err
	}
	secret, err := t.ak.ActivateCredentialWithEK(t.tpm, gattest.EncryptedCredential{
		Credential: c.Credential, Secret: c.Secret,
	}, ek)
	if err != nil {
		return nil, fmt.Errorf("attest: activate credential: %w", err)
	}
	return &wire.AKActivationResponse{ID: c.ID, Secret: secret}, nil
}

// Attest answers a challenge: quotes of every PCR bank with the nonce,
// the PCR values and the event log.
func (t *TPM) Attest(c *wire.AttestChallenge) (*wire.AttestEvidence, error) {
	log, err := t.boot.EventLog()
	if err != nil {
		return nil, err
	}
	pp, err := t.tpm.AttestPlatform(t.ak, c.Nonce, &gattest.PlatformAttestConfig{EventLog: log})
	if err != nil {
		return nil, fmt.Errorf("attest: quote: %w", err)
	}
	ev := &wire.TPMEvidence{AKPublic: pp.Public, EventLog: pp.EventLog}
	for _, q := range pp.Quotes {
		ev.Quotes = append(ev.Quotes, wire.TPMQuote{Quote: q.Quote, Signature: q.Signature})
	}
	for _, p := range pp.PCRs {
		alg, ok := hashNames[p.DigestAlg]
		if !ok {
			continue // a bank the wire cannot name; the quote still covers the rest
		}
		ev.PCRs = append(ev.PCRs, wire.PCRValue{Index: p.Index, Alg: alg, Digest: p.Digest})
	}
	if info, err := t.tpm.Info(); err == nil {
		ev.Info.Manufacturer = info.Manufacturer.String()
		ev.Info.VendorInfo = info.VendorInfo
		ev.Info.FirmwareMajor = info.FirmwareVersionMajor
		ev.Info.FirmwareMinor = info.FirmwareVersionMinor
	}
	if len(pp.Quotes) > 0 {
		if a, err := tpm2.DecodeAttestationData(pp.Quotes[0].Quote); err == nil {
			ev.Info.Clock = a.ClockInfo.Clock
			ev.Info.ResetCount = a.ClockInfo.ResetCount
			ev.Info.RestartCount = a.ClockInfo.RestartCount
			ev.Info.Safe = a.ClockInfo.Safe == 1
		}
	}
	return &wire.AttestEvidence{ChallengeID: c.ID, TPM: ev}, nil
}

// Respond answers a challenge message received on
// ward/v1/<device>/attest/request (wire.TopicAttestRequest) with the
// evidence message to publish on wire.TopicAttestReply. The message is
// parsed strictly; a malformed one is an error, not a quote.
func (t *TPM) Respond(msg []byte) ([]byte, error) {
	c, err := wire.ParseAttestChallenge(msg)
	if err != nil {
		return nil, err
	}
	ev, err := t.Attest(c)
	if err != nil {
		return nil, err
	}
	return json.Marshal(ev)
}

// CheckRenewalBinding checks that a renewal challenge binds the key the
// device is about to put in its CSR (csrSPKI, DER SubjectPublicKeyInfo):
// Nonce = wire.RenewalNonce(ServerNonce, csrSPKI). An agent renewing with
// attestation answers only a challenge that does, so its quote cannot be
// spent on someone else's key.
func CheckRenewalBinding(c *wire.AttestChallenge, csrSPKI []byte) error {
	if len(c.ServerNonce) == 0 {
		return errors.New("attest: challenge is not a renewal challenge")
	}
	if subtle.ConstantTimeCompare(c.Nonce, wire.RenewalNonce(c.ServerNonce, csrSPKI)) != 1 {
		return errors.New("attest: renewal challenge does not bind this CSR's key")
	}
	return nil
}

var hashNames = map[crypto.Hash]string{
	crypto.SHA1: "sha1", crypto.SHA256: "sha256", crypto.SHA384: "sha384", crypto.SHA512: "sha512",
}

// Close flushes the AK from the TPM and closes the connection. The TPM
// keeps running: use it when the agent stops but the device does not.
func (t *TPM) Close() error {
	var errs []error
	if t.ak != nil {
		if err := t.ak.Close(t.tpm); err != nil {
			errs = append(errs, fmt.Errorf("flush AK: %w", err))
		}
		t.ak = nil
	}
	if err := t.ch.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Shutdown is Close preceded by TPM2_Shutdown(CLEAR): call it on an
// orderly power-off where no operating system does it (swtpm, `ward-agent
// simulate`; the Linux kernel does it for /dev/tpm*). Without it the TPM
// reports Safe=0 after the next power-on and its clock may go backwards,
// which the verifier flags as a power loss. A later command cancels the
// shutdown state, so calling it when the device keeps running is harmless.
func (t *TPM) Shutdown() error {
	var errs []error
	if t.ak != nil {
		if err := t.ak.Close(t.tpm); err != nil {
			errs = append(errs, fmt.Errorf("flush AK: %w", err))
		}
		t.ak = nil
	}
	if err := tpm2.Shutdown(t.ch, tpm2.StartupClear); err != nil {
		errs = append(errs, fmt.Errorf("TPM2_Shutdown: %w", err))
	}
	if err := t.ch.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/wire"
)

// NV indices of the EK certificates (TCG EK Credential Profile 2.0, §2.2.1.4).
const (
	ekCertIndexRSA = 0x01c00002
	ekCertIndexECC = 0x01c0000a
)

// Limits of the TPM mechanism on the device side.
const (
	// maxEKCertSize bounds the EK certificate read from NV: they are 1 to
	// 2 KiB; a larger index is not a certificate.
	maxEKCertSize = 4 << 10
	// nvChunk is what one TPM2_NV_Read asks for; MAX_NV_BUFFER_SIZE is
	// at least 512 on every TPM 2.0 (PC Client profile: 1024).
	nvChunk = 512
	// maxChallengeSize bounds the server's round-one answer: the sealed
	// state and the activation blobs are under 2 KiB.
	maxChallengeSize = 16 << 10
)

// TPM returns the TPM endorsement-key credential. The keystore must be the
// tpm backend: the TPM proves its identity with its EK (the EK
// certificate from NV if the manufacturer wrote one, else the EK public
// key), and certifies the device key in the keystore with a fresh
// attestation key, in two rounds:
//
//  1. POST wire.ProvisionChallengePath(label, "tpm") with the EK and the
//     new AK's parameters; the server answers a credential-activation
//     challenge, a nonce and the device ID the EK proves (Config.Device
//     must equal it).
//  2. TPM2_ActivateCredential recovers the secret, TPM2_Certify has the
//     AK certify the device key with the nonce as qualifying data, and
//     simpleenroll carries both as the "wardtpm." bearer token.
//
// A TPM response is single use, so an enrollment that the server holds
// for approval (202) must be started again with a new challenge.
func TPM() Credential { return tpmCredential{} }

type tpmCredential struct{}

func (tpmCredential) authorize(*http.Request, *authContext) error {
	return errors.New("the TPM credential was not prepared (it needs the tpm keystore)")
}

func (tpmCredential) String() string { return "TPM endorsement key" }

// akTemplate is the attestation key: a restricted ECDSA P-256 signing key
// (go-attestation's ECC AK template), which the server checks with
// go-attestation's ActivationParameters.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
		NoDA: true, Restricted: true, SignEncrypt: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

var ecdsaSHA256 = tpm2.TPMTSigScheme{
	Scheme:  tpm2.TPMAlgECDSA,
	Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
}

// ak is an attestation key between the rounds: its wrapped blobs, loaded
// again for each use.
type ak struct {
	public  tpm2.TPM2BPublic
	private tpm2.TPM2BPrivate
}

func (tpmCredential) prepare(ctx context.Context, r *resolved, c *estClient, key keystore.Key) (Credential, error) {
	var (
		creq wire.TPMChallengeRequest
		k    ak
		ekT  tpm2.TPMTPublic
	)
	err := keystore.WithTPM(ctx, r.Keystore, func(a *keystore.TPMAccess) error {
		var err error
		if ekT, creq.EKCert, creq.EKPublic, err = readEK(a.TPM); err != nil {
			return err
		}
		k, creq.AK, err = newAK(a)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("TPM: %w", err)
	}
	ch, err := c.tpmChallenge(ctx, &creq)
	if err != nil {
		return nil, err
	}
	if ch.DeviceID != r.Device {
		return nil, fmt.Errorf("TPM: the server says this TPM's EK proves device %q, but the agent is configured as %q: configure that device ID", truncate(ch.DeviceID, 160), r.Device)
	}
	var resp wire.TPMResponse
	err = keystore.WithTPM(ctx, r.Keystore, func(a *keystore.TPMAccess) error {
		var err error
		if resp.Secret, err = activate(a, k, ekT, ch); err != nil {
			return err
		}
		resp.Key, err = certify(a, k, key, ch.Nonce)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("TPM: %w", err)
	}
	resp.Challenge = ch.Challenge
	tok, err := wire.EncodeTPMBearer(&resp)
	if err != nil {
		return nil, fmt.Errorf("TPM: %w", err)
	}
	return tpmBearer(tok), nil
}

// tpmBearer is the prepared round-two credential.
type tpmBearer string

func (t tpmBearer) authorize(req *http.Request, _ *authContext) error {
	req.Header.Set("Authorization", "Bearer "+string(t))
	return nil
}

func (tpmBearer) String() string { return "TPM endorsement key (response)" }

// GoString keeps %#v from printing the response.
func (t tpmBearer) GoString() string { return t.String() }

func flush(t transport.TPM, h tpm2.TPMHandle) {
	tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// readEK returns the EK template that matches the TPM's EK certificate (RSA
// preferred, as the TCG profile makes it the default), the certificate,
// and, without a certificate, the PKIX public key of the RSA EK.
func readEK(t transport.TPM) (tpm2.TPMTPublic, []byte, []byte, error) {
	for _, idx := range []struct {
		index uint32
		tmpl  tpm2.TPMTPublic
	}{{ekCertIndexRSA, tpm2.RSAEKTemplate}, {ekCertIndexECC, tpm2.ECCEKTemplate}} {
		der, err := readNV(t, idx.index)
		if err != nil {
			continue // no certificate at this index
		}
		if _, err := x509.ParseCertificate(der); err != nil {
			// Some makers pad the index; go-attestation tolerates
			// trailing bytes, and so does the server's parser.
			if _, err := parseCertPrefix(der); err != nil {
				return tpm2.TPMTPublic{}, nil, nil, fmt.Errorf("EK certificate in NV index %#x does not parse: %w", idx.index, err)
			}
		}
		return idx.tmpl, der, nil, nil
	}
	// No certificate: send the EK public key (groups with an allow-list
	// of EK hashes accept it).
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}.Execute(t)
	if err != nil {
		return tpm2.TPMTPublic{}, nil, nil, fmt.Errorf("create the EK: %w", err)
	}
	defer flush(t, rsp.ObjectHandle)
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return tpm2.TPMTPublic{}, nil, nil, err
	}
	rsaDetail, err := pub.Parameters.RSADetail()
	if err != nil {
		return tpm2.TPMTPublic{}, nil, nil, err
	}
	rsaUnique, err := pub.Unique.RSA()
	if err != nil {
		return tpm2.TPMTPublic{}, nil, nil, err
	}
	rsaPub, err := tpm2.RSAPub(rsaDetail, rsaUnique)
	if err != nil {
		return tpm2.TPMTPublic{}, nil, nil, err
	}
	pkix, err := x509.MarshalPKIXPublicKey(rsaPub)
	if err != nil {
		return tpm2.TPMTPublic{}, nil, nil, err
	}
	return tpm2.RSAEKTemplate, nil, pkix, nil
}

// parseCertPrefix parses a DER certificate followed by padding.
func parseCertPrefix(b []byte) (*x509.Certificate, error) {
	if len(b) < 4 || b[0] != 0x30 || b[1] != 0x82 {
		return nil, errors.New("not a DER certificate")
	}
	n := int(b[2])<<8 | int(b[3]) + 4
	if n > len(b) {
		return nil, errors.New("truncated DER certificate")
	}
	return x509.ParseCertificate(b[:n])
}

// readNV reads a whole NV index with owner authorization.
func readNV(t transport.TPM, index uint32) ([]byte, error) {
	h := tpm2.TPMHandle(index)
	pr, err := tpm2.NVReadPublic{NVIndex: h}.Execute(t)
	if err != nil {
		return nil, err
	}
	pub, err := pr.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	size := int(pub.DataSize)
	if size == 0 || size > maxEKCertSize {
		return nil, fmt.Errorf("NV index %#x holds %d bytes", index, size)
	}
	out := make([]byte, 0, size)
	for len(out) < size {
		n := min(nvChunk, size-len(out))
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: h, Name: pr.NVName},
			Size:       uint16(n),
			Offset:     uint16(len(out)),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("read NV index %#x: %w", index, err)
		}
		if len(rsp.Data.Buffer) == 0 {
			return nil, fmt.Errorf("read NV index %#x: empty read", index)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out[:size], nil
}

// newAK creates an attestation key under the keystore's storage primary
// and certifies its creation with itself (what go-attestation's NewAK
// does, and what the server's ActivationParameters checks).
func newAK(a *keystore.TPMAccess) (ak, wire.TPMKeyParams, error) {
	cr, err := tpm2.Create{ParentHandle: a.SRK, InPublic: tpm2.New2B(akTemplate)}.Execute(a.TPM)
	if err != nil {
		return ak{}, wire.TPMKeyParams{}, fmt.Errorf("create the attestation key: %w", err)
	}
	k := ak{public: cr.OutPublic, private: cr.OutPrivate}
	h, err := k.load(a)
	if err != nil {
		return ak{}, wire.TPMKeyParams{}, err
	}
	defer flush(a.TPM, h.Handle)
	cc, err := tpm2.CertifyCreation{
		SignHandle:     tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:   h,
		CreationHash:   cr.CreationHash,
		InScheme:       ecdsaSHA256,
		CreationTicket: cr.CreationTicket,
	}.Execute(a.TPM)
	if err != nil {
		return ak{}, wire.TPMKeyParams{}, fmt.Errorf("certify the attestation key's creation: %w", err)
	}
	return k, wire.TPMKeyParams{
		Public:            cr.OutPublic.Bytes(),
		CreateData:        cr.CreationData.Bytes(),
		CreateAttestation: cc.CertifyInfo.Bytes(),
		CreateSignature:   tpm2.Marshal(cc.Signature),
	}, nil
}

func (k ak) load(a *keystore.TPMAccess) (tpm2.NamedHandle, error) {
	rsp, err := tpm2.Load{ParentHandle: a.SRK, InPrivate: k.private, InPublic: k.public}.Execute(a.TPM)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("load the attestation key: %w", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

// activate runs TPM2_ActivateCredential: only the TPM holding both the EK
// and the AK recovers the server's secret.
func activate(a *keystore.TPMAccess, k ak, ekT tpm2.TPMTPublic, ch *wire.TPMChallenge) ([]byte, error) {
	// go-attestation's EncryptedCredential keeps the TPM2B size prefixes.
	if len(ch.Credential) < 2 || len(ch.Secret) < 2 {
		return nil, fmt.Errorf("%w: activation challenge too short", ErrBadResponse)
	}
	akH, err := k.load(a)
	if err != nil {
		return nil, err
	}
	defer flush(a.TPM, akH.Handle)
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(ekT)}.Execute(a.TPM)
	if err != nil {
		return nil, fmt.Errorf("create the EK: %w", err)
	}
	defer flush(a.TPM, ek.ObjectHandle)
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: akH.Handle, Name: akH.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle: tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name,
			Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: ch.Credential[2:]},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: ch.Secret[2:]},
	}.Execute(a.TPM)
	if err != nil {
		return nil, fmt.Errorf("activate the server's credential (is this the TPM whose EK was sent?): %w", err)
	}
	return rsp.CertInfo.Buffer, nil
}

// ekPolicy satisfies the TCG EK's policy: PolicySecret on the endorsement
// hierarchy.
func ekPolicy(t transport.TPM, h tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: h, NonceTPM: nonceTPM}.Execute(t)
	return err
}

// certify has the AK certify the device key (TPM2_Certify) with nonce as
// qualifying data, binding the key to this challenge.
func certify(a *keystore.TPMAccess, k ak, key keystore.Key, nonce []byte) (wire.TPMKeyParams, error) {
	akH, err := k.load(a)
	if err != nil {
		return wire.TPMKeyParams{}, err
	}
	defer flush(a.TPM, akH.Handle)
	keyH, pub, err := a.LoadKey(key)
	if err != nil {
		return wire.TPMKeyParams{}, err
	}
	defer flush(a.TPM, keyH.Handle)
	rsp, err := tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: keyH.Handle, Name: keyH.Name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: akH.Handle, Name: akH.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       ecdsaSHA256,
	}.Execute(a.TPM)
	if err != nil {
		return wire.TPMKeyParams{}, fmt.Errorf("certify the device key with the attestation key: %w", err)
	}
	return wire.TPMKeyParams{
		Public:            tpm2.Marshal(pub),
		CreateAttestation: rsp.CertifyInfo.Bytes(),
		CreateSignature:   tpm2.Marshal(rsp.Signature),
	}, nil
}

// tpmChallenge runs round one over the server-authenticated connection.
func (c *estClient) tpmChallenge(ctx context.Context, creq *wire.TPMChallengeRequest) (*wire.TPMChallenge, error) {
	const op = "tpm challenge"
	body, err := json.Marshal(creq)
	if err != nil {
		return nil, err
	}
	u := *c.base
	u.Path = c.base.Path + wire.ProvisionChallengePath(c.label, "tpm")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := c.plain.Do(req.WithContext(ctx))
	if err != nil {
		return nil, explainTransportError(op, c.base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, serverError(op, resp, c.clock.Now())
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return nil, fmt.Errorf("%s: %w: Content-Type %q is not application/json", op, ErrBadResponse, truncate(resp.Header.Get("Content-Type"), 64))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxChallengeSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading the response: %w", op, err)
	}
	ch, err := parseTPMChallenge(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return ch, nil
}

// parseTPMChallenge decodes the server's round-one answer, bounded, and
// checks it has what round two needs.
func parseTPMChallenge(b []byte) (*wire.TPMChallenge, error) {
	if len(b) > maxChallengeSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrBadResponse, maxChallengeSize)
	}
	var ch wire.TPMChallenge
	if err := json.Unmarshal(b, &ch); err != nil {
		return nil, fmt.Errorf("%w: not a TPM challenge", ErrBadResponse)
	}
	if len(ch.Challenge) == 0 || len(ch.Nonce) == 0 || len(ch.Credential) < 2 || len(ch.Secret) < 2 {
		return nil, fmt.Errorf("%w: the TPM challenge lacks a field", ErrBadResponse)
	}
	if err := wire.ValidateDeviceID(ch.DeviceID); err != nil {
		return nil, fmt.Errorf("%w: the TPM challenge names an invalid device ID", ErrBadResponse)
	}
	return &ch, nil
}

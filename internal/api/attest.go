package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// maxRefValuesBody bounds an import request: the document (64 KiB at
// most, see attest.MaxRefValuesSize) and its signature, base64 in JSON.
const maxRefValuesBody = 256 << 10

// maxSmallBody bounds the other attestation requests (a PEM key, a policy).
const maxSmallBody = 16 << 10

// Attestation is what the attestation routes need from the server.
type Attestation interface {
	// Challenge publishes an attestation challenge to the device now.
	Challenge(ctx context.Context, actor, tenant, device string) (*AttestChallenge, error)
	// ApproveAKEnrollment approves the AK enrollment request the device
	// sent and starts credential activation.
	ApproveAKEnrollment(ctx context.Context, actor, tenant, device string) error
	// ImportRefValues verifies and stores a release's reference values.
	ImportRefValues(ctx context.Context, actor, tenant string, doc, sig []byte) (*RefValuesInfo, error)
	// SetRefValueKey registers the tenant's reference-value public key (PEM).
	SetRefValueKey(ctx context.Context, actor, tenant string, pemKey []byte) error
	// SetAttestPolicy sets the tenant's ("" group) or a group's policy.
	SetAttestPolicy(ctx context.Context, actor, tenant string, p AttestPolicy) error
	// AttestationState returns the device's attestation state (nil if it
	// never attested and has no AK).
	AttestationState(ctx context.Context, tenant, device string) (*AttestationState, error)
}

// AttestChallenge says which challenge was sent.
type AttestChallenge struct {
	Device  string    `json:"device"`
	ID      string    `json:"challenge_id"`
	PCRs    []int     `json:"pcrs,omitempty"`
	Expires time.Time `json:"expires"`
}

// RefValues is the body of a reference-value import: the signed document
// and its signature, both base64, byte for byte as they were published
// (the signature covers the document's exact bytes).
type RefValues struct {
	Doc       []byte `json:"doc"`
	Signature []byte `json:"signature"`
}

// RefValuesInfo describes imported reference values.
type RefValuesInfo struct {
	HWModel  string    `json:"hw_model"`
	Release  string    `json:"release"`
	Stages   []string  `json:"stages"`
	Imported time.Time `json:"imported"`
}

// AttestPolicy is a tenant's or group's attestation policy; durations in
// Go syntax ("24h", "10m").
type AttestPolicy struct {
	Group               string `json:"group,omitempty"`
	Interval            string `json:"interval"`
	ChallengeTTL        string `json:"challenge_ttl,omitempty"`
	QuarantineOnFailure bool   `json:"quarantine_on_failure"`
	RenewalRequiresPass bool   `json:"renewal_requires_pass"`
	RenewalMaxAge       string `json:"renewal_max_age,omitempty"`
	AllowSoftware       bool   `json:"allow_software"`
}

// AttestationState is a device's attestation state as `ward device show`
// prints it.
type AttestationState struct {
	AKEnrolled   bool      `json:"ak_enrolled"`
	AKEnrolledAt time.Time `json:"ak_enrolled_at,omitzero"`
	AKPending    bool      `json:"ak_enrollment_pending,omitempty"`
	Result       string    `json:"result,omitempty"`
	Reasons      []string  `json:"reasons,omitempty"`
	Release      string    `json:"release,omitempty"`
	Assurance    string    `json:"assurance,omitempty"`
	TPMVerified  bool      `json:"tpm_verified"`
	Time         time.Time `json:"time,omitzero"`
	Quarantine   bool      `json:"quarantine,omitempty"`
	// Evidence summarises the last evidence: event count, TPM counters.
	Events       int    `json:"events,omitempty"`
	ResetCount   uint32 `json:"reset_count,omitempty"`
	RestartCount uint32 `json:"restart_count,omitempty"`
	TPMInfo      string `json:"tpm,omitempty"`
}

func (a *API) attestRoutes() {
	a.Handle("POST /api/v1/tenants/{tenant}/devices/{device}/attest", tenant.PermWrite, ScopeTenant, "Send the device an attestation challenge now", a.attestDevice)
	a.Handle("GET /api/v1/tenants/{tenant}/devices/{device}/attestation", tenant.PermRead, ScopeTenant, "Show a device's attestation state", a.getAttestation)
	a.Handle("POST /api/v1/tenants/{tenant}/devices/{device}/attestation/enroll", tenant.PermWrite, ScopeTenant, "Approve the device's attestation key enrollment (credential activation follows)", a.approveAK)
	a.Handle("POST /api/v1/tenants/{tenant}/refvalues", tenant.PermWrite, ScopeTenant, "Import a release's signed reference values (approves the release for attestation)", a.importRefValues)
	a.Handle("PUT /api/v1/tenants/{tenant}/refvalues/key", tenant.PermWrite, ScopeTenant, "Set the tenant's reference-value signing key (PEM public key)", a.setRefValueKey)
	a.Handle("PUT /api/v1/tenants/{tenant}/attestation/policy", tenant.PermWrite, ScopeTenant, "Set the tenant's or a group's attestation policy", a.setAttestPolicy)
}

func readBody(r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: "the body is larger than the limit"}
	}
	return b, nil
}

func (a *API) attestDevice(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := wire.ValidateDeviceID(r.PathValue("device")); err != nil {
		return err
	}
	c, err := a.d.Attest.Challenge(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("device"))
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusAccepted, c)
	return nil
}

func (a *API) getAttestation(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := wire.ValidateDeviceID(r.PathValue("device")); err != nil {
		return err
	}
	st, err := a.d.Attest.AttestationState(r.Context(), r.PathValue("tenant"), r.PathValue("device"))
	if err != nil {
		return err
	}
	if st == nil {
		st = &AttestationState{}
	}
	WriteJSON(w, http.StatusOK, st)
	return nil
}

func (a *API) approveAK(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := wire.ValidateDeviceID(r.PathValue("device")); err != nil {
		return err
	}
	if err := a.d.Attest.ApproveAKEnrollment(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("device")); err != nil {
		return err
	}
	WriteJSON(w, http.StatusAccepted, map[string]string{"device": r.PathValue("device"), "status": "activation sent"})
	return nil
}

func (a *API) importRefValues(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	b, err := readBody(r, maxRefValuesBody)
	if err != nil {
		return err
	}
	var req RefValues
	if err := json.Unmarshal(b, &req); err != nil {
		return Invalid(errors.New("body must be {\"doc\": <base64 document>, \"signature\": <base64>}"))
	}
	if len(req.Doc) == 0 || len(req.Signature) == 0 {
		return Invalid(errors.New("doc and signature are both required"))
	}
	info, err := a.d.Attest.ImportRefValues(r.Context(), p.Actor(), r.PathValue("tenant"), req.Doc, req.Signature)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusCreated, info)
	return nil
}

// RefValueKey is the body of the reference-value key route.
type RefValueKey struct {
	PublicKeyPEM string `json:"public_key_pem"`
}

func (a *API) setRefValueKey(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	b, err := readBody(r, maxSmallBody)
	if err != nil {
		return err
	}
	var req RefValueKey
	if err := json.Unmarshal(b, &req); err != nil || req.PublicKeyPEM == "" {
		return Invalid(errors.New("body must be {\"public_key_pem\": \"-----BEGIN PUBLIC KEY-----...\"}"))
	}
	if err := a.d.Attest.SetRefValueKey(r.Context(), p.Actor(), r.PathValue("tenant"), []byte(req.PublicKeyPEM)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) setAttestPolicy(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	b, err := readBody(r, maxSmallBody)
	if err != nil {
		return err
	}
	var pol AttestPolicy
	if err := json.Unmarshal(b, &pol); err != nil {
		return Invalid(errors.New("body must be an attestation policy JSON object"))
	}
	if err := a.d.Attest.SetAttestPolicy(r.Context(), p.Actor(), r.PathValue("tenant"), pol); err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, pol)
	return nil
}

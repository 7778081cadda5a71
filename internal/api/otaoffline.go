package api

import (
	"errors"
	"net/http"

	"github.com/wardiot/ward/internal/tenant"
)

// MaxTargetsMetadata bounds signed targets metadata imported by
// `ward release commit`; it equals the TUF repository's own limit
// (tufrepo.MaxMetadataSize), which every client enforces too.
const MaxTargetsMetadata = 5_000_000

// maxOfflineKeys bounds the offline targets keys one request registers:
// a signing ceremony involves a handful of officers.
const maxOfflineKeys = 16

// OfflineTargetsRequest registers the tenant's offline targets keys.
type OfflineTargetsRequest struct {
	// PublicKeysPEM are PEM "PUBLIC KEY" blocks (Ed25519 or ECDSA P-256).
	PublicKeysPEM []string `json:"public_keys_pem"`
	// Threshold is how many of them must sign targets (default 1).
	Threshold int `json:"threshold,omitempty"`
}

// OfflineTargets describes the Image repository after the switch to
// offline targets keys.
type OfflineTargets struct {
	RootVersion int64    `json:"root_version"`
	KeyIDs      []string `json:"targets_key_ids"`
	Threshold   int      `json:"threshold"`
	// PendingTargets, when releases were already served, is their targets
	// metadata to re-sign with the offline keys: until it (or a later
	// version) is committed, devices cannot verify the served targets.
	PendingTargets []byte `json:"pending_targets,omitempty"`
}

// TargetsCommitted is the answer to a commit of offline-signed targets.
type TargetsCommitted struct {
	Version  int64     `json:"targets_version"`
	Releases []Release `json:"releases"`
}

func (a *API) otaOfflineRoutes() {
	a.Handle("PUT /api/v1/tenants/{tenant}/releases/targets-keys", tenant.PermWrite, ScopeTenant, "Switch the tenant's Image repository to offline targets keys (new root version listing them)", a.initOfflineTargets)
	a.Handle("GET /api/v1/tenants/{tenant}/releases/pending", tenant.PermRead, ScopeTenant, "Unsigned targets metadata awaiting offline signatures", a.pendingTargets)
	a.Handle("POST /api/v1/tenants/{tenant}/releases/commit", tenant.PermWrite, ScopeTenant, "Import targets metadata signed offline (refused below the targets threshold)", a.commitTargets)
}

func (a *API) initOfflineTargets(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req OfflineTargetsRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if len(req.PublicKeysPEM) == 0 || len(req.PublicKeysPEM) > maxOfflineKeys {
		return Invalid(errors.New("public_keys_pem must list 1 to 16 PEM public keys"))
	}
	if req.Threshold == 0 {
		req.Threshold = 1
	}
	if req.Threshold < 1 || req.Threshold > len(req.PublicKeysPEM) {
		return Invalid(errors.New("threshold must be between 1 and the number of keys"))
	}
	out, err := a.d.OTA.InitOfflineTargets(r.Context(), p.Actor(), r.PathValue("tenant"), req)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) pendingTargets(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	b, err := a.d.OTA.PendingTargets(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b)
	return err
}

func (a *API) commitTargets(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	b, err := readBody(r, MaxTargetsMetadata)
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return Invalid(errors.New("the body must be the signed targets metadata (ward release sign --out)"))
	}
	out, err := a.d.OTA.CommitTargets(r.Context(), p.Actor(), r.PathValue("tenant"), b)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

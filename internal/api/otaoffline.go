package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/wardiot/ward/internal/tenant"
)

// MaxTargetsMetadata bounds signed targets metadata imported by
// `ward release commit`; it equals the TUF repository's own limit
// (tufrepo.MaxMetadataSize), which every client enforces too.
const MaxTargetsMetadata = 5_000_000

// maxOfflineKeys bounds the offline keys of a role one request
// registers: a signing ceremony involves a handful of officers.
const maxOfflineKeys = 16

// ImageKeysRequest changes who holds the offline roles of the tenant's
// Image repository. A role left empty keeps its keys.
type ImageKeysRequest struct {
	// RootKeysPEM are PEM "PUBLIC KEY" blocks (Ed25519 or ECDSA P-256)
	// of the offline root keys; RootThreshold of them must sign every
	// later root (default 1).
	RootKeysPEM   []string `json:"root_keys_pem,omitempty"`
	RootThreshold int      `json:"root_threshold,omitempty"`
	// TargetsKeysPEM are the offline targets keys; TargetsThreshold of
	// them must sign every release (default 1).
	TargetsKeysPEM   []string `json:"targets_keys_pem,omitempty"`
	TargetsThreshold int      `json:"targets_threshold,omitempty"`
}

// ImageRole is one role of an Image root.
type ImageRole struct {
	Role      string   `json:"role"`
	KeyIDs    []string `json:"key_ids"`
	Threshold int      `json:"threshold"`
	// Online is true when the server holds enough of the role's keys to
	// sign for it alone.
	Online bool `json:"online"`
}

// ImageKeys describes the tenant's Image repository trust.
type ImageKeys struct {
	RootVersion int64       `json:"root_version"`
	RootExpires time.Time   `json:"root_expires"`
	Roles       []ImageRole `json:"roles"`
	// PendingRoot, when set, is the next root awaiting offline
	// signatures (by a threshold of the current root keys and of its
	// own); PendingRootRoles are its roles.
	PendingRoot      []byte      `json:"pending_root,omitempty"`
	PendingRootRoles []ImageRole `json:"pending_root_roles,omitempty"`
	// PendingTargets, when releases were already served and the targets
	// keys changed, is their targets metadata to re-sign with the new
	// keys: until it (or a later version) is committed, devices cannot
	// verify the served targets.
	PendingTargets []byte `json:"pending_targets,omitempty"`
}

// TargetsCommitted is the answer to a commit of offline-signed targets.
type TargetsCommitted struct {
	Version  int64     `json:"targets_version"`
	Releases []Release `json:"releases"`
}

func (a *API) otaOfflineRoutes() {
	a.Handle("GET /api/v1/tenants/{tenant}/releases/keys", tenant.PermRead, ScopeTenant, "Who holds each role of the tenant's Image repository, and any root awaiting signatures", a.imageKeys)
	a.Handle("PUT /api/v1/tenants/{tenant}/releases/keys", tenant.PermWrite, ScopeTenant, "Make a new Image root listing offline root and/or targets keys (staged for offline signatures unless the server can sign it)", a.changeImageKeys)
	a.Handle("POST /api/v1/tenants/{tenant}/releases/root-renewal", tenant.PermWrite, ScopeTenant, "Make the next Image root with the same keys and a fresh expiry", a.renewImageRoot)
	a.Handle("GET /api/v1/tenants/{tenant}/releases/pending-root", tenant.PermRead, ScopeTenant, "The Image root awaiting offline signatures", a.pendingRoot)
	a.Handle("POST /api/v1/tenants/{tenant}/releases/root-commit", tenant.PermWrite, ScopeTenant, "Import the staged Image root signed offline (refused below either root threshold)", a.commitRoot)
	a.Handle("GET /api/v1/tenants/{tenant}/releases/pending", tenant.PermRead, ScopeTenant, "Unsigned targets metadata awaiting offline signatures", a.pendingTargets)
	a.Handle("POST /api/v1/tenants/{tenant}/releases/commit", tenant.PermWrite, ScopeTenant, "Import targets metadata signed offline (refused below the targets threshold)", a.commitTargets)
}

func (a *API) imageKeys(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	out, err := a.d.OTA.ImageKeys(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// writeImageKeys answers 202 Accepted while a root awaits signatures.
func writeImageKeys(w http.ResponseWriter, out *ImageKeys) {
	code := http.StatusOK
	if out.PendingRoot != nil {
		code = http.StatusAccepted
	}
	WriteJSON(w, code, out)
}

func checkKeyList(role string, keys []string, threshold *int) error {
	if len(keys) == 0 {
		if *threshold != 0 {
			return Invalid(fmt.Errorf("%s_threshold given without %s_keys_pem", role, role))
		}
		return nil
	}
	if len(keys) > maxOfflineKeys {
		return Invalid(fmt.Errorf("%s_keys_pem must list 1 to %d PEM public keys", role, maxOfflineKeys))
	}
	if *threshold == 0 {
		*threshold = 1
	}
	if *threshold < 1 || *threshold > len(keys) {
		return Invalid(fmt.Errorf("the %s threshold must be between 1 and the number of %s keys", role, role))
	}
	return nil
}

func (a *API) changeImageKeys(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req ImageKeysRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if len(req.RootKeysPEM) == 0 && len(req.TargetsKeysPEM) == 0 {
		return Invalid(errors.New("give root_keys_pem, targets_keys_pem or both (to re-date the root with the same keys, POST root-renewal)"))
	}
	if err := checkKeyList("root", req.RootKeysPEM, &req.RootThreshold); err != nil {
		return err
	}
	if err := checkKeyList("targets", req.TargetsKeysPEM, &req.TargetsThreshold); err != nil {
		return err
	}
	out, err := a.d.OTA.ChangeImageKeys(r.Context(), p.Actor(), r.PathValue("tenant"), req)
	if err != nil {
		return err
	}
	writeImageKeys(w, out)
	return nil
}

func (a *API) renewImageRoot(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	out, err := a.d.OTA.RenewImageRoot(r.Context(), p.Actor(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	writeImageKeys(w, out)
	return nil
}

func (a *API) pendingRoot(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	return writeMetadata(w)(a.d.OTA.PendingRoot(r.Context(), r.PathValue("tenant")))
}

func (a *API) commitRoot(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	b, err := readSignedMetadata(r, "root")
	if err != nil {
		return err
	}
	out, err := a.d.OTA.CommitRoot(r.Context(), p.Actor(), r.PathValue("tenant"), b)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) pendingTargets(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	return writeMetadata(w)(a.d.OTA.PendingTargets(r.Context(), r.PathValue("tenant")))
}

func (a *API) commitTargets(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	b, err := readSignedMetadata(r, "targets")
	if err != nil {
		return err
	}
	out, err := a.d.OTA.CommitTargets(r.Context(), p.Actor(), r.PathValue("tenant"), b)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// writeMetadata answers with TUF metadata's exact bytes (they are what
// the officers sign), or the error.
func writeMetadata(w http.ResponseWriter) func([]byte, error) error {
	return func(b []byte, err error) error {
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, err = w.Write(b)
		return err
	}
}

// readSignedMetadata reads the body of a commit: signed TUF metadata of
// the kind named, at most MaxTargetsMetadata bytes.
func readSignedMetadata(r *http.Request, kind string) ([]byte, error) {
	b, err := readBody(r, MaxTargetsMetadata)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, Invalid(fmt.Errorf("the body must be the signed %s metadata (ward release sign --out)", kind))
	}
	return b, nil
}

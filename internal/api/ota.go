package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// OTA is what the release and assignment routes need from the server.
type OTA interface {
	// PublishRelease stores a release's image (read from image, at most
	// MaxImageSize bytes) in the tenant's Image repository.
	PublishRelease(ctx context.Context, actor, tenant string, rel ReleaseSpec, image io.Reader) (*Release, error)
	// ListReleases lists the images the tenant's Image repository serves.
	ListReleases(ctx context.Context, tenant string) ([]Release, error)
	// AssignRelease makes the device's Director name the release (for
	// the device's hardware model) and pushes an OTA job to the device.
	AssignRelease(ctx context.Context, actor, tenant, device, release string) (*OTAAssignment, error)
	// OTAState returns what the server knows of the device's updates (nil
	// if nothing).
	OTAState(ctx context.Context, tenant, device string) (*OTAState, error)
	// ImageKeys describes who holds the keys of each role of the
	// tenant's Image repository, and any root awaiting signatures.
	ImageKeys(ctx context.Context, tenant string) (*ImageKeys, error)
	// ChangeImageKeys makes a new Image root listing the given offline
	// root and/or targets keys. It is imported at once when the server
	// still holds enough root keys to sign it; otherwise it is staged for
	// `ward release sign` and CommitRoot. With offline targets keys,
	// releases wait for `ward release sign` and CommitTargets.
	ChangeImageKeys(ctx context.Context, actor, tenant string, req ImageKeysRequest) (*ImageKeys, error)
	// RenewImageRoot makes the next root version with the same keys and
	// a fresh expiry (staged for signatures when the root is offline).
	RenewImageRoot(ctx context.Context, actor, tenant string) (*ImageKeys, error)
	// PendingRoot returns the root awaiting offline signatures.
	PendingRoot(ctx context.Context, tenant string) ([]byte, error)
	// CommitRoot imports the staged root once signed by a threshold of
	// the current and of the new root keys; the server destroys its own
	// keys the new root no longer lists.
	CommitRoot(ctx context.Context, actor, tenant string, signed []byte) (*ImageKeys, error)
	// PendingTargets returns the unsigned targets metadata awaiting
	// offline signatures.
	PendingTargets(ctx context.Context, tenant string) ([]byte, error)
	// CommitTargets imports targets metadata signed offline; it is
	// refused below the targets threshold.
	CommitTargets(ctx context.Context, actor, tenant string, signed []byte) (*TargetsCommitted, error)
	// MinSecurityVersion returns the tenant's minimum security version.
	MinSecurityVersion(ctx context.Context, tenant string) (*MinSecurityVersion, error)
	// RaiseMinSecurityVersion raises it (it never goes down) and re-signs
	// every device's Director assignment with it.
	RaiseMinSecurityVersion(ctx context.Context, actor, tenant string, v uint64) (*MinSecurityVersion, error)
}

// MinSecurityVersion is the tenant's minimum security version: no device
// is assigned an image below it, and each device's Director metadata
// carries it so the agent raises its anti-rollback floor to it.
type MinSecurityVersion struct {
	MinSecurityVersion uint64 `json:"min_security_version"`
	// After a raise: the devices whose assignment was re-signed with the
	// new minimum, and those assigned an image below it, which keep their
	// old metadata until they are assigned (or rolled out) a fixed release.
	Restaged []string        `json:"restaged,omitempty"`
	Below    []DeviceProblem `json:"below_minimum,omitempty"`
}

// DeviceProblem names a device and what is wrong with it.
type DeviceProblem struct {
	Device string `json:"device"`
	Detail string `json:"detail"`
}

// MinSecurityVersionRequest is the body of a raise.
type MinSecurityVersionRequest struct {
	MinSecurityVersion *uint64 `json:"min_security_version"`
}

// ReleaseSpec describes a release to publish; the image is the request
// body (or its "image" part).
type ReleaseSpec struct {
	Name, Version, HardwareID string
	SecurityVersion           uint64
	// SBOM (CycloneDX JSON), RefValues (attestation reference values) and
	// RefValuesSig (their signature by the tenant's reference-value key)
	// are optional multipart parts; each becomes a target of the release.
	SBOM, RefValues, RefValuesSig []byte
}

// Release is one published image.
type Release struct {
	Release         string   `json:"release"` // "<name>@<version>"
	HardwareID      string   `json:"hardware_id"`
	ReleaseCounter  uint64   `json:"release_counter"`
	SecurityVersion uint64   `json:"security_version"`
	Target          string   `json:"target"`
	Length          int64    `json:"length"`
	SHA256          string   `json:"sha256"`
	Manifest        string   `json:"manifest,omitempty"`
	SBOM            string   `json:"sbom,omitempty"`
	RefValues       string   `json:"refvalues,omitempty"`
	Deltas          []string `json:"deltas,omitempty"`
	// PendingTargets is set when the tenant's targets keys are offline:
	// the unsigned targets metadata (TUF JSON, exact bytes) to sign with
	// `ward release sign` and import with `ward release commit`. The
	// release is not served until then.
	PendingTargets []byte `json:"pending_targets,omitempty"`
}

// AssignRequest is the body of an assignment.
type AssignRequest struct {
	Release string `json:"release"` // "<name>@<version>"
}

// OTAAssignment says what a device was assigned and whether the job
// was published.
type OTAAssignment struct {
	Device  string `json:"device"`
	Release string `json:"release"`
	Target  string `json:"target"`
	// Published is true when the job went to the gateway; a device that
	// is not connected does not get it (no retained jobs yet) and finds
	// the assignment in its Director repository on its next check.
	Published bool `json:"job_published"`
}

// OTAState is a device's update state as `ward device show` prints it.
type OTAState struct {
	Assigned []string `json:"assigned,omitempty"`
	// Floor is the highest anti-rollback floor the device reported.
	Floor *uint64 `json:"floor,omitempty"`
	// Last is the device's last status report and Received when the
	// server got it.
	Last     *wire.OTAStatus `json:"last_status,omitempty"`
	Received time.Time       `json:"received,omitzero"`
}

// MaxReleaseUpload bounds a release upload: the Image repository refuses
// a larger image anyway (ota.MaxImageSize), this stops the read early.
const MaxReleaseUpload = 1 << 30

const (
	// MaxSBOMUpload bounds the "sbom" part of a release upload; it equals
	// the Image repository's limit on side files.
	MaxSBOMUpload = 16 << 20
	// MaxRefValuesUpload bounds the "refvalues" part; the attestation
	// verifier refuses larger documents (attest.MaxRefValuesSize).
	MaxRefValuesUpload = 64 << 10
	// maxRefValuesSigUpload bounds the signature part: an Ed25519 or
	// ECDSA signature is under 100 bytes.
	maxRefValuesSigUpload = 1 << 10
)

func (a *API) otaRoutes() {
	a.Handle("POST /api/v1/tenants/{tenant}/releases", tenant.PermWrite, ScopeTenant, "Publish a release: the body is the image (application/octet-stream); name, version, hw and security_version in the query", a.publishRelease)
	a.Handle("GET /api/v1/tenants/{tenant}/releases", tenant.PermRead, ScopeTenant, "List published releases", a.listReleases)
	a.Handle("POST /api/v1/tenants/{tenant}/devices/{device}/ota/assign", tenant.PermWrite, ScopeTenant, "Assign a release to a device (its Director repository) and push the OTA job", a.assignRelease)
	a.Handle("GET /api/v1/tenants/{tenant}/ota/min-security-version", tenant.PermRead, ScopeTenant, "The tenant's minimum security version", a.getMinSV)
	a.Handle("PUT /api/v1/tenants/{tenant}/ota/min-security-version", tenant.PermWrite, ScopeTenant, "Raise the tenant's minimum security version (it never goes down) and re-sign every device's assignment with it", a.raiseMinSV)
	a.otaOfflineRoutes() // otaoffline.go
}

func (a *API) getMinSV(w http.ResponseWriter, r *http.Request, _ *tenant.Principal) error {
	m, err := a.d.OTA.MinSecurityVersion(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, m)
	return nil
}

func (a *API) raiseMinSV(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req MinSecurityVersionRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if req.MinSecurityVersion == nil {
		return Invalid(errors.New("body must be {\"min_security_version\": N}"))
	}
	m, err := a.d.OTA.RaiseMinSecurityVersion(r.Context(), p.Actor(), r.PathValue("tenant"), *req.MinSecurityVersion)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, m)
	return nil
}

func (a *API) publishRelease(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	q := r.URL.Query()
	spec := ReleaseSpec{Name: q.Get("name"), Version: q.Get("version"), HardwareID: q.Get("hw")}
	if spec.Name == "" || spec.Version == "" || spec.HardwareID == "" {
		return Invalid(errors.New("name, version and hw query parameters are required"))
	}
	sv, err := strconv.ParseUint(q.Get("security_version"), 10, 64)
	if err != nil {
		return Invalid(errors.New("security_version must be a non-negative integer"))
	}
	spec.SecurityVersion = sv
	if r.ContentLength > MaxReleaseUpload+MaxSBOMUpload+MaxRefValuesUpload+maxRefValuesSigUpload+64<<10 {
		return &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: "the image is larger than the 1 GiB limit"}
	}
	var image io.Reader
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
		if image, err = releaseParts(w, r, &spec); err != nil {
			return err
		}
	} else {
		image = http.MaxBytesReader(w, r.Body, MaxReleaseUpload)
	}
	rel, err := a.d.OTA.PublishRelease(r.Context(), p.Actor(), r.PathValue("tenant"), spec, image)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: "the image is larger than the 1 GiB limit"}
		}
		return err
	}
	WriteJSON(w, http.StatusCreated, rel)
	return nil
}

// releaseParts reads a multipart release upload: the optional small parts
// "sbom", "refvalues" and "refvalues_sig" first (each bounded), then
// "image", which is returned unread so a large image streams to storage.
func releaseParts(w http.ResponseWriter, r *http.Request, spec *ReleaseSpec) (io.Reader, error) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxReleaseUpload+MaxSBOMUpload+MaxRefValuesUpload+maxRefValuesSigUpload+64<<10)
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, Invalid(fmt.Errorf("multipart body: %w", err))
	}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			return nil, Invalid(errors.New("multipart body has no \"image\" part"))
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: "the upload is larger than the limit"}
			}
			return nil, Invalid(fmt.Errorf("multipart body: %w", err))
		}
		var dst *[]byte
		var limit int64
		switch part.FormName() {
		case "image":
			return io.LimitReader(part, MaxReleaseUpload+1), nil
		case "sbom":
			dst, limit = &spec.SBOM, MaxSBOMUpload
		case "refvalues":
			dst, limit = &spec.RefValues, MaxRefValuesUpload
		case "refvalues_sig":
			dst, limit = &spec.RefValuesSig, maxRefValuesSigUpload
		default:
			return nil, Invalid(fmt.Errorf("unknown part %q: want sbom, refvalues, refvalues_sig, then image", part.FormName()))
		}
		if *dst != nil {
			return nil, Invalid(fmt.Errorf("part %q given twice", part.FormName()))
		}
		b, err := io.ReadAll(io.LimitReader(part, limit+1))
		if err != nil {
			return nil, Invalid(fmt.Errorf("part %q: %w", part.FormName(), err))
		}
		if int64(len(b)) > limit {
			return nil, &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large",
				Detail: fmt.Sprintf("part %q is larger than %d bytes", part.FormName(), limit)}
		}
		if len(b) == 0 {
			b = []byte{} // present but empty: the server refuses it
		}
		*dst = b
	}
}

func (a *API) listReleases(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	rs, err := a.d.OTA.ListReleases(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	if rs == nil {
		rs = []Release{}
	}
	WriteJSON(w, http.StatusOK, rs)
	return nil
}

func (a *API) assignRelease(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	if err := wire.ValidateDeviceID(r.PathValue("device")); err != nil {
		return err
	}
	var req AssignRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if req.Release == "" {
		return Invalid(errors.New("body must be {\"release\": \"<name>@<version>\"}"))
	}
	as, err := a.d.OTA.AssignRelease(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("device"), req.Release)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, as)
	return nil
}

package api

import (
	"context"
	"errors"
	"io"
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
}

// ReleaseSpec describes a release to publish; the image is the request
// body.
type ReleaseSpec struct {
	Name, Version, HardwareID string
	SecurityVersion           uint64
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
	Deltas          []string `json:"deltas,omitempty"`
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

func (a *API) otaRoutes() {
	a.Handle("POST /api/v1/tenants/{tenant}/releases", tenant.PermWrite, ScopeTenant, "Publish a release: the body is the image (application/octet-stream); name, version, hw and security_version in the query", a.publishRelease)
	a.Handle("GET /api/v1/tenants/{tenant}/releases", tenant.PermRead, ScopeTenant, "List published releases", a.listReleases)
	a.Handle("POST /api/v1/tenants/{tenant}/devices/{device}/ota/assign", tenant.PermWrite, ScopeTenant, "Assign a release to a device (its Director repository) and push the OTA job", a.assignRelease)
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
	if r.ContentLength > MaxReleaseUpload {
		return &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: "the image is larger than the 1 GiB limit"}
	}
	body := http.MaxBytesReader(w, r.Body, MaxReleaseUpload)
	rel, err := a.d.OTA.PublishRelease(r.Context(), p.Actor(), r.PathValue("tenant"), spec, body)
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

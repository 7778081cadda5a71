package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/fleet"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

func (a *API) deviceRoutes() {
	a.Handle("GET /api/v1/tenants/{tenant}/devices", tenant.PermRead, ScopeTenant, "List devices", a.listDevices)
	a.Handle("GET /api/v1/tenants/{tenant}/devices/{device}", tenant.PermRead, ScopeTenant, "Show a device", a.getDevice)
	a.Handle("POST /api/v1/tenants/{tenant}/devices/{device}/state", tenant.PermWrite, ScopeTenant, "Change a device's state (active, disabled, quarantined, decommissioned)", a.setDeviceState)
}

// Device is the JSON form of a device.
type Device struct {
	ID        string            `json:"id"`
	State     string            `json:"state"`
	Group     string            `json:"group,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	Certs     []Cert            `json:"certificates,omitempty"`
	// Attestation is set by `device show` when attestation is wired.
	Attestation *AttestationState `json:"attestation,omitempty"`
	// OTA is set by `device show` when OTA is wired.
	OTA *OTAState `json:"ota,omitempty"`
}

func deviceJSON(d *store.Device) Device {
	return Device{ID: d.ID, State: d.State, Group: d.Group, Tags: d.Tags, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
}

func (a *API) listDevices(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	q := r.URL.Query()
	f := store.DeviceFilter{Tenant: r.PathValue("tenant"), State: q.Get("state"), Group: q.Get("group"), After: q.Get("after"), Limit: 1000}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 10000 {
			return Invalid(errors.New("limit must be between 1 and 10000"))
		}
		f.Limit = n
	}
	ds, err := a.d.Store.ListDevices(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]Device, 0, len(ds))
	for _, d := range ds {
		out = append(out, deviceJSON(d))
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *API) getDevice(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	tid, id := r.PathValue("tenant"), r.PathValue("device")
	if err := wire.ValidateDeviceID(id); err != nil {
		return err
	}
	d, err := a.d.Store.GetDevice(r.Context(), tid, id)
	if err != nil {
		return err
	}
	out := deviceJSON(d)
	certs, err := a.d.Store.ListCerts(r.Context(), store.CertFilter{Tenant: tid, Device: id, Limit: 100})
	if err != nil {
		return err
	}
	for _, c := range certs {
		out.Certs = append(out.Certs, certJSON(c, false))
	}
	if a.d.Attest != nil {
		if out.Attestation, err = a.d.Attest.AttestationState(r.Context(), tid, id); err != nil {
			return err
		}
	}
	if a.d.OTA != nil {
		if out.OTA, err = a.d.OTA.OTAState(r.Context(), tid, id); err != nil {
			return err
		}
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// SetDeviceStateRequest is the body of POST .../devices/{device}/state.
type SetDeviceStateRequest struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

func (a *API) setDeviceState(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req SetDeviceStateRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	switch req.State {
	case store.DeviceActive, store.DeviceDisabled, store.DeviceQuarantined, store.DeviceDecommissioned:
	default:
		return Invalid(errors.New("state must be active, disabled, quarantined or decommissioned"))
	}
	if len(req.Reason) > 500 {
		return Invalid(errors.New("reason must be at most 500 characters"))
	}
	tid, id := r.PathValue("tenant"), r.PathValue("device")
	err := a.d.Fleet.SetState(r.Context(), p.Actor(), tid, id, req.State, req.Reason)
	switch {
	case errors.Is(err, fleet.ErrNoDevice):
		return &Error{Status: http.StatusNotFound, Title: "Not found", Detail: err.Error()}
	case errors.Is(err, fleet.ErrTransition):
		return &Error{Status: http.StatusConflict, Title: "Conflict", Detail: err.Error()}
	case err != nil:
		return err
	}
	d, err := a.d.Store.GetDevice(r.Context(), tid, id)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, deviceJSON(d))
	return nil
}

// MACAdmin rotates device telemetry MAC secrets and epochs.
type MACAdmin interface {
	RotateMACSecret(ctx context.Context, actor, tenant, device string) (uint64, error)
	AdvanceMACEpoch(ctx context.Context, actor, tenant, device string) (uint64, error)
}

func (a *API) macRoutes() {
	a.Handle("POST /api/v1/tenants/{tenant}/devices/{device}/mac-secret", tenant.PermWrite, ScopeTenant, "Give a device a new telemetry MAC secret (and epoch)", a.rotateMAC)
	a.Handle("POST /api/v1/tenants/{tenant}/devices/{device}/mac-epoch", tenant.PermWrite, ScopeTenant, "Start the next telemetry MAC epoch", a.advanceMAC)
}

// MACEpoch is the response of the MAC routes (the secret itself goes only
// to the device, over its mutually authenticated session).
type MACEpoch struct {
	Device string `json:"device"`
	Epoch  uint64 `json:"epoch"`
}

func (a *API) rotateMAC(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	n, err := a.d.MAC.RotateMACSecret(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("device"))
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, MACEpoch{Device: r.PathValue("device"), Epoch: n})
	return nil
}

func (a *API) advanceMAC(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	n, err := a.d.MAC.AdvanceMACEpoch(r.Context(), p.Actor(), r.PathValue("tenant"), r.PathValue("device"))
	if err != nil {
		if strings.Contains(err.Error(), "no MAC secret") {
			return &Error{Status: http.StatusConflict, Title: "No secret", Detail: err.Error()}
		}
		return err
	}
	WriteJSON(w, http.StatusOK, MACEpoch{Device: r.PathValue("device"), Epoch: n})
	return nil
}

package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/internal/twin"
	"github.com/wardiot/ward/wire"
)

// Twins reads twins and applies operators' desired-state patches (the
// server implements it and pushes deltas to devices).
type Twins interface {
	GetTwin(ctx context.Context, tenant, device, name string) (*twin.Twin, error)
	PatchDesired(ctx context.Context, tenant, device, name string, patch []byte, ifMatch uint64) (*twin.Twin, error)
}

func (a *API) twinRoutes() {
	a.Handle("GET /api/v1/tenants/{tenant}/devices/{device}/twin", tenant.PermRead, ScopeTenant, "A device twin (desired, reported, delta)", a.getTwin)
	a.Handle("PATCH /api/v1/tenants/{tenant}/devices/{device}/twin", tenant.PermWrite, ScopeTenant, "Merge-patch the desired state (If-Match: desired version)", a.patchTwin)
}

// TwinSection is one side of a twin.
type TwinSection struct {
	Version uint64               `json:"version"`
	Doc     json.RawMessage      `json:"doc"`
	Updated map[string]time.Time `json:"updated,omitempty"`
}

// Twin is the JSON form of a device twin.
type Twin struct {
	Device   string          `json:"device"`
	Name     string          `json:"name"`
	Desired  TwinSection     `json:"desired"`
	Reported TwinSection     `json:"reported"`
	Delta    json.RawMessage `json:"delta,omitempty"`
}

func twinJSON(t *twin.Twin) (Twin, error) {
	d, err := t.Delta()
	if err != nil {
		return Twin{}, err
	}
	doc := func(b json.RawMessage) json.RawMessage {
		if len(b) == 0 {
			return json.RawMessage("{}")
		}
		return b
	}
	return Twin{Device: t.Device, Name: t.Name, Delta: d,
		Desired:  TwinSection{Version: t.Desired.Version, Doc: doc(t.Desired.Doc), Updated: t.Desired.Updated},
		Reported: TwinSection{Version: t.Reported.Version, Doc: doc(t.Reported.Doc), Updated: t.Reported.Updated}}, nil
}

func twinName(r *http.Request) (string, error) {
	name := r.URL.Query().Get("name")
	if name == "" {
		name = wire.DefaultTwinName
	}
	return name, wire.ValidateTwinName(name)
}

func (a *API) getTwin(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	name, err := twinName(r)
	if err != nil {
		return err
	}
	if err := wire.ValidateDeviceID(r.PathValue("device")); err != nil {
		return err
	}
	t, err := a.d.Twins.GetTwin(r.Context(), r.PathValue("tenant"), r.PathValue("device"), name)
	if err != nil {
		return err
	}
	out, err := twinJSON(t)
	if err != nil {
		return err
	}
	w.Header().Set("ETag", strconv.Quote(strconv.FormatUint(t.Desired.Version, 10)))
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// maxTwinPatch bounds the request body before the twin package's own
// section limits apply.
const maxTwinPatch = twin.MaxDesiredSize + 1024

func (a *API) patchTwin(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	name, err := twinName(r)
	if err != nil {
		return err
	}
	if err := wire.ValidateDeviceID(r.PathValue("device")); err != nil {
		return err
	}
	var ifMatch uint64 = twin.AnyVersion
	if h := strings.Trim(r.Header.Get("If-Match"), `"`); h != "" && h != "*" {
		n, err := strconv.ParseUint(h, 10, 64)
		if err != nil {
			return Invalid(errors.New("If-Match must be the desired version, a number"))
		}
		ifMatch = n
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTwinPatch))
	if err != nil {
		return &Error{Status: http.StatusRequestEntityTooLarge, Title: "Request too large", Detail: "the patch is larger than a desired section may be"}
	}
	t, err := a.d.Twins.PatchDesired(r.Context(), r.PathValue("tenant"), r.PathValue("device"), name, body, ifMatch)
	switch {
	case errors.Is(err, twin.ErrVersionConflict):
		return &Error{Status: http.StatusConflict, Title: "Conflict", Detail: err.Error()}
	case errors.Is(err, twin.ErrTooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Title: "Too large", Detail: err.Error()}
	case errors.Is(err, twin.ErrInvalid):
		return Invalid(err)
	case err != nil:
		return err
	}
	out, err := twinJSON(t)
	if err != nil {
		return err
	}
	w.Header().Set("ETag", strconv.Quote(strconv.FormatUint(t.Desired.Version, 10)))
	WriteJSON(w, http.StatusOK, out)
	return nil
}

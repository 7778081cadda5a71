package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/wardiot/ward/internal/tenant"
	"github.com/wardiot/ward/wire"
)

// SchemaRegistry registers telemetry schemas (the server implements it).
type SchemaRegistry interface {
	RegisterSchema(ctx context.Context, actor, tenant, id string, version uint32, doc []byte) error
}

func (a *API) telemetryRoutes() {
	a.Handle("POST /api/v1/tenants/{tenant}/schemas", tenant.PermWrite, ScopeTenant, "Register a telemetry schema version", a.registerSchema)
	a.Handle("GET /api/v1/tenants/{tenant}/schemas", tenant.PermRead, ScopeTenant, "List telemetry schemas", a.listSchemas)
	a.Handle("GET /api/v1/tenants/{tenant}/devices/{device}/telemetry", tenant.PermRead, ScopeTenant, "A device's recent verified telemetry", a.recentTelemetry)
}

// RegisterSchemaRequest is the body of POST .../schemas.
type RegisterSchemaRequest struct {
	ID      string          `json:"id"`
	Version uint32          `json:"version"`
	Schema  json.RawMessage `json:"schema"`
}

// SchemaInfo is the JSON form of a registered schema.
type SchemaInfo struct {
	ID        string          `json:"id"`
	Version   uint32          `json:"version"`
	Schema    json.RawMessage `json:"schema"`
	CreatedAt time.Time       `json:"created_at"`
}

func (a *API) registerSchema(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req RegisterSchemaRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if err := wire.ValidateSchemaID(req.ID); err != nil {
		return Invalid(err)
	}
	tid := r.PathValue("tenant")
	if _, err := a.d.Store.GetTenant(r.Context(), tid); err != nil {
		return err
	}
	if err := a.d.Schemas.RegisterSchema(r.Context(), p.Actor(), tid, req.ID, req.Version, req.Schema); err != nil {
		// Compatibility and syntax errors are the caller's to fix.
		return &Error{Status: http.StatusUnprocessableEntity, Title: "Schema refused", Detail: err.Error()}
	}
	WriteJSON(w, http.StatusCreated, SchemaInfo{ID: req.ID, Version: req.Version, Schema: req.Schema, CreatedAt: time.Now().UTC()})
	return nil
}

func (a *API) listSchemas(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	ss, err := a.d.Store.ListSchemas(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	out := make([]SchemaInfo, 0, len(ss))
	for _, s := range ss {
		out = append(out, SchemaInfo{ID: s.ID, Version: s.Version, Schema: s.Doc, CreatedAt: s.CreatedAt})
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

// Reading is a verified telemetry message. Confidential fields are never
// returned (they are sealed at rest).
type Reading struct {
	Stream        string          `json:"stream"`
	Seq           uint64          `json:"seq"`
	Time          time.Time       `json:"time"`
	Received      time.Time       `json:"received"`
	SchemaID      string          `json:"schema"`
	SchemaVersion uint32          `json:"schema_version"`
	Payload       json.RawMessage `json:"payload"`
	Confidential  bool            `json:"has_confidential_fields,omitempty"`
}

func (a *API) recentTelemetry(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	tid, dev := r.PathValue("tenant"), r.PathValue("device")
	if err := wire.ValidateDeviceID(dev); err != nil {
		return err
	}
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 10000 {
			return Invalid(errors.New("limit must be between 1 and 10000"))
		}
		limit = n
	}
	if f, ok := a.d.Schemas.(interface{ FlushTelemetry(context.Context) }); ok {
		f.FlushTelemetry(r.Context())
	}
	rs, err := a.d.Store.RecentReadings(r.Context(), tid, dev, limit)
	if err != nil {
		return err
	}
	out := make([]Reading, 0, len(rs))
	for _, x := range rs {
		out = append(out, Reading{Stream: x.Stream, Seq: x.Seq, Time: x.Time, Received: x.Received, SchemaID: x.SchemaID,
			SchemaVersion: x.SchemaVersion, Payload: x.Payload, Confidential: len(x.Sealed) > 0})
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

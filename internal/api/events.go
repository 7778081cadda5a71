package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/tenant"
)

func (a *API) eventRoutes() {
	a.Handle("GET /api/v1/tenants/{tenant}/events", tenant.PermRead, ScopeTenant, "List a tenant's security events", a.listEvents)
	a.Handle("GET /api/v1/events", tenant.PermRead, ScopeGlobal, "List security events of every tenant and those of none", a.listEvents)
}

// SecurityEvent is the JSON form of an aggregated security event.
type SecurityEvent struct {
	ID       int64     `json:"id"`
	Tenant   string    `json:"tenant,omitempty"`
	Type     string    `json:"type"`
	Severity string    `json:"severity"`
	Device   string    `json:"device,omitempty"`
	Remote   string    `json:"remote,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Detail   string    `json:"detail,omitempty"`
	FirstAt  time.Time `json:"first_at"`
	LastAt   time.Time `json:"last_at"`
	Count    int64     `json:"count"`
}

func (a *API) listEvents(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	q := r.URL.Query()
	f := store.EventFilter{Tenant: r.PathValue("tenant"), Type: q.Get("type"), Device: q.Get("device"), Limit: 1000}
	if f.Tenant == "" {
		f.AnyTenant = true
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 10000 {
			return Invalid(errors.New("limit must be between 1 and 10000"))
		}
		f.Limit = n
	}
	if a.d.Monitor != nil {
		// Show what was reported up to now, not what is still queued.
		_ = a.d.Monitor.Flush(r.Context())
	}
	evs, err := a.d.Store.ListEvents(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]SecurityEvent, 0, len(evs))
	for _, e := range evs {
		out = append(out, SecurityEvent{ID: e.ID, Tenant: e.Tenant, Type: e.Type, Severity: e.Severity, Device: e.Device,
			Remote: e.Remote, Reason: e.Reason, Detail: e.Detail, FirstAt: e.FirstAt, LastAt: e.LastAt, Count: e.Count})
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

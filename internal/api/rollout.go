package api

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"time"

	"github.com/wardiot/ward/internal/tenant"
)

// Rollouts is what the rollout routes need from the server.
type Rollouts interface {
	// CreateRollout parses a YAML rollout spec, selects the fleet and
	// stores the rollout (running at once unless approval is required).
	CreateRollout(ctx context.Context, actor, tenant string, specYAML []byte) (*RolloutStatus, error)
	// RolloutCommand applies an operator command (approve, pause, resume,
	// abort) with a free-text reason.
	RolloutCommand(ctx context.Context, actor, tenant, id, command, reason string) (*RolloutStatus, error)
	// RolloutStatus returns a rollout's progress.
	RolloutStatus(ctx context.Context, tenant, id string) (*RolloutStatus, error)
	// ListRollouts lists the tenant's rollouts.
	ListRollouts(ctx context.Context, tenant string) ([]RolloutStatus, error)
}

// RolloutRequest is the body of a rollout creation: the YAML spec, as
// `ward rollout create -f spec.yaml` reads it.
type RolloutRequest struct {
	Spec string `json:"spec"`
}

// RolloutCommandRequest is the body of approve, pause, resume and abort.
type RolloutCommandRequest struct {
	Reason string `json:"reason,omitempty"`
}

// RolloutStatus is a rollout's progress, with per-phase counts.
type RolloutStatus struct {
	ID       string          `json:"id"`
	Release  string          `json:"release"`
	State    string          `json:"state"`
	Reason   string          `json:"reason,omitempty"`
	Creator  string          `json:"creator"`
	Approver string          `json:"approver,omitempty"`
	Phase    int             `json:"phase"` // index into Phases
	Phases   []RolloutPhase  `json:"phases"`
	Devices  int             `json:"devices"`
	Updated  time.Time       `json:"updated,omitzero"`
	Failures []RolloutDevice `json:"failures,omitempty"`
}

// RolloutPhase counts one phase's devices by state.
type RolloutPhase struct {
	Name       string `json:"name"`
	Percent    int    `json:"percent"`
	Devices    int    `json:"devices"`
	Pending    int    `json:"pending"`
	InProgress int    `json:"in_progress"`
	Succeeded  int    `json:"succeeded"`
	Failed     int    `json:"failed"`
	RolledBack int    `json:"rolled_back"`
	TimedOut   int    `json:"timed_out"`
}

// RolloutDevice is a device that did not succeed.
type RolloutDevice struct {
	Device string `json:"device"`
	State  string `json:"state"`
}

// rolloutIDRE is the shape of the IDs the server gives rollouts.
var rolloutIDRE = regexp.MustCompile(`^ro-[0-9a-f]{16}$`)

// maxRolloutReason bounds an operator's reason (it goes to the audit log).
const maxRolloutReason = 512

func (a *API) rolloutRoutes() {
	a.Handle("POST /api/v1/tenants/{tenant}/rollouts", tenant.PermWrite, ScopeTenant, "Create a rollout from a YAML spec", a.createRollout)
	a.Handle("GET /api/v1/tenants/{tenant}/rollouts", tenant.PermRead, ScopeTenant, "List rollouts", a.listRollouts)
	a.Handle("GET /api/v1/tenants/{tenant}/rollouts/{id}", tenant.PermRead, ScopeTenant, "A rollout's progress with per-phase counts", a.getRollout)
	for _, c := range []string{"approve", "pause", "resume", "abort"} {
		a.Handle("POST /api/v1/tenants/{tenant}/rollouts/{id}/"+c, tenant.PermWrite, ScopeTenant, "Rollout command: "+c, a.rolloutCommand(c))
	}
}

func (a *API) createRollout(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	var req RolloutRequest
	if err := Decode(w, r, &req); err != nil {
		return err
	}
	if req.Spec == "" {
		return Invalid(errors.New("body must be {\"spec\": \"<rollout spec YAML>\"}"))
	}
	st, err := a.d.Rollouts.CreateRollout(r.Context(), p.Actor(), r.PathValue("tenant"), []byte(req.Spec))
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusCreated, st)
	return nil
}

func (a *API) listRollouts(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	rs, err := a.d.Rollouts.ListRollouts(r.Context(), r.PathValue("tenant"))
	if err != nil {
		return err
	}
	if rs == nil {
		rs = []RolloutStatus{}
	}
	WriteJSON(w, http.StatusOK, rs)
	return nil
}

func rolloutID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !rolloutIDRE.MatchString(id) {
		return "", &Error{Status: http.StatusNotFound, Title: "Not found", Detail: "no such rollout; see ward rollout list"}
	}
	return id, nil
}

func (a *API) getRollout(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
	id, err := rolloutID(r)
	if err != nil {
		return err
	}
	st, err := a.d.Rollouts.RolloutStatus(r.Context(), r.PathValue("tenant"), id)
	if err != nil {
		return err
	}
	WriteJSON(w, http.StatusOK, st)
	return nil
}

func (a *API) rolloutCommand(cmd string) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, p *tenant.Principal) error {
		id, err := rolloutID(r)
		if err != nil {
			return err
		}
		var req RolloutCommandRequest
		if r.ContentLength != 0 {
			if err := Decode(w, r, &req); err != nil {
				return err
			}
		}
		if len(req.Reason) > maxRolloutReason {
			return Invalid(errors.New("reason is longer than 512 bytes"))
		}
		st, err := a.d.Rollouts.RolloutCommand(r.Context(), p.Actor(), r.PathValue("tenant"), id, cmd, req.Reason)
		if err != nil {
			return err
		}
		WriteJSON(w, http.StatusOK, st)
		return nil
	}
}

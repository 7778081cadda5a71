package server

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/wardiot/ward/internal/audit"
	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/policy"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/wire"
)

// policySet answers the gateway's "which policy applies" from memory: a
// device's own assignment, else its group's, else the built-in default.
type policySet struct {
	s      *Server
	mu     sync.RWMutex
	docs   map[string]*policy.Policy // tenant/name
	device map[string]string         // tenant/device -> name
	group  map[string]string         // tenant/group -> name
}

var _ broker.Policies = (*policySet)(nil)

func (p *policySet) load(ctx context.Context) error {
	docs, dev, grp := map[string]*policy.Policy{}, map[string]string{}, map[string]string{}
	err := p.s.store.ForEachPolicy(ctx, func(d *store.PolicyDoc) error {
		pol, err := policy.Parse(d.Doc)
		if err != nil {
			return fmt.Errorf("stored policy %s/%s: %w", d.Tenant, d.Name, err)
		}
		docs[d.Tenant+"/"+d.Name] = pol
		return nil
	})
	if err != nil {
		return err
	}
	err = p.s.store.ForEachPolicyAssignment(ctx, func(a *store.PolicyAssignment) error {
		if a.Kind == "device" {
			dev[a.Tenant+"/"+a.Target] = a.Policy
		} else {
			grp[a.Tenant+"/"+a.Target] = a.Policy
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.docs, p.device, p.group = docs, dev, grp
	p.mu.Unlock()
	return nil
}

func (p *policySet) For(id broker.Identity) *policy.Policy {
	if id.Kind != broker.KindDevice {
		return nil
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	name, ok := p.device[id.Tenant+"/"+id.Device]
	if !ok {
		if g := p.s.Fleet.Group(id.Tenant, id.Device); g != "" {
			name, ok = p.group[id.Tenant+"/"+g]
		}
	}
	if !ok {
		return nil
	}
	return p.docs[id.Tenant+"/"+name]
}

// ErrNoPolicy means a named policy does not exist.
var ErrNoPolicy = errors.New("no such policy")

// PutPolicy stores a validated policy document and reconnects the devices
// it applies to, since policies are bound when a session starts.
func (s *Server) PutPolicy(ctx context.Context, actor, tenant, name string, doc []byte) error {
	if err := wire.ValidateTenantID(name); err != nil {
		return fmt.Errorf("policy name: %w", err)
	}
	if _, err := policy.Parse(doc); err != nil {
		return err
	}
	err := s.store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.PutPolicy(ctx, &store.PolicyDoc{Tenant: tenant, Name: name, Doc: doc, UpdatedAt: s.now().UTC()}); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, s.now(), audit.Entry{Actor: actor, Action: "policy.put", Target: "policy:" + name, Tenant: tenant})
		return err
	})
	if err != nil {
		return err
	}
	return s.policiesChanged(ctx, tenant)
}

// DeletePolicy deletes a policy and its assignments.
func (s *Server) DeletePolicy(ctx context.Context, actor, tenant, name string) error {
	err := s.store.InTx(ctx, func(tx store.Tx) error {
		if err := tx.DeletePolicy(ctx, tenant, name); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: %s", ErrNoPolicy, name)
			}
			return err
		}
		_, err := audit.Append(ctx, tx, s.now(), audit.Entry{Actor: actor, Action: "policy.delete", Target: "policy:" + name, Tenant: tenant})
		return err
	})
	if err != nil {
		return err
	}
	return s.policiesChanged(ctx, tenant)
}

// AssignPolicy binds (or with name "" unbinds) a policy to a device or a
// group.
func (s *Server) AssignPolicy(ctx context.Context, actor, tenant, kind, target, name string) error {
	switch kind {
	case "device":
		if err := wire.ValidateDeviceID(target); err != nil {
			return err
		}
	case "group":
		if err := wire.ValidateTenantID(target); err != nil {
			return fmt.Errorf("group: %w", err)
		}
	default:
		return errors.New("assignments are for a device or a group")
	}
	err := s.store.InTx(ctx, func(tx store.Tx) error {
		if name != "" {
			ps, err := tx.ListPolicies(ctx, tenant)
			if err != nil {
				return err
			}
			found := false
			for _, p := range ps {
				found = found || p.Name == name
			}
			if !found {
				return fmt.Errorf("%w: %s", ErrNoPolicy, name)
			}
		}
		if err := tx.AssignPolicy(ctx, &store.PolicyAssignment{Tenant: tenant, Kind: kind, Target: target, Policy: name}); err != nil {
			return err
		}
		_, err := audit.Append(ctx, tx, s.now(), audit.Entry{Actor: actor, Action: "policy.assign", Target: kind + ":" + target,
			Tenant: tenant, Detail: "policy=" + name})
		return err
	})
	if err != nil {
		return err
	}
	return s.policiesChanged(ctx, tenant)
}

// policiesChanged reloads the cache and cuts the tenant's device sessions
// whose policy may have changed; devices reconnect under the new policy.
func (s *Server) policiesChanged(ctx context.Context, tenant string) error {
	if err := s.policies.load(ctx); err != nil {
		return err
	}
	ds, err := s.store.ListDevices(ctx, store.DeviceFilter{Tenant: tenant, Limit: 10000})
	if err != nil {
		return err
	}
	for _, d := range ds {
		s.Gateway.Disconnect(tenant, d.ID, "topic policy changed")
	}
	return nil
}

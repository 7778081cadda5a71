package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/twin"
	"github.com/wardiot/ward/wire"
)

// twinStore keeps twins in the store as JSON documents.
type twinStore struct{ s store.Store }

func (t twinStore) Get(ctx context.Context, tenant, device, name string) (*twin.Twin, error) {
	doc, rev, err := t.s.GetTwin(ctx, tenant, device, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, twin.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	var tw twin.Twin
	if err := json.Unmarshal(doc, &tw); err != nil {
		return nil, fmt.Errorf("stored twin %s/%s/%s: %w", tenant, device, name, err)
	}
	tw.Revision = rev
	return &tw, nil
}

func (t twinStore) Put(ctx context.Context, tw *twin.Twin, expect uint64) error {
	doc, err := json.Marshal(tw)
	if err != nil {
		return err
	}
	err = t.s.InTx(ctx, func(tx store.Tx) error { return tx.PutTwin(ctx, tw.Tenant, tw.Device, tw.Name, doc, expect) })
	if errors.Is(err, store.ErrConflict) {
		return twin.ErrVersionConflict
	}
	return err
}

// pushDelta sends the twin's delta to the device if it is connected and
// desired and reported differ. Offline devices get it when they ask
// (twin/get) after reconnecting: one delta, whatever changed meanwhile.
func (s *Server) pushDelta(tw *twin.Twin) {
	m, err := tw.DeltaMessage()
	if err != nil || m == nil {
		return
	}
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	_ = s.Gateway.Publish(tw.Tenant, tw.Device, wire.TopicTwinDelta, b, 1)
}

// PatchDesired applies an operator's patch and pushes the delta.
func (s *Server) PatchDesired(ctx context.Context, tenant, device, name string, patch []byte, ifMatch uint64) (*twin.Twin, error) {
	tw, err := s.Twins.PatchDesired(ctx, tenant, device, name, patch, ifMatch)
	if err != nil {
		return nil, err
	}
	s.pushDelta(tw)
	return tw, nil
}

// GetTwin returns a twin (an empty one if never written).
func (s *Server) GetTwin(ctx context.Context, tenant, device, name string) (*twin.Twin, error) {
	return s.Twins.Get(ctx, tenant, device, name)
}

// ingestTwinReported applies a device's reported-state patch; if desired
// and reported still differ, the device gets the remaining delta.
func (s *Server) ingestTwinReported(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	m, err := wire.ParseTwinReported(payload)
	if err != nil {
		return err
	}
	var ifMatch uint64 = twin.AnyVersion
	if m.IfMatch != nil {
		ifMatch = *m.IfMatch
	}
	tw, err := s.Twins.PatchReported(ctx, id.Tenant, id.Device, m.Twin, m.Patch, ifMatch)
	if err != nil {
		return err
	}
	s.pushDelta(tw)
	return nil
}

// twinGet is the payload of twin/get.
type twinGet struct {
	Twin string `json:"twin"`
}

// ingestTwinGet answers a device that (re)connected: the full desired
// document, then the delta against what it last reported.
func (s *Server) ingestTwinGet(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	req := twinGet{Twin: wire.DefaultTwinName}
	if len(payload) > 0 {
		if len(payload) > 256 || json.Unmarshal(payload, &req) != nil {
			return errors.New("twin/get: payload must be {\"twin\": NAME}")
		}
	}
	if err := wire.ValidateTwinName(req.Twin); err != nil {
		return err
	}
	tw, err := s.Twins.Get(ctx, id.Tenant, id.Device, req.Twin)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(tw.DesiredMessage())
	if err := s.Gateway.Publish(id.Tenant, id.Device, wire.TopicTwinDesired, b, 1); err != nil {
		return err
	}
	s.pushDelta(tw)
	return nil
}

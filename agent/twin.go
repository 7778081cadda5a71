package agent

import (
	"encoding/json"
	"fmt"

	"github.com/wardiot/ward/wire"
)

// TwinApplier applies the part of the desired state that differs from
// what the device last reported (a JSON object), and returns the patch to
// report back: usually the same keys with the values now in effect. An
// error leaves the reported state unchanged; the delta comes again on the
// next change or reconnect.
type TwinApplier func(delta json.RawMessage) (reported json.RawMessage, err error)

// SyncTwin keeps a twin in step: it subscribes to the twin's deltas, asks
// the server for the current state (so a device that was offline gets one
// delta covering every change it missed), applies each delta with apply
// and reports the result.
func (c *Conn) SyncTwin(name string, apply TwinApplier) error {
	if name == "" {
		name = wire.DefaultTwinName
	}
	if err := wire.ValidateTwinName(name); err != nil {
		return err
	}
	err := c.Subscribe(wire.TopicTwinDelta, func(_ string, payload []byte) {
		var d wire.TwinDelta
		if len(payload) > wire.MaxTwinMessageSize || json.Unmarshal(payload, &d) != nil || d.Twin != name {
			return
		}
		rep, err := apply(d.Delta)
		if err != nil {
			c.a.log.Warn("twin delta not applied", "twin", name, "err", err)
			return
		}
		b, err := json.Marshal(wire.TwinReported{Twin: name, Patch: rep})
		if err != nil {
			return
		}
		if err := c.Publish(wire.TopicTwinReported, b, 1); err != nil {
			c.a.log.Warn("twin report failed", "twin", name, "err", err)
		}
	})
	if err != nil {
		return err
	}
	b, _ := json.Marshal(map[string]string{"twin": name})
	if err := c.Publish(wire.TopicTwinGet, b, 1); err != nil {
		return fmt.Errorf("agent: ask for the twin: %w", err)
	}
	return nil
}

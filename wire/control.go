package wire

import (
	"encoding/json"
	"fmt"
)

// Control messages go server -> device on ward/v1/<device>/control.
const (
	// ControlMACSecret hands the device its telemetry MAC secret (over
	// the mutually authenticated TLS session only) and the epoch to use.
	ControlMACSecret = "mac_secret"
	// ControlMACEpoch announces a new epoch: derive its key from the
	// secret you have.
	ControlMACEpoch = "mac_epoch"
)

// TopicMACGet is published by a device (empty payload) to be sent its MAC
// secret and current epoch on the control topic.
const TopicMACGet = "mac/get"

// MaxControlSize bounds a control message.
const MaxControlSize = 4 << 10

// Control is a control message.
type Control struct {
	Type   string `json:"type"`
	Epoch  uint64 `json:"epoch,omitempty"`
	Secret []byte `json:"secret,omitempty"`
}

// ParseControl decodes a control message.
func ParseControl(b []byte) (*Control, error) {
	if len(b) > MaxControlSize {
		return nil, fmt.Errorf("control message of %d bytes is over %d", len(b), MaxControlSize)
	}
	var c Control
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	if c.Type == "" {
		return nil, fmt.Errorf("control message without a type")
	}
	return &c, nil
}

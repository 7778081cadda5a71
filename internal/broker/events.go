package broker

import "time"

// Event is a security-relevant fact the gateway observed. Tenant and Device
// are set only when they come from a verified certificate, never from what
// a client claims.
type Event struct {
	Type   string
	Tenant string
	Device string
	Remote string
	Reason string
	Time   time.Time
}

// Event types.
const (
	EventHandshakeFailed  = "tls.handshake_failed"
	EventClientIDMismatch = "mqtt.client_id_mismatch"
	EventConnectRefused   = "mqtt.connect_refused"
	EventPacketTooLarge   = "mqtt.packet_too_large"
	EventPolicyDenied     = "policy.denied"
	EventRateLimited      = "ratelimit.exceeded"
	EventCertShared       = "cert.shared"
	EventDisconnected     = "mqtt.disconnected_by_ward"
)

// Handshake failure reasons (Event.Reason for EventHandshakeFailed).
const (
	ReasonUnknownCA      = "unknown_ca"
	ReasonExpired        = "expired"
	ReasonNotYetValid    = "not_yet_valid"
	ReasonWrongKeyUsage  = "wrong_key_usage"
	ReasonBadIdentity    = "bad_identity"
	ReasonTenantMismatch = "tenant_mismatch"
	ReasonRevoked        = "revoked"
	ReasonDisabled       = "disabled"
	ReasonDecommissioned = "decommissioned"
	ReasonUnknownID      = "unknown_identity"
	ReasonNoClientCert   = "no_client_cert"
	ReasonTimeout        = "timeout"
	ReasonProtocol       = "protocol"
	ReasonOverloaded     = "overloaded"
)

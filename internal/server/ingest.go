package server

import (
	"context"

	"github.com/wardiot/ward/internal/broker"
	"github.com/wardiot/ward/wire"
)

// ingestHandlers maps a device's topic subtree to the part that consumes
// it. Telemetry and twins are wired in their own files.
func (s *Server) ingestHandlers() map[string]func(ctx context.Context, id broker.Identity, rest string, payload []byte) error {
	h := map[string]func(ctx context.Context, id broker.Identity, rest string, payload []byte) error{
		wire.TopicTelemetry:    s.ingestTelemetry,
		wire.TopicTwinReported: s.ingestTwinReported,
		wire.TopicTwinGet:      s.ingestTwinGet,
		wire.TopicMACGet:       s.ingestMACGet,
		// Attestation (attestation.go).
		wire.TopicAttestReply:    s.ingestAttestReply,
		wire.TopicAttestEnroll:   s.ingestAttestEnroll,
		wire.TopicAttestActivate: s.ingestAttestActivate,
		wire.TopicAttestRenewal:  s.ingestAttestRenewal,
		// OTA (ota.go).
		wire.TopicOTAStatus: s.ingestOTAStatus,
		wire.TopicOTAGet:    s.ingestOTAGet,
	}
	return h
}

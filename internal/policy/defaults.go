package policy

import "github.com/wardiot/ward/wire"

// Default returns the policy every device gets unless its tenant says
// otherwise: it publishes only its own telemetry, reported twin state,
// attestation evidence, OTA status and job requests, and subscribes only to its own
// subtree.
func Default() *Policy {
	return mustNew(Document{
		Version: 1,
		Publish: Rules{Allow: []string{
			own(wire.TopicTelemetry + "/#"),
			own(wire.TopicTwinReported),
			own(wire.TopicTwinGet),
			own(wire.TopicMACGet),
			own(wire.TopicAttestReply),
			own(wire.TopicAttestEnroll),
			own(wire.TopicAttestActivate),
			own(wire.TopicAttestRenewal),
			own(wire.TopicOTAStatus),
			own(wire.TopicOTAGet),
		}},
		Subscribe: Rules{Allow: []string{own("#")}},
	})
}

// Quarantine returns the policy of a quarantined device: it may only prove
// itself again (attestation) and be repaired (OTA), nothing else.
func Quarantine() *Policy {
	return mustNew(Document{
		Version: 1,
		Publish: Rules{Allow: []string{
			own(wire.TopicAttestReply),
			own(wire.TopicAttestEnroll),
			own(wire.TopicAttestActivate),
			own(wire.TopicAttestRenewal),
			own(wire.TopicOTAStatus),
			own(wire.TopicOTAGet),
		}},
		Subscribe: Rules{Allow: []string{
			own("attest/#"),
			own("ota/#"),
		}},
	})
}

// ServiceReadOnly returns the default policy of a backend service: it may
// subscribe to every device's verified telemetry in its tenant and publish
// nothing.
func ServiceReadOnly() *Policy {
	return mustNew(Document{
		Version:   1,
		Subscribe: Rules{Allow: []string{wire.TopicRoot + "+/" + wire.TopicTelemetry + "/#"}},
	})
}

func own(suffix string) string {
	return wire.TopicRoot + "${device}/" + suffix
}

func mustNew(doc Document) *Policy {
	p, err := New(doc)
	if err != nil {
		panic("policy: built-in policy is invalid: " + err.Error())
	}
	return p
}

package wire

// Device topics. Every topic a device may use lives under its own subtree,
// ward/v1/<device>/..., inside its tenant's namespace. The gateway maps the
// tenant namespace; devices never name a tenant in a topic.
const TopicRoot = "ward/v1/"

// Subtrees of a device's topic space.
const (
	TopicTelemetry     = "telemetry"      // device -> server: .../telemetry/<stream>
	TopicTwinReported  = "twin/reported"  // device -> server
	TopicTwinGet       = "twin/get"       // device -> server: send me the current desired state and delta
	TopicTwinDesired   = "twin/desired"   // server -> device (full document)
	TopicTwinDelta     = "twin/delta"     // server -> device
	TopicAttestRequest = "attest/request" // server -> device (challenge)
	TopicAttestReply   = "attest/reply"   // device -> server (evidence)
	// AK enrollment and renewal attestation (see AKEnrollRequest,
	// AttestRenewalRequest): separate topics, so neither side has to
	// guess what a message is.
	TopicAttestEnroll     = "attest/enroll"     // device -> server (AKEnrollRequest)
	TopicAttestActivate   = "attest/activate"   // device -> server (AKActivationResponse)
	TopicAttestRenewal    = "attest/renewal"    // device -> server (AttestRenewalRequest)
	TopicAttestActivation = "attest/activation" // server -> device (AKActivationChallenge)
	TopicAttestVerdict    = "attest/verdict"    // server -> device (AttestVerdict)
	TopicOTAJob           = "ota/job"           // server -> device
	TopicOTAStatus        = "ota/status"        // device -> server
	// TopicOTAGet asks the server to send again the job the device should
	// be running (it was offline when it was published). The payload is
	// empty or "{}".
	TopicOTAGet  = "ota/get" // device -> server
	TopicControl = "control" // server -> device (epochs, commands)
)

// DeviceTopic returns ward/v1/<device>/<suffix>.
func DeviceTopic(device, suffix string) string {
	return TopicRoot + device + "/" + suffix
}

// DeviceSubtree returns the filter that matches every topic of a device.
func DeviceSubtree(device string) string {
	return TopicRoot + device + "/#"
}

package wire

import (
	"fmt"
	"strings"
)

// Device token authentication over HTTPS, for devices that post instead of
// holding an MQTT session: an OAuth 2.0 token endpoint (RFC 6749 §4.4
// client credentials with RFC 7523 private_key_jwt client authentication)
// and the device API the access tokens open.
const (
	// TokenPath is the OAuth 2.0 token endpoint.
	TokenPath = "/oauth/token"
	// DeviceTelemetryPrefix is followed by a stream name:
	// POST /api/device/v1/telemetry/<stream> with a COSE envelope body.
	DeviceTelemetryPrefix = "/api/device/v1/telemetry/"

	// ClientAssertionType is the client_assertion_type of RFC 7523 §2.2.
	ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// GrantClientCredentials and GrantRefreshToken are the grant types the
	// token endpoint accepts.
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"

	// ContentTypeCOSE is the media type of a telemetry envelope body.
	ContentTypeCOSE = "application/cose"
)

// DeviceClientID is a device's OAuth client_id, and the iss and sub of its
// client assertions: "<tenant>/<device>". Neither ID may contain '/', so
// the split is unambiguous.
func DeviceClientID(tenant, device string) string {
	return tenant + "/" + device
}

// ParseDeviceClientID is the inverse of [DeviceClientID]. It validates
// both IDs.
func ParseDeviceClientID(s string) (tenant, device string, err error) {
	tenant, device, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", fmt.Errorf("%w: client ID %q is not <tenant>/<device>", ErrInvalidID, truncate(s))
	}
	if err := ValidateTenantID(tenant); err != nil {
		return "", "", err
	}
	if err := ValidateDeviceID(device); err != nil {
		return "", "", err
	}
	return tenant, device, nil
}

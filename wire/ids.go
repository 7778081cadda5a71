package wire

import (
	"errors"
	"fmt"
	"strings"
)

// Limits on identifiers. They bound the size of topics, URIs and database
// keys built from them, and keep them free of MQTT and URI metacharacters.
const (
	MaxTenantIDLen = 63
	MaxDeviceIDLen = 128
)

// ErrInvalidID is wrapped by every identifier validation error.
var ErrInvalidID = errors.New("invalid identifier")

// ValidateTenantID reports whether s is a valid tenant ID: 1 to 63
// characters of lower-case letters, digits and '-', starting with a letter
// or digit. Tenant IDs appear in URIs, EST labels and topic namespaces.
func ValidateTenantID(s string) error {
	if len(s) == 0 || len(s) > MaxTenantIDLen {
		return fmt.Errorf("%w: tenant ID must be 1 to %d characters", ErrInvalidID, MaxTenantIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0)
		if !ok {
			return fmt.Errorf("%w: tenant ID %q may hold only a-z, 0-9 and '-' (not first)", ErrInvalidID, truncate(s))
		}
	}
	return nil
}

// ValidateDeviceID reports whether s is a valid device ID: 1 to 128
// characters of letters, digits, '.', '_' and '-', starting with a letter or
// digit. The set excludes '/', '+', '#', '$' and ':' so that a device ID can
// never widen an MQTT topic filter or confuse the URI SAN parser.
func ValidateDeviceID(s string) error {
	if len(s) == 0 || len(s) > MaxDeviceIDLen {
		return fmt.Errorf("%w: device ID must be 1 to %d characters", ErrInvalidID, MaxDeviceIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return fmt.Errorf("%w: device ID %q may hold only letters, digits, '.', '_' and '-' (starting with a letter or digit)", ErrInvalidID, truncate(s))
		}
	}
	return nil
}

// DeviceURI is the URI SAN that identifies a device in its certificate:
// urn:ward:<tenant>:device:<device>.
func DeviceURI(tenant, device string) string {
	return "urn:ward:" + tenant + ":device:" + device
}

// ParseDeviceURI is the inverse of [DeviceURI]. It validates both IDs.
func ParseDeviceURI(uri string) (tenant, device string, err error) {
	rest, ok := strings.CutPrefix(uri, "urn:ward:")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not a Ward device URI", ErrInvalidID, truncate(uri))
	}
	tenant, rest, ok = strings.Cut(rest, ":")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not a Ward device URI", ErrInvalidID, truncate(uri))
	}
	device, ok = strings.CutPrefix(rest, "device:")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not a Ward device URI", ErrInvalidID, truncate(uri))
	}
	if err := ValidateTenantID(tenant); err != nil {
		return "", "", err
	}
	if err := ValidateDeviceID(device); err != nil {
		return "", "", err
	}
	return tenant, device, nil
}

// truncate keeps error messages bounded when they quote untrusted input.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

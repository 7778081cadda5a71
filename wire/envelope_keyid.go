package wire

import "crypto/sha256"

// TelemetryKeyIDLen is the length of the key ID a device puts in the kid
// header of a COSE_Sign1 envelope.
const TelemetryKeyIDLen = 8

// TelemetryKeyID is the kid of a signing key: the first 8 bytes of the
// SHA-256 of its DER SubjectPublicKeyInfo. The server finds the key among
// the device's certificates by it, which lets a device's messages signed
// with the previous key verify during a renewal.
func TelemetryKeyID(spkiDER []byte) []byte {
	sum := sha256.Sum256(spkiDER)
	return sum[:TelemetryKeyIDLen]
}

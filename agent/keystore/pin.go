package keystore

import (
	"bytes"
	"fmt"
)

// maxPINFileSize bounds a PIN file: PINs are short, and the file is read
// whole before the token is opened.
const maxPINFileSize = 1 << 10

// readPINFile reads a PKCS#11 PIN from path, refusing files that group or
// others can access. One trailing newline (or CRLF) is dropped.
func readPINFile(path string) (string, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return "", fmt.Errorf("keystore: pin-source: %w", err)
	}
	if len(data) > maxPINFileSize {
		return "", fmt.Errorf("keystore: pin-source: larger than %d bytes", maxPINFileSize)
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	if len(data) == 0 {
		return "", fmt.Errorf("keystore: pin-source: file is empty")
	}
	return string(data), nil
}

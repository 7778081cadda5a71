// Package pkcs11 is a [pki.KeyManager] that keeps CA keys inside a PKCS#11
// token (an HSM, or SoftHSM in tests). Keys are generated in the token as
// sensitive and non-extractable; the server only ever holds handles.
//
// It needs cgo (the token is a C library); a binary built without cgo gets
// a clear error from [Open].
package pkcs11

import (
	"errors"
	"fmt"
	"log/slog"
)

// Config says which token to use.
type Config struct {
	// Module is the path of the PKCS#11 library, e.g.
	// /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel selects the token.
	TokenLabel string
	// PIN is the user PIN. It is never logged nor put in errors.
	PIN string
}

// String redacts the PIN so that a Config printed by mistake leaks nothing.
func (c Config) String() string {
	return fmt.Sprintf("pkcs11.Config{Module: %q, TokenLabel: %q, PIN: [redacted]}", c.Module, c.TokenLabel)
}

// LogValue redacts the PIN in structured logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("module", c.Module), slog.String("token", c.TokenLabel))
}

// Validate reports every missing field.
func (c Config) Validate() error {
	var errs []error
	if c.Module == "" {
		errs = append(errs, errors.New("pkcs11: Module (path of the PKCS#11 library) is required"))
	}
	if c.TokenLabel == "" {
		errs = append(errs, errors.New("pkcs11: TokenLabel is required"))
	}
	if c.PIN == "" {
		errs = append(errs, errors.New("pkcs11: PIN is required"))
	}
	return errors.Join(errs...)
}

// ErrNoCgo is returned by Open in binaries built without cgo.
var ErrNoCgo = errors.New("pkcs11: this binary was built without cgo; PKCS#11 key storage needs a cgo build (CGO_ENABLED=1)")

// ref format: version byte, then the CKA_ID (16 bytes), then the label.
const (
	refVersion = 1
	idLen      = 16
	// maxRef bounds refs read back from the database.
	maxRef = 1 + idLen + 256
)

func encodeRef(id []byte, label string) []byte {
	out := make([]byte, 0, 1+len(id)+len(label))
	out = append(out, refVersion)
	out = append(out, id...)
	return append(out, label...)
}

func decodeRef(ref []byte) (id []byte, label string, err error) {
	if len(ref) < 1+idLen || len(ref) > maxRef || ref[0] != refVersion {
		return nil, "", errors.New("pkcs11: malformed key reference")
	}
	return ref[1 : 1+idLen], string(ref[1+idLen:]), nil
}

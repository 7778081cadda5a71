//go:build !cgo

package keystore

import "errors"

func openPKCS11(Spec, options) (Keystore, error) {
	return nil, errors.New("keystore: pkcs11 keystores need a binary built with cgo (CGO_ENABLED=1 and a C compiler); use file: or tpm: instead")
}

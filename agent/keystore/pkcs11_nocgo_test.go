//go:build !cgo

package keystore

import (
	"strings"
	"testing"
)

const haveCgo = false

func TestPKCS11WithoutCgo(t *testing.T) {
	_, err := Open("pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=t;pin=1234")
	if err == nil || !strings.Contains(err.Error(), "cgo") || strings.Contains(err.Error(), "1234") {
		t.Fatalf("err = %v, want a cgo explanation without the PIN", err)
	}
}

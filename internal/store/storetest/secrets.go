package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/wardiot/ward/internal/store"
)

func init() { extra["secrets/device-mac"] = testSecrets }

func testSecrets(t *testing.T, s store.Store) {
	if _, err := s.GetDeviceSecret(ctx, "acme", "d1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing secret: %v", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	mustTx(t, s, func(tx store.Tx) error {
		return tx.PutDeviceSecret(ctx, &store.DeviceSecret{Tenant: "acme", Device: "d1", Sealed: []byte("s1"), Epoch: 1, Since: now})
	})
	mustTx(t, s, func(tx store.Tx) error {
		return tx.PutDeviceSecret(ctx, &store.DeviceSecret{Tenant: "acme", Device: "d1", Sealed: []byte("s2"), PrevSealed: []byte("s1"), Epoch: 2, Since: now})
	})
	d, err := s.GetDeviceSecret(ctx, "acme", "d1")
	if err != nil || string(d.Sealed) != "s2" || string(d.PrevSealed) != "s1" || d.Epoch != 2 || !d.Since.Equal(now) {
		t.Fatalf("secret %+v %v", d, err)
	}
}

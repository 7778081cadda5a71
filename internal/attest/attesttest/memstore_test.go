package attesttest

import (
	"context"
	"testing"

	"github.com/wardiot/ward/internal/attest"
)

func TestMemStore(t *testing.T) {
	RunStoreTests(t, func(t *testing.T) Subject {
		s := New()
		return Subject{Store: s, SetPolicy: func(_ context.Context, tenant, group string, p attest.Policy) error {
			s.SetPolicy(tenant, group, p)
			return nil
		}}
	})
}

package postgres_test

import (
	"testing"

	"github.com/wardiot/ward/internal/store"
	"github.com/wardiot/ward/internal/store/storetest"
)

// TestConformance runs the store suite against a real PostgreSQL named by
// WARD_TEST_POSTGRES (CI sets it to the local server). Each subtest gets
// its own schema, dropped afterwards.
func TestConformance(t *testing.T) {
	storetest.PostgresDSN(t)
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.Postgres(t) })
}

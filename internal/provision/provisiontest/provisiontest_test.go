package provisiontest

import (
	"testing"

	"github.com/wardiot/ward/internal/provision"
)

func TestMemoryStoreConformance(t *testing.T) {
	RunStoreTests(t, func(*testing.T) provision.Store { return NewStore() })
}

package otatest

import (
	"testing"

	"github.com/wardiot/ward/internal/ota"
	"github.com/wardiot/ward/internal/ota/rollout"
	"github.com/wardiot/ward/internal/ota/tufrepo"
)

func TestMemMetadata(t *testing.T) {
	RunMetadataStoreTests(t, func(t *testing.T) tufrepo.Store { return tufrepo.NewMemStore() })
}

func TestDirMetadata(t *testing.T) {
	RunMetadataStoreTests(t, func(t *testing.T) tufrepo.Store { return tufrepo.DirStore{Dir: t.TempDir()} })
}

func TestMemRollouts(t *testing.T) {
	RunRolloutStoreTests(t, func(t *testing.T) rollout.Store { return &rollout.MemStore{} })
}

func TestMemFloors(t *testing.T) {
	RunFloorsTests(t, func(t *testing.T) ota.Floors { return &ota.MemFloors{} })
}

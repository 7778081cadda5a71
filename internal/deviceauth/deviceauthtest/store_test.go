package deviceauthtest

import (
	"testing"

	"github.com/wardiot/ward/internal/deviceauth"
)

func TestStoreConformance(t *testing.T) {
	RunStoreTests(t, func(*testing.T) deviceauth.Store { return NewStore() })
}

package agentcli

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"testing"

	"github.com/wardiot/ward/agent/keystore"
	"github.com/wardiot/ward/agent/keystore/tpmtest"
	agentota "github.com/wardiot/ward/agent/ota"
)

// TestTPMFloorThroughTheKeystore runs the anti-rollback floor on the TPM
// keystore's own connection (swtpm serves one at a time): the counter
// rises, never falls, and the device key still signs in between.
func TestTPMFloorThroughTheKeystore(t *testing.T) {
	sim := tpmtest.StartSim(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	ks, err := keystore.Open(sim.Spec(), keystore.WithStateDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	key, err := ks.Generate(t.Context(), "device-1", keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	floor, err := agentota.OpenTPMFloor(keystoreTPM{ks}, 0)
	if err != nil {
		t.Fatal(err)
	}
	start, err := floor.Floor()
	if err != nil || start < 1 {
		t.Fatalf("fresh floor %d, %v", start, err)
	}
	digest := sha256.Sum256([]byte("m"))
	for _, v := range []uint64{start + 2, start + 1} {
		if err := floor.Raise(v); err != nil {
			t.Fatal(err)
		}
		if _, err := key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
			t.Fatalf("signing after the floor moved: %v", err)
		}
	}
	if f, err := floor.Floor(); err != nil || f != start+2 {
		t.Fatalf("floor %d (%v), want %d", f, err, start+2)
	}
}

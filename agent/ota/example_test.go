package ota_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"

	"github.com/wardiot/ward/agent/ota"
	"github.com/wardiot/ward/wire"
)

// How ward-agent run wires the update engine: the client speaks to both
// repositories with the device's mTLS identity, the engine finishes what
// the last boot left, then handles jobs from ward/v1/<device>/ota/job.
func Example() {
	var (
		getCert      func(*tls.CertificateRequestInfo) (*tls.Certificate, error) // (*agent.Agent).GetClientCertificate
		imageRoot    []byte                                                      // saved at enrollment
		directorRoot []byte                                                      // saved at enrollment
		floorKey     []byte                                                      // 32-byte device secret
		publish      func(wire.OTAStatus)                                        // to ward/v1/<device>/ota/status
		jobs         <-chan wire.OTAJob                                          // from ward/v1/<device>/ota/job
	)
	client, err := ota.NewClient(ota.ClientConfig{
		Server:     "https://ward.example:8443",
		DeviceID:   "dev-0001",
		HardwareID: "board-rev2",
		ImageRoot:  imageRoot, DirectorRoot: directorRoot,
		CacheDir: "/var/lib/ward/ota/tuf",
		HTTPClient: &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{GetClientCertificate: getCert},
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	state := ota.DirFS("/var/lib/ward/ota")
	floor, err := ota.NewLogFloor(state, floorKey) // or ota.OpenTPMFloor
	if err != nil {
		log.Fatal(err)
	}
	engine, err := ota.New(ota.Config{
		FS: state, Source: client, Floor: floor,
		Booted: "a", // from the kernel command line
		Reboot: func() error { return exec.Command("systemctl", "reboot").Run() },
		Health: func(ctx context.Context) error {
			// e.g. stay connected for the job's HealthWindow.
			return nil
		},
		Report: publish,
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := engine.Start(ctx); err != nil {
		log.Print(err)
	}
	for job := range jobs {
		if err := engine.Handle(ctx, job); err != nil {
			log.Print(err)
		}
	}
}

// The bootloader side of a trial boot: the new slot is tried up to the
// boot limit, then the committed slot boots again.
func ExampleBoot() {
	dir, _ := os.MkdirTemp("", "bootenv")
	defer os.RemoveAll(dir)
	fsys := ota.DirFS(dir)
	ota.InitBootEnv(fsys, ota.SlotA)
	ota.WriteBootEnv(fsys, ota.BootEnv{Active: ota.SlotA, Try: ota.SlotB, UpgradeAvailable: true, BootLimit: 2})
	for range 3 {
		slot, _ := ota.Boot(fsys)
		env, _, _ := ota.ReadBootEnv(fsys)
		fmt.Printf("boot %s (bootcount %d)\n", slot, env.BootCount)
	}
	// Output:
	// boot b (bootcount 1)
	// boot b (bootcount 2)
	// boot a (bootcount 3)
}

// Without a TPM, the floor is a MACed hash chain; its head goes in every
// status report.
func ExampleLogFloor() {
	dir, _ := os.MkdirTemp("", "floor")
	defer os.RemoveAll(dir)
	key := make([]byte, 32) // a device secret in real use
	floor, _ := ota.NewLogFloor(ota.DirFS(dir), key)
	floor.Raise(3)
	floor.Raise(2) // never lowers
	v, _ := floor.Floor()
	fmt.Println(v, len(floor.Head()))
	// Output: 3 64
}

// Ward's custom target fields, as the Image repository signs them.
func ExampleParseCustom() {
	raw, _ := json.Marshal(map[string]any{
		wire.OTACustomHardwareID: "board-rev2", wire.OTACustomReleaseCounter: 7,
		wire.OTACustomSecurityVersion: 3, wire.OTACustomRelease: "fw@1.4.0", wire.OTACustomKind: "image",
	})
	t, err := ota.ParseCustom(raw)
	fmt.Println(t.HardwareID, t.ReleaseCounter, t.SecurityVersion, t.Release, t.IsImage(), err)
	// Output: board-rev2 7 3 fw@1.4.0 true <nil>
}

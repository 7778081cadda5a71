package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// KernelEventLogPath is where Linux exposes the firmware's TCG event log.
const KernelEventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// maxEventLogSize bounds reading an event log; the server refuses more
// (wire.MaxEventLogSize) so reading more is pointless.
const maxEventLogSize = 512 << 10

// MeasuredBoot gives the TCG event log that explains the TPM's PCRs.
type MeasuredBoot interface {
	// EventLog returns the log of the current boot. It must describe
	// every extend of the measured PCRs since the TPM's last reset, or
	// the verifier's replay fails.
	EventLog() ([]byte, error)
}

// KernelLog is the real measured boot: firmware and bootloader extended
// the PCRs and the kernel exposes their log. It never extends anything.
type KernelLog struct {
	// Path defaults to KernelEventLogPath.
	Path string
}

var _ MeasuredBoot = KernelLog{}

// EventLog reads the kernel's event log.
func (k KernelLog) EventLog() ([]byte, error) {
	p := k.Path
	if p == "" {
		p = KernelEventLogPath
	}
	return readLimited(p)
}

func readLimited(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("read event log: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxEventLogSize+1))
	if err != nil {
		return nil, fmt.Errorf("read event log: %w", err)
	}
	if len(b) > maxEventLogSize {
		return nil, fmt.Errorf("event log %s exceeds %d bytes", p, maxEventLogSize)
	}
	return b, nil
}

// TCG PC Client event types used by the simulated boot.
const (
	EvNoAction              uint32 = 0x03
	EvPostCode              uint32 = 0x01
	EvIPL                   uint32 = 0x0D
	EvPlatformConfigFlags   uint32 = 0x0A
	EvEFIBootServicesApp    uint32 = 0x80000003
	EvSeparator             uint32 = 0x04
	EvEFIPlatformFirmwareBl uint32 = 0x80000009
)

// Stage is one measured boot stage: its digest is extended into PCR and
// logged with Type and Data. Verifiers trust Digest only.
type Stage struct {
	Name   string
	PCR    int
	Type   uint32
	Digest [sha256.Size]byte
	// Data is the event data; defaults to Name.
	Data []byte
}

// Standard stage names and PCRs of a Ward device's boot chain. The
// reference values published with a release name the same stages.
const (
	StageBootloader = "bootloader"
	StageConfig     = "config"
	StageKernel     = "kernel"
	StageRootfs     = "rootfs"

	PCRBootloader = 0
	PCRConfig     = 1
	PCRKernel     = 4
	PCRRootfs     = 9
)

// BootChain describes the images a device boots; Rootfs is the hash of
// the active A/B slot's image.
type BootChain struct {
	Bootloader, Config, Kernel, Rootfs [sha256.Size]byte
}

// Stages returns the standard stages for c: bootloader (PCR 0,
// EV_POST_CODE), config (PCR 1, EV_PLATFORM_CONFIG_FLAGS), kernel (PCR 4,
// EV_IPL) and rootfs (PCR 9, EV_IPL).
func (c BootChain) Stages() []Stage {
	return []Stage{
		{Name: StageBootloader, PCR: PCRBootloader, Type: EvPostCode, Digest: c.Bootloader},
		{Name: StageConfig, PCR: PCRConfig, Type: EvPlatformConfigFlags, Digest: c.Config},
		{Name: StageKernel, PCR: PCRKernel, Type: EvIPL, Digest: c.Kernel},
		{Name: StageRootfs, PCR: PCRRootfs, Type: EvIPL, Digest: c.Rootfs},
	}
}

// Extender extends a SHA-256 digest into a PCR. [TPM] implements it.
type Extender interface {
	ExtendPCR(pcr int, digest []byte) error
}

// SimulatedBoot plays firmware for a device without measured boot (tests
// and `ward-agent simulate`): Boot extends each stage's digest into the
// TPM and writes a genuine TCG PC Client crypto-agile event log of it,
// which a verifier replays exactly as it would a firmware log.
type SimulatedBoot struct {
	// Path is where the event log is written, in the agent's state dir,
	// so it survives agent restarts as long as the TPM is not reset.
	Path string
}

var _ MeasuredBoot = SimulatedBoot{}

// EventLog reads the log Boot wrote.
func (s SimulatedBoot) EventLog() ([]byte, error) { return readLimited(s.Path) }

// Boot extends stages into the TPM and writes their log. Call it once
// after each TPM reset (power-on), before anything else extends PCRs.
func (s SimulatedBoot) Boot(tpm Extender, stages []Stage) error {
	if s.Path == "" {
		return errors.New("simulated boot: no event log path")
	}
	log := BuildEventLog(stages)
	// Write the log first: if extending fails half way, a replay fails
	// loudly instead of passing against a stale log.
	tmp := s.Path + ".tmp"
	if err := os.WriteFile(tmp, log, 0o600); err != nil {
		return fmt.Errorf("simulated boot: write event log: %w", err)
	}
	if err := os.Rename(tmp, filepath.Clean(s.Path)); err != nil {
		return fmt.Errorf("simulated boot: write event log: %w", err)
	}
	for _, st := range stages {
		if err := tpm.ExtendPCR(st.PCR, st.Digest[:]); err != nil {
			return fmt.Errorf("simulated boot: extend PCR %d (%s): %w", st.PCR, st.Name, err)
		}
	}
	return nil
}

// algSHA256 is TPM_ALG_SHA256.
const algSHA256 = 0x000B

// BuildEventLog encodes stages as a TCG PC Client Platform Firmware
// Profile crypto-agile log with one SHA-256 bank: a TCG_PCR_EVENT header
// carrying the Spec ID Event03 (SHA-1 format, as the spec requires),
// then one TCG_PCR_EVENT2 per stage.
func BuildEventLog(stages []Stage) []byte {
	var b bytes.Buffer
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) } // bytes.Buffer writes do not fail

	// TCG_EfiSpecIDEvent.
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, uint32(0)) // platformClass: client
	spec.Write([]byte{0, 2, 0, 2})                      // specVersionMinor, Major, errata, uintnSize (64-bit)
	binary.Write(&spec, binary.LittleEndian, uint32(1)) // numberOfAlgorithms
	binary.Write(&spec, binary.LittleEndian, uint16(algSHA256))
	binary.Write(&spec, binary.LittleEndian, uint16(sha256.Size))
	spec.WriteByte(0) // vendorInfoSize

	le(uint32(0)) // PCR index
	le(EvNoAction)
	b.Write(make([]byte, 20)) // SHA-1 digest, zero for EV_NO_ACTION
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())

	for _, st := range stages {
		data := st.Data
		if data == nil {
			data = []byte(st.Name)
		}
		le(uint32(st.PCR))
		le(st.Type)
		le(uint32(1)) // digest count
		le(uint16(algSHA256))
		b.Write(st.Digest[:])
		le(uint32(len(data)))
		b.Write(data)
	}
	return b.Bytes()
}

package ota

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
)

// The two slots.
const (
	SlotA = "a"
	SlotB = "b"
)

func checkSlot(s string) error {
	if s != SlotA && s != SlotB {
		return fmt.Errorf("unknown slot %q", s)
	}
	return nil
}

// otherSlot returns the slot that is not s.
func otherSlot(s string) string {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// DefaultBootLimit is how many times the bootloader tries a new slot
// before it falls back: one retry covers a power cut during the first
// boot without letting a slot that never comes up loop for long.
const DefaultBootLimit = 2

// maxBootLimit bounds the boot limit read from the environment so that a
// corrupted value cannot keep a broken slot booting forever.
const maxBootLimit = 16

// BootEnv is the boot environment shared by the bootloader and the agent,
// modelled on U-Boot's upgrade_available / bootcount / bootlimit.
type BootEnv struct {
	// Seq increases with every write; of two valid copies, the higher
	// wins.
	Seq uint64
	// Active is the committed slot, the fallback.
	Active string
	// Try is the slot to boot while UpgradeAvailable is set.
	Try              string
	UpgradeAvailable bool
	// BootCount counts boots of Try; the bootloader increments it before
	// booting and falls back to Active once it exceeds BootLimit.
	BootCount uint32
	BootLimit uint32
}

// bootEnvSize is the encoded size: magic, seq, active, try, upgrade,
// bootcount, bootlimit, crc32.
const bootEnvSize = 4 + 8 + 1 + 1 + 1 + 4 + 4 + 4

var bootEnvMagic = [4]byte{'W', 'B', 'E', '1'}

// bootEnvNames are the two redundant copies.
var bootEnvNames = [2]string{"bootenv.0", "bootenv.1"}

func slotByte(s string) byte { return s[0] }

// MarshalBinary encodes e with its checksum.
func (e *BootEnv) MarshalBinary() ([]byte, error) {
	if err := checkSlot(e.Active); err != nil {
		return nil, err
	}
	if err := checkSlot(e.Try); err != nil {
		return nil, err
	}
	b := make([]byte, 0, bootEnvSize)
	b = append(b, bootEnvMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, e.Seq)
	b = append(b, slotByte(e.Active), slotByte(e.Try))
	if e.UpgradeAvailable {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint32(b, e.BootCount)
	b = binary.BigEndian.AppendUint32(b, e.BootLimit)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return b, nil
}

// ParseBootEnv decodes one copy of the boot environment, refusing torn or
// corrupted copies.
func ParseBootEnv(b []byte) (*BootEnv, error) {
	if len(b) != bootEnvSize {
		return nil, errors.New("ota: boot environment: wrong size")
	}
	if [4]byte(b[:4]) != bootEnvMagic {
		return nil, errors.New("ota: boot environment: bad magic")
	}
	if crc32.ChecksumIEEE(b[:bootEnvSize-4]) != binary.BigEndian.Uint32(b[bootEnvSize-4:]) {
		return nil, errors.New("ota: boot environment: checksum mismatch")
	}
	e := &BootEnv{
		Seq:       binary.BigEndian.Uint64(b[4:12]),
		Active:    string(b[12:13]),
		Try:       string(b[13:14]),
		BootCount: binary.BigEndian.Uint32(b[15:19]),
		BootLimit: binary.BigEndian.Uint32(b[19:23]),
	}
	switch b[14] {
	case 0:
	case 1:
		e.UpgradeAvailable = true
	default:
		return nil, errors.New("ota: boot environment: bad upgrade_available")
	}
	if checkSlot(e.Active) != nil || checkSlot(e.Try) != nil {
		return nil, errors.New("ota: boot environment: bad slot")
	}
	if e.BootLimit > maxBootLimit {
		return nil, errors.New("ota: boot environment: boot limit too high")
	}
	return e, nil
}

// ReadBootEnv returns the newest valid copy of the boot environment and
// which copy it came from.
func ReadBootEnv(fsys FS) (*BootEnv, int, error) {
	var best *BootEnv
	idx := -1
	for i, name := range bootEnvNames {
		b, err := readFile(fsys, name, bootEnvSize)
		if err != nil {
			continue
		}
		e, err := ParseBootEnv(b)
		if err != nil {
			continue
		}
		if best == nil || e.Seq > best.Seq {
			best, idx = e, i
		}
	}
	if best == nil {
		return nil, -1, errors.New("ota: no valid boot environment copy")
	}
	return best, idx, nil
}

// WriteBootEnv writes e (with the next sequence number) over the older
// copy, so that a torn write leaves the newer copy intact.
func WriteBootEnv(fsys FS, e BootEnv) error {
	cur, idx, err := ReadBootEnv(fsys)
	target := 0
	if err == nil {
		e.Seq = cur.Seq + 1
		target = 1 - idx
	}
	b, err := e.MarshalBinary()
	if err != nil {
		return err
	}
	name := bootEnvNames[target]
	_, statErr := fsys.Stat(name)
	f, err := fsys.OpenFile(name, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		return fsys.SyncDir(".")
	}
	return nil
}

// InitBootEnv provisions a device whose committed slot is active: both
// copies are written, so later writes always have an older copy to use.
func InitBootEnv(fsys FS, active string) error {
	if err := checkSlot(active); err != nil {
		return err
	}
	for range 2 {
		if err := WriteBootEnv(fsys, BootEnv{Active: active, Try: active, BootLimit: DefaultBootLimit}); err != nil {
			return fmt.Errorf("ota: init boot environment: %w", err)
		}
	}
	return nil
}

// Boot is what the bootloader does at power-on, for simulations and tests:
// with an upgrade pending it counts the attempt and boots the trial slot
// until the count exceeds the limit, then the committed one. It returns
// the slot to boot.
func Boot(fsys FS) (string, error) {
	e, _, err := ReadBootEnv(fsys)
	if err != nil {
		return "", err
	}
	if !e.UpgradeAvailable {
		return e.Active, nil
	}
	e.BootCount++
	if err := WriteBootEnv(fsys, *e); err != nil {
		return "", err
	}
	if e.BootCount > e.BootLimit {
		return e.Active, nil
	}
	return e.Try, nil
}

// slotReader reads exactly n bytes of a slot.
func slotReader(f File, n int64) io.Reader { return io.NewSectionReader(f, 0, n) }

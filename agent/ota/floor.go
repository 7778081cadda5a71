package ota

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Floor is the device's anti-rollback floor: the highest security version
// it has committed. The engine never installs a release below it and
// raises it only after a release is committed.
type Floor interface {
	// Floor returns the current floor. An error means the floor cannot be
	// trusted, and the engine then installs nothing.
	Floor() (uint64, error)
	// Raise makes the floor at least v. It never lowers it.
	Raise(v uint64) error
}

// FloorHeader is implemented by floors that have a head to report to the
// server ([wire.OTAStatus].FloorHead), so that it notices a reset.
type FloorHeader interface {
	Head() string
}

// LogFloor keeps the floor in a hash-chained log, floor.log, where each
// entry is MACed with a device key over the previous entry's MAC. A device
// without a TPM cannot stop someone with the disk from deleting the log,
// but it cannot be rewritten to a lower value without the key, and the
// head the device reports to the server changes if it is reset: the server
// then re-raises the floor with the Director's minSecurityVersion.
type LogFloor struct {
	fsys FS
	key  []byte

	mu sync.Mutex
}

var _ Floor = (*LogFloor)(nil)

const (
	floorLogName = "floor.log"
	// maxFloorLog bounds floor.log. Each raise adds one line of about 80
	// bytes; the log is compacted well before this.
	maxFloorLog = 64 << 10
	// maxFloorEntries is when the log is compacted into one entry chained
	// to the old head, keeping the file small on long-lived devices.
	maxFloorEntries = 256
	floorLogMagic   = "ward-floor-v1"
	// minFloorKey is the shortest device key accepted: an HMAC key must
	// be as strong as the hash.
	minFloorKey = 32
)

// NewLogFloor returns a floor kept in floor.log of fsys, MACed with key, a
// secret only this device holds (ward-agent derives it from its identity).
func NewLogFloor(fsys FS, key []byte) (*LogFloor, error) {
	if len(key) < minFloorKey {
		return nil, fmt.Errorf("ota: floor key must be at least %d bytes", minFloorKey)
	}
	return &LogFloor{fsys: fsys, key: bytes.Clone(key)}, nil
}

type floorEntry struct {
	version uint64
	mac     []byte
}

func (l *LogFloor) link(prev []byte, v uint64) []byte {
	m := hmac.New(sha256.New, l.key)
	m.Write([]byte(floorLogMagic))
	m.Write(prev)
	m.Write(binary.BigEndian.AppendUint64(nil, v))
	return m.Sum(nil)
}

// parseFloorLog checks the chain and returns its seed and entries.
func (l *LogFloor) parse(b []byte) (seed []byte, entries []floorEntry, err error) {
	return parseFloorLog(b, l.link)
}

// ParseFloorLog parses floor.log and checks its chain with the device key.
func ParseFloorLog(b []byte, key []byte) (versions []uint64, head string, err error) {
	l := &LogFloor{key: key}
	_, es, err := l.parse(b)
	if err != nil {
		return nil, "", err
	}
	for _, e := range es {
		versions = append(versions, e.version)
	}
	if len(es) > 0 {
		head = hex.EncodeToString(es[len(es)-1].mac)
	}
	return versions, head, nil
}

func parseFloorLog(b []byte, link func([]byte, uint64) []byte) ([]byte, []floorEntry, error) {
	if len(b) > maxFloorLog {
		return nil, nil, errors.New("ota: floor log too large")
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 256), maxFloorLog)
	if !sc.Scan() {
		return nil, nil, errors.New("ota: floor log: empty")
	}
	first := strings.Fields(sc.Text())
	if len(first) != 2 || first[0] != floorLogMagic {
		return nil, nil, errors.New("ota: floor log: bad header")
	}
	seed, err := hex.DecodeString(first[1])
	if err != nil || len(seed) != sha256.Size {
		return nil, nil, errors.New("ota: floor log: bad seed")
	}
	prev := seed
	var entries []floorEntry
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			return nil, nil, errors.New("ota: floor log: malformed entry")
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, nil, errors.New("ota: floor log: malformed version")
		}
		mac, err := hex.DecodeString(f[1])
		if err != nil || !hmac.Equal(mac, link(prev, v)) {
			return nil, nil, errors.New("ota: floor log: chain broken (tampered or wrong key)")
		}
		if len(entries) > 0 && v <= entries[len(entries)-1].version {
			return nil, nil, errors.New("ota: floor log: versions not increasing")
		}
		entries = append(entries, floorEntry{v, mac})
		prev = mac
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("ota: floor log: %w", err)
	}
	return seed, entries, nil
}

func (l *LogFloor) load() ([]byte, []floorEntry, error) {
	b, err := readFile(l.fsys, floorLogName, maxFloorLog)
	if errors.Is(err, fs.ErrNotExist) {
		return make([]byte, sha256.Size), nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ota: read floor log: %w", err)
	}
	return l.parse(b)
}

// Floor implements [Floor].
func (l *LogFloor) Floor() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, es, err := l.load()
	if err != nil {
		return 0, err
	}
	if len(es) == 0 {
		return 0, nil
	}
	return es[len(es)-1].version, nil
}

// Head implements [FloorHeader]: the hex MAC of the last entry, "" for an
// empty log.
func (l *LogFloor) Head() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, es, err := l.load()
	if err != nil || len(es) == 0 {
		return ""
	}
	return hex.EncodeToString(es[len(es)-1].mac)
}

// Raise implements [Floor].
func (l *LogFloor) Raise(v uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	seed, es, err := l.load()
	if err != nil {
		return err
	}
	if len(es) > 0 && es[len(es)-1].version >= v {
		return nil
	}
	if len(es) >= maxFloorEntries {
		seed, es = es[len(es)-1].mac, nil
	}
	prev := seed
	if len(es) > 0 {
		prev = es[len(es)-1].mac
	}
	es = append(es, floorEntry{v, l.link(prev, v)})
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%s %x\n", floorLogMagic, seed)
	for _, e := range es {
		fmt.Fprintf(&buf, "%d %x\n", e.version, e.mac)
	}
	if err := writeFileAtomic(l.fsys, floorLogName, buf.Bytes()); err != nil {
		return fmt.Errorf("ota: write floor log: %w", err)
	}
	return nil
}

// DefaultFloorIndex is the TPM NV index of the floor counter, in the
// owner range.
const DefaultFloorIndex = 0x01800A01

// maxFloorStep bounds how far one Raise moves a TPM counter: each step is
// an NV write, TPMs wear out and throttle NV writes, and security versions
// move in small steps.
const maxFloorStep = 4096

// TPMFloor keeps the floor in a TPM 2.0 NV counter. A counter only goes
// up: even if the owner deletes the index and defines it again, the TPM
// starts it at the highest value any counter ever had, so no one can lower
// the floor short of replacing the TPM.
type TPMFloor struct {
	mu    sync.Mutex
	tpm   transport.TPM
	index tpm2.TPMHandle
}

var _ Floor = (*TPMFloor)(nil)

// floorAttrs are the attributes the counter must have: writable and
// readable by the owner only, no dictionary-attack lockout (the agent
// reads it at every start), no delete policy.
var floorAttrs = tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, NoDA: true, NT: tpm2.TPMNTCounter}

// OpenTPMFloor opens the NV counter at index (0 means
// [DefaultFloorIndex]), defining it if absent, and refuses an index whose
// attributes differ: an ordinary NV index there could be rewritten lower.
func OpenTPMFloor(t transport.TPM, index uint32) (*TPMFloor, error) {
	if index == 0 {
		index = DefaultFloorIndex
	}
	f := &TPMFloor{tpm: t, index: tpm2.TPMHandle(index)}
	_, err := f.public()
	if errors.Is(err, tpm2.TPMRCHandle) {
		def := tpm2.NVDefineSpace{
			AuthHandle: tpm2.TPMRHOwner,
			PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
				NVIndex:    f.index,
				NameAlg:    tpm2.TPMAlgSHA256,
				Attributes: floorAttrs,
				DataSize:   8,
			}),
		}
		if _, err := def.Execute(t); err != nil {
			return nil, fmt.Errorf("ota: define floor counter: %w", err)
		}
		_, err = f.public()
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

// public reads and checks the index's public area.
func (f *TPMFloor) public() (*tpm2.NVReadPublicResponse, error) {
	rsp, err := tpm2.NVReadPublic{NVIndex: f.index}.Execute(f.tpm)
	if err != nil {
		return nil, err
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("ota: floor counter public area: %w", err)
	}
	a := pub.Attributes
	a.Written = false // set once incremented
	if a != floorAttrs || pub.DataSize != 8 || len(pub.AuthPolicy.Buffer) != 0 {
		return nil, fmt.Errorf("ota: NV index %#x is not a floor counter (attributes %+v); refusing to trust it", uint32(f.index), pub.Attributes)
	}
	return rsp, nil
}

func (f *TPMFloor) handle(rsp *tpm2.NVReadPublicResponse) tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: f.index, Name: rsp.NVName}
}

// Floor implements [Floor]. A counter never incremented is incremented
// first, so a fresh TPM's floor is 1 (or more, if the TPM had counters
// before): security versions start at 1.
func (f *TPMFloor) Floor() (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read()
}

func (f *TPMFloor) read() (uint64, error) {
	rsp, err := f.public()
	if err != nil {
		return 0, err
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return 0, err
	}
	if !pub.Attributes.Written {
		// A counter that was never incremented has no value, and
		// reading it as 0 would let whoever deleted and re-created
		// the index lower the floor. Its first increment sets it
		// above the highest value any counter of this TPM has held.
		if _, err := (tpm2.NVIncrement{AuthHandle: tpm2.TPMRHOwner, NVIndex: f.handle(rsp)}).Execute(f.tpm); err != nil {
			return 0, fmt.Errorf("ota: initialise floor counter: %w", err)
		}
		if rsp, err = f.public(); err != nil {
			return 0, err
		}
	}
	r, err := tpm2.NVRead{
		AuthHandle: tpm2.TPMRHOwner,
		NVIndex:    f.handle(rsp),
		Size:       8,
	}.Execute(f.tpm)
	if err != nil {
		return 0, fmt.Errorf("ota: read floor counter: %w", err)
	}
	if len(r.Data.Buffer) != 8 {
		return 0, errors.New("ota: floor counter: short read")
	}
	return binary.BigEndian.Uint64(r.Data.Buffer), nil
}

// Raise implements [Floor] by incrementing the counter until it reaches v.
func (f *TPMFloor) Raise(v uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, err := f.read()
	if err != nil {
		return err
	}
	if cur >= v {
		return nil
	}
	if v-cur > maxFloorStep {
		return fmt.Errorf("ota: floor would jump from %d to %d; security versions must move in steps of at most %d", cur, v, maxFloorStep)
	}
	for cur < v {
		rsp, err := f.public()
		if err != nil {
			return err
		}
		if _, err := (tpm2.NVIncrement{AuthHandle: tpm2.TPMRHOwner, NVIndex: f.handle(rsp)}).Execute(f.tpm); err != nil {
			return fmt.Errorf("ota: increment floor counter: %w", err)
		}
		next, err := f.read()
		if err != nil {
			return err
		}
		if next <= cur {
			return errors.New("ota: floor counter did not advance")
		}
		cur = next
	}
	return nil
}

package ota

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"sync"
)

// errPowerLoss is what every operation of a crashed faultFS returns.
var errPowerLoss = errors.New("faultfs: power lost")

// faultFS is an in-memory FS that models what survives a power cut: file
// data written since the last Sync may be lost, kept, or torn at a random
// byte; directory entries created, renamed or removed since the last
// SyncDir are lost. A step counter cuts the power at the crashAt-th
// mutating operation.
type faultFS struct {
	mu      sync.Mutex
	files   map[string]*inode // what the running system sees
	durable map[string]*inode // directory entries as of the last SyncDir
	dirs    map[string]bool

	steps   int
	crashAt int // 0: never
	crashed bool
	rng     *rand.Rand
}

type inode struct {
	data    []byte // visible content
	synced  []byte // content as of the last Sync
	pending []op   // unsynced writes and truncations, in order
}

type op struct {
	off   int64
	data  []byte
	trunc bool
}

func newFaultFS(seed uint64) *faultFS {
	return &faultFS{files: map[string]*inode{}, durable: map[string]*inode{}, dirs: map[string]bool{".": true},
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

var _ FS = (*faultFS)(nil)

// step counts a mutating operation and cuts the power at crashAt.
// Callers hold mu.
func (f *faultFS) step() error {
	if f.crashed {
		return errPowerLoss
	}
	f.steps++
	if f.crashAt > 0 && f.steps == f.crashAt {
		f.crashed = true
		return errPowerLoss
	}
	return nil
}

// powerCycle applies the crash model: lose, keep or tear unsynced data,
// forget unsynced directory entries. The FS is usable again afterwards,
// with no crash armed.
func (f *faultFS) powerCycle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[*inode]bool{}
	files := map[string]*inode{}
	for name, ino := range f.durable {
		files[name] = ino
		if seen[ino] {
			continue
		}
		seen[ino] = true
		data := bytes.Clone(ino.synced)
		k := f.rng.IntN(len(ino.pending) + 1)
		for i, o := range ino.pending[:k] {
			torn := i == k-1 && f.rng.IntN(2) == 0
			data = apply(data, o, torn, f.rng)
		}
		ino.data, ino.synced, ino.pending = data, bytes.Clone(data), nil
	}
	f.files, f.durable = files, maps(files)
	f.crashed, f.crashAt, f.steps = false, 0, 0
}

// cleanReboot is an orderly reboot: the kernel flushes everything.
func (f *faultFS) cleanReboot() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ino := range f.files {
		ino.synced, ino.pending = bytes.Clone(ino.data), nil
	}
	f.durable = maps(f.files)
}

func maps(m map[string]*inode) map[string]*inode {
	c := make(map[string]*inode, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func apply(data []byte, o op, torn bool, rng *rand.Rand) []byte {
	if o.trunc {
		if int64(len(data)) > o.off {
			return data[:o.off]
		}
		return append(data, make([]byte, o.off-int64(len(data)))...)
	}
	w := o.data
	if torn && len(w) > 0 {
		w = w[:rng.IntN(len(w))]
	}
	end := o.off + int64(len(w))
	if int64(len(data)) < end {
		data = append(data, make([]byte, end-int64(len(data)))...)
	}
	copy(data[o.off:], w)
	return data
}

func clean(name string) string { return path.Clean(name) }

func (f *faultFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name = clean(name)
	if f.crashed {
		return nil, errPowerLoss
	}
	ino, ok := f.files[name]
	if !ok {
		if flag&os.O_CREATE == 0 {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		if !f.dirs[path.Dir(name)] {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		if err := f.step(); err != nil {
			return nil, err
		}
		ino = &inode{}
		f.files[name] = ino
	} else if flag&os.O_TRUNC != 0 {
		if err := f.step(); err != nil {
			return nil, err
		}
		ino.data = nil
		ino.pending = append(ino.pending, op{off: 0, trunc: true})
	}
	return &memFile{fs: f, ino: ino, write: flag&(os.O_WRONLY|os.O_RDWR) != 0}, nil
}

func (f *faultFS) Rename(oldname, newname string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.step(); err != nil {
		return err
	}
	ino, ok := f.files[clean(oldname)]
	if !ok {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	delete(f.files, clean(oldname))
	f.files[clean(newname)] = ino
	return nil
}

func (f *faultFS) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.step(); err != nil {
		return err
	}
	delete(f.files, clean(name))
	return nil
}

func (f *faultFS) MkdirAll(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return errPowerLoss
	}
	// Directories are made at provisioning; modelled as always durable.
	f.dirs[clean(name)] = true
	return nil
}

func (f *faultFS) SyncDir(dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.step(); err != nil {
		return err
	}
	dir = clean(dir)
	for name := range f.durable {
		if path.Dir(name) == dir {
			if _, ok := f.files[name]; !ok {
				delete(f.durable, name)
			}
		}
	}
	for name, ino := range f.files {
		if path.Dir(name) == dir {
			f.durable[name] = ino
		}
	}
	return nil
}

func (f *faultFS) Stat(name string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return 0, errPowerLoss
	}
	ino, ok := f.files[clean(name)]
	if !ok {
		return 0, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return int64(len(ino.data)), nil
}

// read returns a file's visible content (for test assertions).
func (f *faultFS) read(name string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ino, ok := f.files[clean(name)]; ok {
		return bytes.Clone(ino.data)
	}
	return nil
}

func (f *faultFS) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n []string
	for k := range f.files {
		n = append(n, k)
	}
	slices.Sort(n)
	return n
}

type memFile struct {
	fs    *faultFS
	ino   *inode
	off   int64
	write bool
}

func (m *memFile) Read(p []byte) (int, error) {
	n, err := m.ReadAt(p, m.off)
	m.off += int64(n)
	return n, err
}

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	m.fs.mu.Lock()
	defer m.fs.mu.Unlock()
	if m.fs.crashed {
		return 0, errPowerLoss
	}
	if off >= int64(len(m.ino.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.ino.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) Write(p []byte) (int, error) {
	m.fs.mu.Lock()
	defer m.fs.mu.Unlock()
	if !m.write {
		return 0, errors.New("faultfs: file not open for writing")
	}
	if err := m.fs.step(); err != nil {
		return 0, err
	}
	o := op{off: m.off, data: bytes.Clone(p)}
	m.ino.data = apply(m.ino.data, o, false, nil)
	m.ino.pending = append(m.ino.pending, o)
	m.off += int64(len(p))
	return len(p), nil
}

func (m *memFile) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		m.off = offset
	case io.SeekCurrent:
		m.off += offset
	case io.SeekEnd:
		m.fs.mu.Lock()
		m.off = int64(len(m.ino.data)) + offset
		m.fs.mu.Unlock()
	}
	return m.off, nil
}

func (m *memFile) Sync() error {
	m.fs.mu.Lock()
	defer m.fs.mu.Unlock()
	if err := m.fs.step(); err != nil {
		return err
	}
	m.ino.synced, m.ino.pending = bytes.Clone(m.ino.data), nil
	return nil
}

func (m *memFile) Truncate(size int64) error {
	m.fs.mu.Lock()
	defer m.fs.mu.Unlock()
	if err := m.fs.step(); err != nil {
		return err
	}
	o := op{off: size, trunc: true}
	m.ino.data = apply(m.ino.data, o, false, nil)
	m.ino.pending = append(m.ino.pending, o)
	return nil
}

func (m *memFile) Close() error { return nil }

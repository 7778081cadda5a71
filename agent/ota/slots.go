package ota

import "os"

// Slots gives access to the two A/B slots. On a real device they are
// partitions (opened without truncation: a partition has a fixed size and
// the engine reads back exactly the image's length); [FileSlots] keeps
// them as files, for simulations and tests.
type Slots interface {
	// OpenSlot opens a slot for reading, or for writing from the start.
	// A slot opened for writing must be durable after File.Sync.
	OpenSlot(slot string, write bool) (File, error)
}

// FileSlots keeps slots as slots/a.img and slots/b.img in an [FS].
type FileSlots struct{ FS FS }

var _ Slots = FileSlots{}

// OpenSlot implements [Slots].
func (s FileSlots) OpenSlot(slot string, write bool) (File, error) {
	if err := checkSlot(slot); err != nil {
		return nil, err
	}
	name := "slots/" + slot + ".img"
	if !write {
		return s.FS.OpenFile(name, os.O_RDONLY, 0)
	}
	if err := s.FS.MkdirAll("slots"); err != nil {
		return nil, err
	}
	f, err := s.FS.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	// The entry must survive a power cut as well as the data.
	if err := s.FS.SyncDir("slots"); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Package atomicfile writes small files so that a crash or power cut
// never leaves a torn one: Write replaces a file atomically, CreateNew
// makes a file that must not exist yet. Both make the data and the
// directory entry durable before returning.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data: a temporary file in the same directory
// (named "."+base+".tmp-*"), written with mode, synced and renamed over
// path, then the directory synced. A crash leaves the old or the new
// content, and at worst a temporary file.
func Write(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := writeSync(f, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// CreateNew writes data to path, which must not exist (os.ErrExist
// otherwise): a key, or a signed document, is never silently replaced.
func CreateNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err := writeSync(f, data, mode); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// writeSync sets f's mode (CreateTemp makes 0600, umask trims OpenFile's),
// writes data, syncs and closes f.
func writeSync(f *os.File, data []byte, mode os.FileMode) error {
	err := f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncDir makes the directory's entries (a rename, a new file) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

package ota

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// FS is the file system the engine writes through. Every durable write the
// engine makes goes through it, so that a test implementation can lose
// unsynced data at any point, the way a power cut does (killing the process
// does not: the page cache survives it). Names are slash-separated and
// relative to the FS's root.
type FS interface {
	// OpenFile opens name with os.OpenFile's flag and permission semantics.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// Rename atomically replaces newname with oldname. It is durable only
	// after SyncDir of the directory.
	Rename(oldname, newname string) error
	// Remove removes a file; missing files are not an error.
	Remove(name string) error
	// MkdirAll creates a directory and its parents.
	MkdirAll(name string) error
	// SyncDir makes the directory entries of dir durable.
	SyncDir(dir string) error
	// Stat returns the size of a file, or an error wrapping fs.ErrNotExist.
	Stat(name string) (size int64, err error)
}

// File is an open file of an [FS].
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.Seeker
	// Sync makes the file's data durable.
	Sync() error
	// Truncate changes the file's size.
	Truncate(size int64) error
	Close() error
}

// DirFS is an [FS] rooted at a directory of the operating system's file
// system.
type DirFS string

var _ FS = DirFS("")

func (d DirFS) path(name string) string { return filepath.Join(string(d), filepath.FromSlash(name)) }

// OpenFile implements [FS].
func (d DirFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	return os.OpenFile(d.path(name), flag, perm)
}

// Rename implements [FS].
func (d DirFS) Rename(oldname, newname string) error {
	return os.Rename(d.path(oldname), d.path(newname))
}

// Remove implements [FS].
func (d DirFS) Remove(name string) error {
	if err := os.Remove(d.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// MkdirAll implements [FS].
func (d DirFS) MkdirAll(name string) error { return os.MkdirAll(d.path(name), 0o700) }

// SyncDir implements [FS].
func (d DirFS) SyncDir(dir string) error {
	f, err := os.Open(d.path(dir))
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Stat implements [FS].
func (d DirFS) Stat(name string) (int64, error) {
	fi, err := os.Stat(d.path(name))
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// readFile reads a whole file of at most limit bytes.
func readFile(fsys FS, name string, limit int64) ([]byte, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, errTooLarge
	}
	return b, nil
}

var errTooLarge = errors.New("file too large")

// writeFileAtomic replaces name with data so that after a crash the file
// holds either the old or the new content: write a temporary file, sync
// it, rename it over name and sync the directory.
func writeFileAtomic(fsys FS, name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
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
	if err := fsys.Rename(tmp, name); err != nil {
		return err
	}
	return fsys.SyncDir(dirOf(name))
}

func dirOf(name string) string {
	d := filepath.ToSlash(filepath.Dir(filepath.FromSlash(name)))
	if d == "" {
		return "."
	}
	return d
}

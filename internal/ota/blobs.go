package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// MaxImageSize bounds an uploaded image (and any target file): a firmware
// image for the devices we serve is tens of MiB; this stops a runaway
// upload from filling the disk.
const MaxImageSize = 1 << 30

// ErrBlobNotFound is returned by [Blobs.Open] for an unknown hash.
var ErrBlobNotFound = errors.New("ota: file not stored")

// Blobs stores target files by their SHA-256 (hex). Open must return a
// seeker so HTTP Range requests can be served.
type Blobs interface {
	Put(ctx context.Context, r io.Reader) (sha256Hex string, length int64, err error)
	Open(ctx context.Context, sha256Hex string) (io.ReadSeekCloser, error)
}

// DirBlobs keeps target files in a directory, named by their hash.
type DirBlobs struct{ Dir string }

// Put implements [Blobs]: copy to a temporary file while hashing, sync,
// rename to the hash. At most [MaxImageSize] bytes are accepted.
func (d DirBlobs) Put(_ context.Context, r io.Reader) (string, int64, error) {
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return "", 0, err
	}
	f, err := os.CreateTemp(d.Dir, ".upload-*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, MaxImageSize+1))
	if err == nil && n > MaxImageSize {
		err = fmt.Errorf("ota: file larger than %d bytes", MaxImageSize)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(f.Name(), filepath.Join(d.Dir, sum)); err != nil {
		return "", 0, err
	}
	return sum, n, nil
}

// Open implements [Blobs].
func (d DirBlobs) Open(_ context.Context, sum string) (io.ReadSeekCloser, error) {
	if len(sum) != sha256.Size*2 {
		return nil, ErrBlobNotFound
	}
	if _, err := hex.DecodeString(sum); err != nil {
		return nil, ErrBlobNotFound
	}
	f, err := os.Open(filepath.Join(d.Dir, sum))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrBlobNotFound
	}
	return f, err
}

func readBlob(ctx context.Context, b Blobs, sum string, max int64) ([]byte, error) {
	f, err := b.Open(ctx, sum)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("ota: stored file larger than %d bytes", max)
	}
	got := sha256.Sum256(data)
	if hex.EncodeToString(got[:]) != sum {
		return nil, fmt.Errorf("ota: stored file %s is corrupt", sum[:12])
	}
	return data, nil
}

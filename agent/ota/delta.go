package ota

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

const (
	// maxDeltaWindow bounds the zstd window a delta may ask for, and so
	// the decoder's memory: the server builds deltas with a window that
	// covers the image (zstd --patch-from does the same), and images are
	// bounded by maxImageSize.
	maxDeltaWindow = maxImageSize
	// maxImageSize bounds an image the engine holds in memory as a delta
	// base. Full images stream and are bounded only by their TUF length.
	maxImageSize = 256 << 20
)

// ApplyDelta reconstructs an image from a zstd patch made against base
// with base as a raw dictionary (klauspost's WithEncoderDictRaw, or
// `zstd --patch-from=base`), streaming into out. It writes at most limit
// bytes and fails if the patch would produce more. The caller verifies
// the reconstructed image's hash: a wrong base produces garbage, not an
// error.
func ApplyDelta(out io.Writer, patch io.Reader, base []byte, limit int64) (int64, error) {
	br := bufio.NewReader(patch)
	// Register the base under the frame's own dictionary ID: the zstd
	// CLI writes none (0), encoders using WithEncoderDictRaw write theirs.
	var h zstd.Header
	peek, _ := br.Peek(zstd.HeaderMaxSize)
	if err := h.Decode(peek); err != nil {
		return 0, fmt.Errorf("ota: delta: %w", err)
	}
	dec, err := zstd.NewReader(br,
		zstd.WithDecoderDictRaw(h.DictionaryID, base),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxDeltaWindow))
	if err != nil {
		return 0, fmt.Errorf("ota: delta: %w", err)
	}
	defer dec.Close()
	lw := &limitWriter{w: out, n: limit}
	n, err := io.Copy(lw, dec)
	if errors.Is(err, errDeltaTooLong) {
		return n, err
	}
	if err != nil {
		return n, fmt.Errorf("ota: delta: %w", err)
	}
	return n, nil
}

var errDeltaTooLong = errors.New("ota: delta reconstructs more than the target's length")

// limitWriter refuses to write past n bytes.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, errDeltaTooLong
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	return n, err
}

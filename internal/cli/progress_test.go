package cli

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the drawing goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// slowReader hands out its bytes in small pieces with a pause, so the
// bar draws frames in the middle of the upload.
type slowReader struct {
	left int
}

func (r *slowReader) Read(b []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(2 * time.Millisecond)
	n := min(len(b), r.left, 256<<10)
	r.left -= n
	return n, nil
}

func TestUploadProgressDrawsAndCounts(t *testing.T) {
	const total = 8 << 20
	var out syncBuffer
	p := &uploadProgress{r: &slowReader{left: total}, total: total, w: &out, start: time.Now(), quit: make(chan struct{})}
	p.run(time.Millisecond)
	n, err := io.Copy(io.Discard, p)
	p.stop()
	p.stop() // idempotent
	if err != nil || n != total || p.sent.Load() != total {
		t.Fatalf("copied %d (counted %d), %v", n, p.sent.Load(), err)
	}
	s := out.String()
	frames := strings.Split(strings.TrimSuffix(s, "\n"), "\r")
	var partial bool
	for _, f := range frames {
		if strings.Contains(f, "%") && !strings.Contains(f, "100%") && strings.Contains(f, "/ 8.0 MiB") {
			partial = true
		}
	}
	if !partial {
		t.Errorf("no frame drawn mid-upload: %q", s)
	}
	last := frames[len(frames)-1]
	if !strings.Contains(last, "100% 8.0 MiB") || !strings.Contains(last, "the server is hashing") || !strings.HasSuffix(s, "\n") {
		t.Errorf("last frame %q", last)
	}
}

func TestUploadProgressSilentWithoutTerminal(t *testing.T) {
	var out bytes.Buffer
	p := newUploadProgress(strings.NewReader("image bytes"), 11, &out)
	if b, err := io.ReadAll(p); err != nil || string(b) != "image bytes" {
		t.Fatalf("%q %v", b, err)
	}
	p.stop()
	if out.Len() != 0 || p.sent.Load() != 11 {
		t.Fatalf("drew %q on a non-terminal, counted %d", out.String(), p.sent.Load())
	}
}

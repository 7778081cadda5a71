package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// uploadProgress counts the bytes read from an image and draws a bar on
// w while an upload runs: bytes sent, percent, rate. After the last byte
// it says the server is still working (hashing, making deltas), which on
// a large image takes seconds.
type uploadProgress struct {
	r     io.Reader
	total int64
	sent  atomic.Int64
	w     io.Writer
	start time.Time
	quit  chan struct{}
	wg    sync.WaitGroup
}

// newUploadProgress wraps r (total bytes) and draws on stderr only when
// it is a terminal; otherwise it only counts.
func newUploadProgress(r io.Reader, total int64, stderr io.Writer) *uploadProgress {
	p := &uploadProgress{r: r, total: total, start: time.Now(), quit: make(chan struct{})}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.w = f
		p.run(200 * time.Millisecond)
	}
	return p
}

func (p *uploadProgress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.sent.Add(int64(n))
	return n, err
}

func (p *uploadProgress) run(every time.Duration) {
	p.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.quit:
				p.draw(time.Now())
				fmt.Fprintln(p.w)
				return
			case now := <-t.C:
				p.draw(now)
			}
		}
	})
}

// draw writes one frame of the bar.
func (p *uploadProgress) draw(now time.Time) {
	const width = 30
	sent := p.sent.Load()
	filled, pct := 0, int64(0)
	if p.total > 0 {
		filled, pct = int(min(int64(width), width*sent/p.total)), min(100, sent*100/p.total)
	}
	rate := float64(sent) / max(now.Sub(p.start).Seconds(), 1e-3)
	line := fmt.Sprintf("\rupload [%s%s] %3d%% %s / %s  %s/s", strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		pct, mib(sent), mib(p.total), mib(int64(rate)))
	if p.total > 0 && sent >= p.total {
		line = fmt.Sprintf("\rupload [%s] 100%% %s in %s; the server is hashing and making deltas", strings.Repeat("#", width),
			mib(sent), now.Sub(p.start).Round(100*time.Millisecond))
	}
	fmt.Fprintf(p.w, "%s\x1b[K", line)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// stop draws the last frame and ends the bar.
func (p *uploadProgress) stop() {
	if p.w == nil {
		return
	}
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	p.wg.Wait()
}

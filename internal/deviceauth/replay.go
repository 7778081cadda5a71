package deviceauth

import (
	"sync"
	"time"
)

// replayCache remembers assertion IDs in process until their assertion
// expires. It is bounded: when full it forgets the oldest entry, which is
// safe because the store check behind it is authoritative. Its purpose is
// to answer a replay flood without a database write per request.
type replayCache struct {
	mu    sync.Mutex
	max   int
	seen  map[Hash]time.Time
	order []replayEntry // FIFO ring of insertions
	head  int
}

type replayEntry struct {
	k   Hash
	exp time.Time
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: make(map[Hash]time.Time)}
}

// add records k until exp and reports whether it was new (not present or
// present but expired at now).
func (c *replayCache) add(k Hash, exp, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.seen[k]; ok && now.Before(e) {
		return false
	}
	// Drop expired entries from the front, then make room.
	for len(c.order)-c.head > 0 {
		f := c.order[c.head]
		if now.Before(f.exp) && len(c.seen) < c.max {
			break
		}
		c.pop()
	}
	c.seen[k] = exp
	c.order = append(c.order, replayEntry{k, exp})
	// Compact the ring once its dead prefix dominates.
	if c.head > len(c.order)/2 && c.head > 1024 {
		c.order = append(c.order[:0:0], c.order[c.head:]...)
		c.head = 0
	}
	return true
}

func (c *replayCache) pop() {
	f := c.order[c.head]
	c.order[c.head] = replayEntry{}
	c.head++
	// A key re-added after expiry has a newer entry; keep it.
	if e, ok := c.seen[f.k]; ok && e.Equal(f.exp) {
		delete(c.seen, f.k)
	}
}

func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

package telemetry

import (
	"hash/maphash"
	"sync"
	"time"
)

const (
	// ReplayWindow is how many sequence numbers below the highest seen are
	// still accepted (once each). It absorbs reordering by QoS 1 redelivery
	// and store-and-forward buffers on devices without letting an old
	// message through twice.
	ReplayWindow = 1024
	windowWords  = ReplayWindow / 64
	// replayShards spreads devices over independent locks so concurrent
	// devices rarely contend.
	replayShards = 64
	// DefaultMaxReplayDevices bounds replay state: about 200 bytes a
	// device, so 256 Ki devices cost roughly 50 MiB.
	DefaultMaxReplayDevices = 256 << 10
)

// window tracks one device: the highest sequence seen and a bitmap whose
// bit i means highest-i was seen.
type window struct {
	highest uint64
	bitmap  [windowWords]uint64
	maxTime time.Time // newest timestamp accepted, carried to the shard floor on eviction
}

type replayShard struct {
	mu sync.Mutex
	m  map[deviceKey]*window
	// floor is the newest timestamp of any evicted device (or the start
	// time). A device with no state accepts only messages newer than
	// floor: anything older could be a replay of a message seen before its
	// state was forgotten.
	floor time.Time
}

type deviceKey struct{ tenant, device string }

// replayGuard is the per-device sliding window, bounded in memory.
type replayGuard struct {
	seed     maphash.Seed
	perShard int
	shards   [replayShards]replayShard
}

func newReplayGuard(maxDevices int, start time.Time) *replayGuard {
	g := &replayGuard{seed: maphash.MakeSeed(), perShard: max(1, maxDevices/replayShards)}
	for i := range g.shards {
		g.shards[i].m = make(map[deviceKey]*window)
		g.shards[i].floor = start
	}
	return g
}

// check records seq for the device and returns "" if it is new, or the
// reason for refusing it. It must be called only after the message is
// authenticated, so forgeries cannot advance the window.
func (g *replayGuard) check(k deviceKey, seq uint64, ts time.Time) (Reason, string) {
	var h maphash.Hash
	h.SetSeed(g.seed)
	h.WriteString(k.tenant)
	h.WriteByte(0)
	h.WriteString(k.device)
	s := &g.shards[h.Sum64()%replayShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.m[k]
	if w == nil {
		if !ts.After(s.floor) {
			return ReasonStale, "no replay state for device and timestamp not newer than the replay floor"
		}
		if len(s.m) >= g.perShard {
			s.evictOne()
		}
		w = &window{highest: seq, maxTime: ts}
		w.bitmap[0] = 1
		s.m[k] = w
		return "", ""
	}
	switch {
	case seq > w.highest:
		w.shift(seq - w.highest)
		w.highest = seq
		w.bitmap[0] |= 1
	case w.highest-seq >= ReplayWindow:
		return ReasonStale, "sequence number below the replay window"
	default:
		i := w.highest - seq
		word, bit := i/64, uint64(1)<<(i%64)
		if w.bitmap[word]&bit != 0 {
			return ReasonReplay, "sequence number already seen"
		}
		w.bitmap[word] |= bit
	}
	if ts.After(w.maxTime) {
		w.maxTime = ts
	}
	return "", ""
}

// shift moves the bitmap n positions towards older sequence numbers.
func (w *window) shift(n uint64) {
	if n >= ReplayWindow {
		w.bitmap = [windowWords]uint64{}
		return
	}
	words, r := int(n/64), n%64
	for i := windowWords - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = w.bitmap[j] << r
			if r != 0 && j > 0 {
				v |= w.bitmap[j-1] >> (64 - r)
			}
		}
		w.bitmap[i] = v
	}
}

// evictOne forgets an arbitrary device (map iteration order) and raises the
// floor to its newest timestamp, so forgetting never reopens a replay.
func (s *replayShard) evictOne() {
	for k, w := range s.m {
		if w.maxTime.After(s.floor) {
			s.floor = w.maxTime
		}
		delete(s.m, k)
		return
	}
}

func (g *replayGuard) size() int {
	n := 0
	for i := range g.shards {
		g.shards[i].mu.Lock()
		n += len(g.shards[i].m)
		g.shards[i].mu.Unlock()
	}
	return n
}

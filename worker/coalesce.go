package worker

import (
	"sync"
	"time"
)

// claim is what the coalescer says about a request for an id.
type claim int

const (
	claimProceed      claim = iota // nobody works on the id: call Graph
	claimCoalesce                  // another request for the id is in flight or was just accepted
	claimSameInFlight              // this very message (same stream sequence and store time) is already being worked: a second delivery of it
	claimSameAccepted              // this very message was accepted and its ack was lost: settle it again
)

// maxRecent bounds the memory of recently accepted ids.
const maxRecent = 100_000

// coalescer tracks the ids in flight and the ids accepted within the window, so that
// duplicates of a request make one Graph call.
type coalescer struct {
	window time.Duration

	mu       sync.Mutex
	inflight map[string]msgKey // id → the message being worked
	recent   map[string]recentEntry
	order    []recentKey // recent, oldest first
}

type recentEntry struct {
	seq msgKey
	at  time.Time
}

type recentKey struct {
	id string
	at time.Time
}

func newCoalescer(window time.Duration) *coalescer {
	return &coalescer{window: window, inflight: make(map[string]msgKey), recent: make(map[string]recentEntry)}
}

// claim registers the message seq for id unless another request for it is in flight or was
// accepted within the window.
func (c *coalescer) claim(id string, seq msgKey, now time.Time) claim {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.inflight[id]; ok {
		if s == seq {
			return claimSameInFlight
		}
		return claimCoalesce
	}
	c.expire(now)
	if r, ok := c.recent[id]; ok {
		if r.seq == seq {
			return claimSameAccepted
		}
		return claimCoalesce
	}
	c.inflight[id] = seq
	return claimProceed
}

// release ends the claim of seq on id; accepted remembers the id for the window.
func (c *coalescer) release(id string, seq msgKey, accepted bool, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight[id] == seq {
		delete(c.inflight, id)
	}
	if !accepted || c.window <= 0 {
		return
	}
	c.recent[id] = recentEntry{seq: seq, at: now}
	c.order = append(c.order, recentKey{id: id, at: now})
	if len(c.order) > maxRecent {
		c.drop(1)
	}
}

// expire forgets accepted ids older than the window.
func (c *coalescer) expire(now time.Time) {
	n := 0
	for n < len(c.order) && now.Sub(c.order[n].at) > c.window {
		n++
	}
	c.drop(n)
}

func (c *coalescer) drop(n int) {
	for _, k := range c.order[:n] {
		if r, ok := c.recent[k.id]; ok && r.at.Equal(k.at) {
			delete(c.recent, k.id)
		}
	}
	c.order = c.order[n:]
	if cap(c.order) > 1024 && len(c.order) < cap(c.order)/4 {
		c.order = append([]recentKey(nil), c.order...)
	}
}

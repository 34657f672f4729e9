package queue

import (
	"runtime"
	"sync"
)

// combiner runs the publishes that many goroutines hand it back to back, in whichever of
// them found it idle, so that the connection writes a burst of them in one system call.
//
// nats.go appends a publish to the connection's buffer and wakes its flusher, which the
// scheduler runs as soon as the publishing goroutine blocks, waiting for its
// acknowledgement: with tens of handlers each publishing one event, that was one write to
// the socket per event, and one read for the server. The goroutine that finds the
// combiner idle first yields once, so that the other handlers that are ready to run hand
// their publishes over, then runs them all before it goes on: the flusher then finds a
// burst. When nothing else is ready the yield returns at once, so a lone publish is not
// delayed. It has no goroutine to start or stop: one is started only to run what a handler
// handed on after its rounds (combineRounds), and it ends when nothing is left.
type combiner struct {
	mu      sync.Mutex
	busy    bool     // a goroutine is running the queued publishes
	pending []func() // handed over while busy
	spare   []func() // the other buffer, swapped with pending
}

// combineRounds bounds how many batches one goroutine runs for the others before it
// hands what is left to a goroutine of its own, so that no handler is kept from its own
// work by a steady stream of other handlers' publishes.
const combineRounds = 4

// do runs f, now or, while another goroutine runs the queued publishes, soon after in
// that goroutine. f must not block for long and must not call do.
func (c *combiner) do(f func()) {
	c.mu.Lock()
	if c.busy {
		c.pending = append(c.pending, f)
		c.mu.Unlock()
		return
	}
	c.busy = true
	c.mu.Unlock()
	runtime.Gosched() // let the handlers that are ready to run hand theirs over
	f()
	c.drain(combineRounds)
}

// drain runs what was handed over, batch by batch, for at most rounds batches; then, if
// more is queued, it hands the rest to a new goroutine, which runs until none is left.
func (c *combiner) drain(rounds int) {
	for range rounds {
		c.mu.Lock()
		batch := c.pending
		if len(batch) == 0 {
			c.busy = false
			c.mu.Unlock()
			return
		}
		c.pending, c.spare = c.spare[:0], nil
		c.mu.Unlock()
		for i, f := range batch {
			f()
			batch[i] = nil
		}
		c.mu.Lock()
		c.spare = batch[:0] // pending is the other buffer now
		c.mu.Unlock()
	}
	go c.drain(1 << 30)
}

package worker

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// circuit stops the worker when Graph refuses it: many 403s (or 401s after a token refresh)
// in a row mean a revoked permission, and carrying on would drain the whole queue into the
// dead-letter stream. While open, nothing is fetched and readiness fails; after a cooldown
// one call probes; a probe that is not refused closes the circuit, a refused one reopens it
// for twice as long (at most maxCooldown).
type circuit struct {
	threshold   int
	cooldown    time.Duration
	maxCooldown time.Duration
	now         func() time.Time
	obs         Observer

	mu          sync.Mutex
	consecutive int
	open        bool
	openUntil   time.Time
	wait        time.Duration // the current cooldown
	probing     bool
	changed     chan struct{} // closed and replaced on every state change
}

func newCircuit(threshold int, cooldown time.Duration, now func() time.Time, obs Observer) *circuit {
	return &circuit{threshold: threshold, cooldown: cooldown, maxCooldown: max(cooldown, 5*time.Minute), now: now, obs: obs, changed: make(chan struct{})}
}

// admit blocks until a call may be made: at once while the circuit is closed; while it is
// open, until the cooldown has passed and no other probe is under way. probe says the call
// is the circuit's probe and must be reported with record.
func (c *circuit) admit(ctx context.Context) (probe bool, err error) {
	for {
		c.mu.Lock()
		if !c.open {
			c.mu.Unlock()
			return false, nil
		}
		wait := c.openUntil.Sub(c.now())
		if wait <= 0 && !c.probing {
			c.probing = true
			c.mu.Unlock()
			return true, nil
		}
		changed := c.changed
		c.mu.Unlock()
		if wait <= 0 {
			wait = time.Second // a probe is under way; its end signals changed
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-changed:
			t.Stop()
		case <-t.C:
		}
	}
}

// record reports a Graph answer: refused says it was a 403 (or a 401 after refresh). It
// returns whether the circuit is open after it.
func (c *circuit) record(refused, probe bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if probe {
		c.probing = false
	}
	if !refused {
		c.consecutive = 0
		if c.open {
			c.open = false
			c.wait = 0
			c.obs.CircuitOpen(false)
			c.signal()
		}
		return false
	}
	c.consecutive++
	switch {
	case c.open && probe:
		c.wait = min(2*c.wait, c.maxCooldown)
		c.openUntil = c.now().Add(c.wait)
		c.signal()
	case !c.open && c.consecutive >= c.threshold:
		c.open = true
		c.wait = c.cooldown
		c.openUntil = c.now().Add(c.wait)
		c.obs.CircuitOpen(true)
		c.signal()
	}
	return c.open
}

// abandon releases a probe slot whose call was never made (shutdown).
func (c *circuit) abandon(probe bool) {
	if !probe {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.probing = false
	c.signal()
}

func (c *circuit) signal() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// state reports whether the circuit is open and whether a probe may be fetched now.
func (c *circuit) state() (open, probeDue bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open, c.open && !c.probing && !c.now().Before(c.openUntil)
}

// err is the readiness error while the circuit is open.
func (c *circuit) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.open {
		return nil
	}
	return fmt.Errorf("circuit open after %d consecutive 403/401 answers from Graph; next probe in %s",
		c.consecutive, max(0, c.openUntil.Sub(c.now())).Round(time.Second))
}

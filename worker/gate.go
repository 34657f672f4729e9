package worker

import (
	"context"
	"sync"
	"time"
)

// gate is the process-wide throttle gate: a Retry-After seen by any caller pauses every
// caller until it has passed. Pauses only ever extend.
type gate struct {
	mu    sync.Mutex
	until time.Time
	now   func() time.Time
	obs   Observer
}

// pauseUntil closes the gate until t, unless it is already closed for longer. A pause
// longer than MaxPause is cut to MaxPause.
func (g *gate) pauseUntil(t time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if limit := g.now().Add(MaxPause); t.After(limit) {
		t = limit
	}
	if t.After(g.until) {
		if !g.until.After(g.now()) {
			g.obs.Throttled(true)
		}
		g.until = t
	}
}

// wait blocks until the gate is open or ctx is done.
func (g *gate) wait(ctx context.Context) error {
	var waited time.Duration
	defer func() {
		if waited > 0 {
			g.obs.ThrottleWait(waited)
		}
	}()
	for {
		g.mu.Lock()
		now := g.now()
		remaining := g.until.Sub(now)
		if remaining <= 0 && !g.until.IsZero() {
			g.until = time.Time{}
			g.obs.Throttled(false)
		}
		g.mu.Unlock()
		if remaining <= 0 {
			return nil
		}
		t := time.NewTimer(remaining)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
			waited += remaining
		}
	}
}

// closed reports whether the gate is closed now.
func (g *gate) closed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until.After(g.now())
}

package worker

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Gate is the process-wide throttle gate: a Retry-After seen by any caller, or heard from
// another replica of the deployment, pauses every Graph call of the process until it has
// passed. Pauses only ever extend, and none lasts longer than MaxPause.
//
// It is the one owner of what the replicas share: build it first (NewGate), hand it to the
// worker (Deps.Gate) and to replica control (whose pauses go to PauseUntil), let the
// adaptive limiter report its cuts to Cut, and give it the control to tell (ShareWith) once
// that runs. Nothing is then wired through a closure declared before its target, and a
// pause heard before the worker runs is kept.
type Gate struct {
	now func() time.Time
	obs Observer

	mu     sync.Mutex
	until  time.Time
	sharer Sharer // nil until ShareWith
}

// Sharer tells the other replicas of a deployment what this one heard from Graph.
type Sharer interface {
	// SharePause tells them to pause until the given time (a Retry-After).
	SharePause(until time.Time)
	// ShareCut tells them this replica cut its adaptive rate to rate on a throttled answer.
	ShareCut(rate float64)
}

// NewGate returns an open gate. now and obs may be nil (time.Now, nothing observed).
func NewGate(now func() time.Time, obs Observer) *Gate {
	if now == nil {
		now = time.Now
	}
	if obs == nil {
		obs = nopObserver{}
	}
	return &Gate{now: now, obs: obs}
}

// ShareWith makes the gate tell s of the pauses and cuts this process hears from now on.
func (g *Gate) ShareWith(s Sharer) {
	g.mu.Lock()
	g.sharer = s
	g.mu.Unlock()
}

// PauseUntil closes the gate until t, unless it is already closed for longer: a pause heard
// from another replica. It is not shared again.
func (g *Gate) PauseUntil(t time.Time) { g.pauseUntil(t) }

// Cut tells the other replicas that this process cut its adaptive rate to rate
// (ratelimit.Config.OnCut).
func (g *Gate) Cut(rate float64) {
	if s := g.share(); s != nil {
		s.ShareCut(rate)
	}
}

// MinSharedPause is the shortest Retry-After shared with the other replicas. A shorter one
// (a token bucket's "next token in 50 ms") says more about the caller than about the
// deployment: shared, it makes every replica resume at the same instant, their calls then
// arrive together and meet the next 429, and the replicas fall into step. Each replica
// meets such a limit by itself, and the shared rate cut slows them all.
const MinSharedPause = time.Second

// throttled closes the gate for a Retry-After of d this process was given, and shares the
// pause when d is MinSharedPause or more.
func (g *Gate) throttled(d time.Duration) {
	t := g.now().Add(d)
	g.pauseUntil(t)
	if s := g.share(); s != nil && d >= MinSharedPause {
		s.SharePause(t)
	}
}

func (g *Gate) share() Sharer {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sharer
}

// pauseUntil closes the gate until t, unless it is already closed for longer. A pause
// longer than MaxPause is cut to MaxPause.
func (g *Gate) pauseUntil(t time.Time) {
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

// longPause is the error of a wait that would outlast its deadline.
type longPause struct{ remaining time.Duration }

func (e *longPause) Error() string {
	return fmt.Sprintf("the throttle gate stays closed for another %s", e.remaining.Round(time.Second))
}

// remaining is how long the gate stays closed from now; 0 when it is open.
func (g *Gate) remaining() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return max(0, g.until.Sub(g.now()))
}

// wait blocks until the gate is open or ctx is done. When the gate stays closed past
// deadline (a zero deadline is none) it returns a *longPause at once instead.
func (g *Gate) wait(ctx context.Context, deadline time.Time) error {
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
		if !deadline.IsZero() && now.Add(remaining).After(deadline) {
			return &longPause{remaining: remaining}
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
func (g *Gate) closed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until.After(g.now())
}

package ratelimit

import (
	"context"
	"math"
	"time"
)

// Grid is the schedule of call slots that the replicas of a deployment share, so that
// together their calls reach Graph evenly spaced rather than in clumps.
//
// Replicas pacing on their own, each at its share of the rate, place their calls at
// phases that drift against each other, and against a token bucket with a small burst
// (two calls at 20 calls/s) every moment their calls fall together is a 429: three such
// pacers at 0.7 of the limit meet 5-9% of 429s whatever they do with their rate, and every
// 429 cuts them all. On a grid, replica r of n calls at Start + (r/n + k)·T, T being the
// interval of its rate: the deployment's calls are then a single evenly spaced stream, as
// from one process.
//
// The grid is anchored on the leader's heartbeat as each replica receives it (see
// queue.Control), not on wall clocks, so that clocks need not agree; the delay of a core
// NATS message is far below the spacing of calls at a rate low enough for this to matter.
// The leader also grows the deployment's rate, once per heartbeat, and the others take its
// rate, so that they share one interval T.
type Grid struct {
	Start time.Time // a slot of the leader (rank 0), as heard by this replica
	Rank  int       // this replica's place on the grid, 0 to Of-1
	Of    int       // replicas on the grid; the grid is off below 2
	Until time.Time // without a heartbeat renewing it, the grid lapses then
}

// Lead makes this replica the leader of a grid of replicas (until until, unless renewed).
// At a heartbeat (grow), once per heartbeat, it grows the rate if the time since the last
// one was in use and saw no cut (in the slow start, once per round trip at most, see
// slowStartSpan): the replicas grow together, at the leader's heartbeat.
// Between heartbeats (the answer to a replica that has just started) it only re-anchors
// the grid, so that a replica joining puts its first calls on the grid at once. It returns
// the next slot of the leader, the rate and whether it is discovered, to announce.
func (a *Adaptive) Lead(of int, until time.Time, grow bool) (start time.Time, rate float64, discovered bool) {
	a.mu.Lock()
	now := a.cfg.Now()
	if grow && !a.prevLead.IsZero() {
		tick, elapsed := now.Sub(a.prevLead), now.Sub(a.windowFrom)
		inUse := float64(a.successes) >= a.rate*elapsed.Seconds()/2
		a.prevCount, a.prevSpan = a.successes, elapsed
		a.windowFrom, a.successes = now, 0
		due := !a.slowStart || now.Sub(a.raised) >= a.slowStartSpan()
		if elapsed >= tick*3/4 && inUse && due {
			a.raised = now
			a.setLocked(a.grown(), "raised")
			a.mu.Lock()
		}
	}
	if grow {
		a.prevLead = now
	}
	interval := a.interval()
	start = now
	if next := a.lastSlot.Add(interval); next.After(now) {
		start = next // the grid goes on from the leader's last call, without a jump
	}
	a.grid = Grid{Start: start, Rank: 0, Of: of, Until: until}
	rate, discovered = a.rate, !a.slowStart
	a.mu.Unlock()
	return start, rate, discovered
}

// Follow puts this replica on the leader's grid and takes the leader's rate, so that
// every replica's calls have the same interval. A rate more than twice or less than half
// this replica's own moves it by that factor only: a control message cannot set the rate
// at will, and the leader's slow start doubles per heartbeat at most. A rate of 0 moves
// only the grid (a re-ranking between ticks).
func (a *Adaptive) Follow(g Grid, rate float64, discovered bool) {
	a.mu.Lock()
	now := a.cfg.Now()
	a.grid = g
	a.prevLead = time.Time{}
	a.slowStart = a.slowStart && !discovered
	if !(rate > 0) || math.IsInf(rate, 0) {
		a.mu.Unlock()
		return
	}
	a.prevCount, a.prevSpan = a.successes, now.Sub(a.windowFrom)
	a.windowFrom, a.successes = now, 0
	a.setLocked(clamp(rate, a.rate/2, a.rate*2), "took the leading replica's rate")
}

// gridded reports whether the replicas share a grid now, and so the leader's rate and
// growth; a.mu is held.
func (a *Adaptive) gridded(now time.Time) bool {
	return a.grid.Of > 1 && now.Before(a.grid.Until)
}

// slotted reports whether calls are placed on the grid's slots now: while the replicas
// share one and the deployment's rate is at most GridMaxRate; a.mu is held.
func (a *Adaptive) slotted(now time.Time) bool {
	return a.gridded(now) && a.rate*float64(a.grid.Of) <= GridMaxRate
}

// GridMaxRate is the highest rate of a deployment, in calls per second, whose calls are
// placed on the grid's slots: 10 ms apart or more. Closer, a timer's or a NATS message's
// jitter (a millisecond or so) is a fair part of the spacing and would make calls miss
// their slots, and a token bucket admitting more than 100 calls/s has a burst of several
// calls (a tenth of a second's at the simulated Graph), which absorbs the clumps of
// replicas pacing on their own. Above it the replicas still share the leader's rate.
const GridMaxRate = 100

// interval is the time between two calls of this replica at its rate; a.mu is held.
func (a *Adaptive) interval() time.Duration {
	return time.Duration(float64(time.Second) / a.rate)
}

// waitGrid waits for this replica's next slot on the grid; the caller holds the turn. It
// reports false, at once, when there is no grid to pace on.
func (a *Adaptive) waitGrid(ctx context.Context) (bool, error) {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		wait, gridded := a.takeSlot()
		if !gridded {
			return false, nil
		}
		if wait <= 0 {
			return true, nil
		}
		// Sleep until the slot, then look again: the rate or the grid may have moved.
		if t == nil {
			t = time.NewTimer(wait)
		} else {
			t.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-t.C:
		}
	}
}

// takeSlot takes this replica's slot on the grid when it is due (returning 0), or returns
// how long until it is; gridded is false when calls are not placed on a grid.
func (a *Adaptive) takeSlot() (wait time.Duration, gridded bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	if !a.slotted(now) {
		return 0, false
	}
	slot := nextSlot(a.grid, a.interval(), a.lastSlot, now)
	if slot.After(now) {
		return slot.Sub(now), true
	}
	a.lastSlot = slot
	return 0, true
}

// nextSlot returns the first slot of g, for calls interval apart, that a call may take at
// now after the call that took last. A call late for its slot by less than half the gap
// to the next replica's slot still takes it; two calls of this replica are never closer
// than that much less than interval, so that a rate or grid that moved cannot put two
// calls into one place.
func nextSlot(g Grid, interval time.Duration, last, now time.Time) time.Time {
	of := max(g.Of, 1)
	slack := interval / time.Duration(2*of)
	earliest := now.Add(-slack)
	if !last.IsZero() {
		if e := last.Add(interval - slack); e.After(earliest) {
			earliest = e
		}
	}
	base := g.Start.Add(time.Duration(float64(interval) * float64(g.Rank%of) / float64(of)))
	k := math.Ceil(float64(earliest.Sub(base)) / float64(interval))
	return base.Add(time.Duration(k * float64(interval)))
}

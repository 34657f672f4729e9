// Package ratelimit paces Microsoft Graph calls at a rate it discovers: Graph publishes no
// limit for entitlement management, so an Adaptive limiter raises its rate while calls
// succeed and cuts it when Graph throttles (additive increase, multiplicative decrease, as
// TCP does), never above a ceiling. Replicas of one deployment share their cuts and split
// the deployment's rate between them through the hooks of Adaptive (see queue.Control).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Config tunes an Adaptive limiter. The zero value of every field but Ceiling means its
// default.
type Config struct {
	// Ceiling is the highest rate, in calls per second, this process ever uses. Required.
	Ceiling float64
	// Initial is the rate to start from; default 10 calls/s or the ceiling if lower.
	Initial float64
	// Floor is the lowest rate; default 0.5 calls/s or the ceiling if lower.
	Floor float64
	// Step is the rate added after each second in which calls succeeded and the limit was in
	// use, shared between the replicas (each adds Step / replicas). Zero, the default, adds
	// GrowthPerSecond of the current rate instead (at least 1 call/s for the deployment): the
	// sawtooth then takes the same few seconds to climb back at 20 calls/s as at 2,000,
	// where a fixed step is either too slow for a high limit or too steep for a low one.
	Step float64
	// Decrease is the factor applied on throttling; default 0.85. A sawtooth between
	// Decrease·R and R averages (1+Decrease)/2·R, so 0.85 keeps about 92% of the limit.
	Decrease float64
	// Cooldown is the shortest time between two cuts, so that the answers to calls already
	// in flight when the first 429 came do not cut again; default 1s.
	Cooldown time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger receives a line when the rate changes by more than a fifth; default none.
	Logger *slog.Logger
	// OnChange, if set, receives every new rate (for a gauge). It is called with the
	// limiter's lock held: it must be quick and must not call the limiter.
	OnChange func(rate float64)
	// OnCut, if set, receives the rate after a cut caused by this process's own throttled
	// answer (to tell the other replicas). It must not block.
	OnCut func(rate float64)
}

func (c Config) withDefaults() Config {
	if c.Initial == 0 {
		c.Initial = min(10, c.Ceiling)
	}
	if c.Floor == 0 {
		c.Floor = min(0.5, c.Ceiling)
	}
	if c.Decrease == 0 {
		c.Decrease = 0.85
	}
	if c.Cooldown == 0 {
		c.Cooldown = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	positive := func(name string, v float64) {
		if !(v > 0) || math.IsInf(v, 0) {
			errs = append(errs, fmt.Errorf("%s must be a positive number, got %g", name, v))
		}
	}
	positive("ceiling", c.Ceiling)
	positive("initial rate", c.Initial)
	positive("floor", c.Floor)
	if c.Step != 0 {
		positive("step", c.Step)
	}
	if !(c.Decrease > 0 && c.Decrease < 1) {
		errs = append(errs, fmt.Errorf("decrease must be between 0 and 1, got %g", c.Decrease))
	}
	if c.Floor > c.Ceiling {
		errs = append(errs, fmt.Errorf("floor %g is above the ceiling %g", c.Floor, c.Ceiling))
	}
	if c.Cooldown < 0 {
		errs = append(errs, fmt.Errorf("cooldown must not be negative, got %s", c.Cooldown))
	}
	return errors.Join(errs...)
}

// Adaptive is a rate limiter whose rate follows Graph's answers. It satisfies the worker's
// Limiter and RateFeedback. Until the first throttled answer it doubles its rate every
// half second of use (a slow start, so that a fresh process finds a high limit in a few seconds
// rather than minutes); after that it adds Config.Step per second. It is safe for
// concurrent use.
type Adaptive struct {
	cfg  Config
	lim  *rate.Limiter
	turn chan struct{} // held by the one caller taking a token from lim

	mu         sync.Mutex
	rate       float64
	replicas   int           // live replicas sharing the deployment's rate, this one included
	slowStart  bool          // no throttling seen yet: double rather than add
	windowFrom time.Time     // start of the current second of successes
	successes  int           // successes since windowFrom
	prevCount  int           // successes in the window before, and its length: with the
	prevSpan   time.Duration // current one, the rate Graph actually admitted lately
	lastCut    time.Time
	cooldown   time.Duration // after lastCut: Config.Cooldown, or longer for a slow Graph
	latency    time.Duration // smoothed time a call takes
	raised     time.Time     // the last raise at a heartbeat of the grid
	cutFrom    float64       // the rate the last cut started from: where Graph's limit was
	logged     float64       // the rate last logged
	grid       Grid          // the deployment's slots, when replicas share them (grid.go)
	lastSlot   time.Time     // the slot of the last call paced on the grid
	prevLead   time.Time     // the last heartbeat this replica led the grid at
}

// New returns an Adaptive limiter at its initial rate.
func New(cfg Config) (*Adaptive, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("adaptive rate: %w", err)
	}
	r := clamp(cfg.Initial, cfg.Floor, cfg.Ceiling)
	a := &Adaptive{
		cfg:        cfg,
		lim:        rate.NewLimiter(rate.Limit(r), burst(r)),
		turn:       make(chan struct{}, 1),
		rate:       r,
		replicas:   1,
		slowStart:  true,
		windowFrom: cfg.Now(),
		logged:     r,
	}
	if cfg.OnChange != nil {
		cfg.OnChange(r)
	}
	return a, nil
}

// Wait blocks until a call may be made, or ctx is done. Callers take their turn here, one
// at a time, rather than all inside the rate.Limiter: a reservation there keeps the rate of
// the moment it was made, so with 64 callers queued at 3 calls/s a raise would be felt only
// after the 20 s they had reserved, and a cut would let the calls already queued through at
// the old rate. Here only the caller whose turn it is waits at a rate that may be out of
// date, for one interval at most.
func (a *Adaptive) Wait(ctx context.Context) error {
	select {
	case a.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-a.turn }()
	if gridded, err := a.waitGrid(ctx); gridded {
		return err
	}
	return a.lim.Wait(ctx)
}

// Rate returns the current rate in calls per second.
func (a *Adaptive) Rate() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rate
}

// Succeeded reports an answer that was not throttling. After each second (half second in
// the slow start) in which at least half the rate's calls succeeded (the limit was in use,
// not idle), the rate grows: by Step, or doubled in the slow start. Counting seconds, not
// calls, keeps many calls in flight from inflating the increase. On a grid the rate grows
// at the leader's heartbeat instead (Lead, Follow).
func (a *Adaptive) Succeeded(took time.Duration) {
	a.mu.Lock()
	a.observeLatency(took)
	now := a.cfg.Now()
	a.successes++
	if a.gridded(now) {
		a.mu.Unlock()
		return
	}
	elapsed := now.Sub(a.windowFrom)
	window := time.Second
	if a.slowStart {
		window = a.slowStartSpan()
	}
	if elapsed < window {
		a.mu.Unlock()
		return
	}
	inUse := float64(a.successes) >= a.rate*elapsed.Seconds()/2
	a.prevCount, a.prevSpan = a.successes, elapsed
	a.windowFrom, a.successes = now, 0
	if !inUse {
		a.mu.Unlock()
		return
	}
	a.setLocked(a.grown(), "raised")
}

// grown is the rate after a second of success: plus Step (or GrowthPerSecond of the
// deployment's rate, at least 1 call/s) shared between the replicas, or doubled in the slow
// start (grown by half against a slow Graph); a.mu is held.
func (a *Adaptive) grown() float64 {
	if a.slowStart {
		if a.latency >= slowGraph {
			return slowGraphGrowth * a.rate
		}
		return 2 * a.rate
	}
	step := a.cfg.Step
	if step == 0 {
		step = max(1, a.rate*float64(a.replicas)*GrowthPerSecond)
		if a.rate >= a.cutFrom*(1-nearLimit) && a.rate <= a.cutFrom*(1+nearLimit) {
			step /= nearLimitSlowdown
		}
	}
	return a.rate + step/float64(a.replicas)
}

// Near the rate of the last cut (within nearLimit of it, where Graph's limit was found) the
// default growth is nearLimitSlowdown times slower, as TCP CUBIC flattens its window near
// the last loss: the rate climbs back quickly to just below the limit, then lingers there
// instead of going past it every few seconds. At a Graph latency of 1 s each crossing costs
// about a round trip of 429s before the cut comes back, so fewer crossings are fewer 429s.
// Past the band the growth is fast again, in case the limit went up.
const (
	nearLimit         = 0.05
	nearLimitSlowdown = 5
)

// Throttled reports a 429, 503 or 504. The rate is cut at most once per cooldown, to
// Decrease times the lower of the rate and the rate of successes over the last second or
// two (what Graph admitted).
func (a *Adaptive) Throttled(took, _ time.Duration, _ bool) {
	a.mu.Lock()
	a.observeLatency(took)
	a.mu.Unlock()
	if r, cut := a.cut("cut: Graph throttled"); cut && a.cfg.OnCut != nil {
		a.cfg.OnCut(r)
	}
}

// PeerThrottled cuts the rate because another replica of the deployment was throttled,
// at most once per cooldown like a throttled answer of its own.
func (a *Adaptive) PeerThrottled() { a.cut("cut: another replica was throttled") }

func (a *Adaptive) cut(why string) (float64, bool) {
	a.mu.Lock()
	now := a.cfg.Now()
	endsSlowStart := a.slowStart
	a.slowStart = false
	if !a.lastCut.IsZero() && now.Sub(a.lastCut) < a.cooldown {
		a.mu.Unlock()
		return 0, false
	}
	a.lastCut = now
	a.cooldown = max(a.cfg.Cooldown, time.Duration(cooldownRTTs*float64(a.latency)))
	// The cut that ends the slow start starts from the rate Graph admitted over the last
	// second or two, when that is below the limiter's rate: a rate far above the limit (the
	// doubling overshooting) then comes down in one step, not in several seconds of 429s.
	// Later cuts start from the rate itself, as AIMD does: the admitted rate then also
	// counts the time spent waiting out Retry-After, and cutting from it would sink the
	// sawtooth below the limit.
	base := a.rate
	span := a.prevSpan + now.Sub(a.windowFrom)
	if endsSlowStart && span >= 500*time.Millisecond {
		if admitted := float64(a.prevCount+a.successes) / span.Seconds(); admitted > 0 {
			base = min(base, admitted)
		}
	}
	a.prevCount, a.prevSpan = 0, 0
	a.windowFrom, a.successes = now, 0
	a.cutFrom = 0 // the admitted rate that ends the slow start counts its ramp: no estimate
	if !endsSlowStart {
		a.cutFrom = base
	}
	r := a.setLocked(base*a.cfg.Decrease, why)
	return r, true
}

// SetReplicas tells the limiter how many live replicas share the deployment's rate, this
// one included. When the number changes, the rate is scaled by old/new so that the
// deployment's total stays where it was: a replica joining takes its share from the others,
// one leaving hands its share to them.
func (a *Adaptive) SetReplicas(n int) {
	n = max(n, 1)
	a.mu.Lock()
	if n == a.replicas {
		a.mu.Unlock()
		return
	}
	old := a.replicas
	a.replicas = n
	a.cutFrom *= float64(old) / float64(n) // a share of the deployment's, like the rate
	if n == 1 {
		a.grid = Grid{} // alone: pace on its own again
	}
	a.setLocked(a.rate*float64(old)/float64(n), fmt.Sprintf("replicas %d -> %d", old, n))
}

// Adopt sets the rate to a share of a deployment rate already discovered by the other
// replicas, and ends the slow start: a replica that starts late does not probe again.
func (a *Adaptive) Adopt(share float64) {
	if !(share > 0) {
		return
	}
	a.mu.Lock()
	a.slowStart = false
	a.setLocked(share, "adopted the deployment's rate")
}

// setLocked sets the rate, unlocks, and reports the change. It returns the rate set.
func (a *Adaptive) setLocked(r float64, why string) float64 {
	r = clamp(r, a.cfg.Floor, a.cfg.Ceiling)
	changed := r != a.rate
	a.rate = r
	var logIt bool
	var from float64
	if changed {
		a.lim.SetLimitAt(a.cfg.Now(), rate.Limit(r))
		a.lim.SetBurstAt(a.cfg.Now(), burst(r))
		if math.Abs(r-a.logged) > a.logged/5 {
			logIt, from, a.logged = true, a.logged, r
		}
	}
	if changed && a.cfg.OnChange != nil {
		a.cfg.OnChange(r) // under the lock, so that the last value reported is the rate
	}
	a.mu.Unlock()
	if logIt && a.cfg.Logger != nil {
		a.cfg.Logger.Info("Graph call rate changed", "from", round(from), "to", round(r), "why", why)
	}
	return r
}

// cooldownRTTs is the cooldown after a cut in call latencies: the answers to the calls that
// were in flight when the rate was cut come back within about one latency, and the 429s
// among them say nothing new (TCP cuts its window once per round trip for the same reason).
const cooldownRTTs = 1.5

// observeLatency weighs one call's duration into the smoothed latency; a.mu is held.
func (a *Adaptive) observeLatency(took time.Duration) {
	if took <= 0 {
		return
	}
	if a.latency == 0 {
		a.latency = took
		return
	}
	a.latency += (took - a.latency) / 8
}

// GrowthPerSecond is the share of its rate the limiter adds per second of success when no
// Step is set. With Decrease 0.85 a cut is made good in about three seconds, and the calls
// that overshoot the limit before the next cut stay a small share of those made.
const GrowthPerSecond = 0.05

// slowStartWindow is how often the slow start doubles the rate: from 10/s it passes 300/s
// within three seconds.
const slowStartWindow = 500 * time.Millisecond

// A Graph this slow (its smoothed latency) answers each doubling of the slow start a round
// trip late, by when the calls over its limit have been made: a doubling that crosses the
// limit costs up to a round trip of the limit's calls in 429s, a third of a 60 s run's
// budget of them at 1 s. The slow start grows by half instead (slowGraphGrowth), which
// halves that overshoot and still passes 1,000 calls/s from 10 within 15 s.
const (
	slowGraph       = 500 * time.Millisecond
	slowGraphGrowth = 1.5
)

// slowStartSpan is the least time between two doublings of the slow start: one round trip
// (as TCP doubles once per round trip) and a quarter more, so that the throttled answers to
// the first calls at a doubled rate come back before the next doubling, not just after it;
// at 1 s of latency a doubling that raced its own answers overshot to four times the
// limit. a.mu is held.
func (a *Adaptive) slowStartSpan() time.Duration {
	return max(slowStartWindow, a.latency*5/4)
}

// burst allows a tenth of a second's calls at once, at least one.
func burst(r float64) int { return max(1, int(r/10)) }

// Fixed returns a limiter of r calls per second with the burst the adaptive limiter uses
// at that rate (a tenth of a second's calls, at least one): REPROCESSOR_RATE set to a number.
func Fixed(r float64) *rate.Limiter { return rate.NewLimiter(rate.Limit(r), burst(r)) }

func clamp(v, lo, hi float64) float64 { return max(lo, min(hi, v)) }

func round(v float64) float64 { return math.Round(v*100) / 100 }

// Discovered reports whether throttling has shaped the rate (the slow start is over).
func (a *Adaptive) Discovered() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.slowStart
}

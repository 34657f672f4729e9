package worker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the pump: the fetch loop, the goroutines that work fetched messages, and
// the heartbeats that keep long-running ones from being redelivered.

// pump feeds one source's messages to a handler, at most allowed() at once. While nothing
// holds work back it also keeps up to half as many more fetched and waiting for a free
// goroutine, so that a goroutine done with one message starts the next at once instead of
// waiting out a pull request's round trip.
type pump struct {
	name       string
	src        Source
	allowed    func() (n int, prefetch bool) // prefetch: nothing holds work back
	slots      func() int                    // the goroutines wanted now: a new one starts only below it
	full       int                           // the most slots() ever says: the most goroutines
	poll       time.Duration                 // how often a fetch loop with nothing to do looks again unwoken
	handle     func(ctx, work context.Context, m Message)
	inflight   atomic.Int64  // fetched and not yet settled, waiting ones included
	goroutines int           // started by start, which only the fetch loop calls
	wakeup     chan struct{} // a slot was freed or a hold lifted: the fetch loop looks again
	work       chan Message  // hands a message to an idle goroutine
	waiting    chan Message  // fetched messages no goroutine was free for
	observe    bool          // report in-flight counts to the Observer
}

func newPump(name string, src Source, full int, slots func() int, allowed func() (int, bool), handle func(ctx, work context.Context, m Message), observe bool) *pump {
	return &pump{
		name: name, src: src, allowed: allowed, slots: slots, full: full, poll: 250 * time.Millisecond,
		handle: handle, observe: observe,
		wakeup:  make(chan struct{}, 1),
		work:    make(chan Message),
		waiting: make(chan Message, full+prefetchFor(full)), // at most every message in flight
	}
}

// prefetchFor is the fetch-ahead for n slots.
func prefetchFor(n int) int { return max(1, n/2) }

// fetchable is how many messages may be fetched and not yet settled now.
func (p *pump) fetchable() int {
	n, prefetch := p.allowed()
	if prefetch {
		return n + prefetchFor(n)
	}
	return n
}

func (w *Worker) fetchLoop(ctx, work context.Context, p *pump) {
	errDelay := Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}
	failures := 0
	for ctx.Err() == nil {
		allowed, inflight := p.fetchable(), int(p.inflight.Load())
		free := allowed - inflight
		// Pull in batches: while work is under way, wait until a quarter of the slots are
		// free rather than sending a pull request per freed slot.
		if free <= 0 || (inflight > 0 && free < max(1, allowed/4)) {
			p.waitSlot(ctx, p.poll)
			continue
		}
		err := p.src.Fetch(ctx, free, func(m Message) { w.start(ctx, work, p, m) })
		if err != nil && ctx.Err() == nil {
			failures++
			d := errDelay.ceiling(failures)
			w.log.Warn("fetch failed; retrying", "from", p.name, "err", err, "in", d)
			sleep(ctx, d)
			continue
		}
		failures = 0
	}
}

// allowedChecks is how many state checks may be in flight now: none while Graph refuses
// us or no token can be had, as for requests.
func (w *Worker) allowedChecks() (int, bool) {
	if open, _ := w.circuit.state(); open || w.credDown.Load() || w.gate.remaining() > fetchPause {
		return 0, false
	}
	if w.deps.Hold != nil && w.deps.Hold() != nil {
		return 0, false
	}
	return w.cfg.Verify.Concurrency, true
}

// fetchPause is the longest pause of the throttle gate during which fetching goes on: what
// is fetched during a longer one would only wait, or be handed back for when it ends.
const fetchPause = 5 * time.Second

// allowed is how many messages may be in flight now.
func (w *Worker) allowed() (int, bool) {
	if open, probeDue := w.circuit.state(); open {
		if probeDue {
			return 1, false
		}
		return 0, false
	}
	if w.credDown.Load() {
		return 1, false
	}
	if w.gate.remaining() > fetchPause {
		return 0, false
	}
	if w.deps.Hold != nil {
		if err := w.deps.Hold(); err != nil {
			return 0, false
		}
	}
	return w.limit.Limit(), true
}

// wake tells the fetch loop to look again at what it may fetch: a slot was freed, or a
// hold lifted.
func (p *pump) wake() {
	select {
	case p.wakeup <- struct{}{}:
	default:
	}
}

// Wake makes the fetch loops look again at once at what they may fetch. Call it when what
// Deps.Hold reported has lifted (a Graph token arrived): otherwise an idle worker notices on
// its next poll, up to 250 ms later.
func (w *Worker) Wake() {
	for _, p := range []*pump{w.requests, w.checks} {
		if p != nil {
			p.wake()
		}
	}
}

func (p *pump) waitSlot(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-p.wakeup:
	case <-t.C:
	}
}

func (w *Worker) start(ctx, work context.Context, p *pump, m Message) {
	p.inflight.Add(1)
	w.handlers.Add(1)
	w.beats.add(m, w.cfg.Now())
	select {
	case p.work <- m: // an idle goroutine of the pump takes it
	default:
		// Goroutines are kept once started: after the limit falls, more may be idle than it
		// allows, but what they are handed stays within fetchable.
		if p.goroutines < min(p.full, p.slots()) {
			p.goroutines++
			w.pool.Add(1)
			go w.serve(ctx, work, p, m)
			return
		}
		p.waiting <- m // never blocks: it has room for every message in flight
	}
}

// serve works m, then whatever else the pump hands it, until the pump stops. A pump keeps
// its goroutines (at most its concurrency) instead of starting one per message: their
// stacks have grown to what a Graph call and a publish need, and growing a fresh stack for
// every message cost about a tenth of the CPU at full speed.
func (w *Worker) serve(ctx, work context.Context, p *pump, m Message) {
	defer w.pool.Done()
	for {
		w.handleOne(ctx, work, p, m)
		select {
		case m = <-p.waiting:
			continue
		default:
		}
		select {
		case m = <-p.waiting:
		case m = <-p.work:
		case <-w.poolStop:
			return
		}
	}
}

// sleep waits for d or ctx; it reports whether the full wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// heartbeats marks long-running messages in progress so their ack deadline does not pass
// while they wait for a retry, the throttle gate or the circuit: one goroutine for all.
type heartbeats struct {
	mu sync.Mutex
	m  map[Message]time.Time
}

func (h *heartbeats) add(m Message, at time.Time) {
	h.mu.Lock()
	h.m[m] = at
	h.mu.Unlock()
}

func (h *heartbeats) remove(m Message) {
	h.mu.Lock()
	delete(h.m, m)
	h.mu.Unlock()
}

func (h *heartbeats) run(ctx context.Context, every time.Duration, now func() time.Time) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cutoff := now().Add(-every)
		h.mu.Lock()
		due := make([]Message, 0, len(h.m))
		for m, since := range h.m {
			if since.Before(cutoff) {
				due = append(due, m)
			}
		}
		h.mu.Unlock()
		for _, m := range due {
			_ = m.InProgress() // a failure here shows up as a redelivery, which the coalescer absorbs
		}
	}
}

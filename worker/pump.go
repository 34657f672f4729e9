package worker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the pump: the fetch loop, the goroutines that work fetched messages, and
// the heartbeats that keep long-running ones from being redelivered.

// pump feeds one source's messages to a handler, at most allowed() at once. While every
// slot is allowed it also keeps up to prefetch more messages fetched and waiting for a free
// goroutine, so that a goroutine done with one message starts the next at once instead of
// waiting out a pull request's round trip.
type pump struct {
	name       string
	src        Source
	allowed    func() int
	full       int // allowed() when nothing holds work back: the most goroutines
	prefetch   int
	poll       time.Duration // how often a fetch loop with nothing to do looks again unwoken
	handle     func(ctx, work context.Context, m Message)
	inflight   atomic.Int64  // fetched and not yet settled, waiting ones included
	goroutines int           // started by start, which only the fetch loop calls
	wakeup     chan struct{} // a slot was freed or a hold lifted: the fetch loop looks again
	work       chan Message  // hands a message to an idle goroutine
	waiting    chan Message  // fetched messages no goroutine was free for
	observe    bool          // report in-flight counts to the Observer
}

func newPump(name string, src Source, full int, allowed func() int, handle func(ctx, work context.Context, m Message), observe bool) *pump {
	prefetch := max(1, full/2)
	return &pump{
		name: name, src: src, allowed: allowed, full: full, prefetch: prefetch, poll: 250 * time.Millisecond,
		handle: handle, observe: observe,
		wakeup:  make(chan struct{}, 1),
		work:    make(chan Message),
		waiting: make(chan Message, full+prefetch), // at most every message in flight
	}
}

// fetchable is how many messages may be fetched and not yet settled now.
func (p *pump) fetchable() int {
	allowed := p.allowed()
	if allowed >= p.full {
		return allowed + p.prefetch
	}
	return allowed
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
func (w *Worker) allowedChecks() int {
	if open, _ := w.circuit.state(); open || w.credDown.Load() {
		return 0
	}
	if w.deps.Hold != nil && w.deps.Hold() != nil {
		return 0
	}
	return w.cfg.Verify.Concurrency
}

// allowed is how many messages may be in flight now.
func (w *Worker) allowed() int {
	if open, probeDue := w.circuit.state(); open {
		if probeDue {
			return 1
		}
		return 0
	}
	if w.credDown.Load() {
		return 1
	}
	if w.deps.Hold != nil {
		if err := w.deps.Hold(); err != nil {
			return 0
		}
	}
	return w.cfg.Concurrency
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
		if p.goroutines < p.full {
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

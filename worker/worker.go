package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
)

// Worker takes request messages from a Source and settles each one.
type Worker struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	obs  Observer

	gate     *Gate
	circuit  *circuit
	co       *coalescer
	attempts attemptLog
	beats    heartbeats

	traceOff bool // Config.Tracer is a no-op one: spans are not built (trace.go)

	limit    ConcurrencyLimit // how many requests may be worked at once
	requests *pump
	checks   *pump          // nil when tracking is off
	handlers sync.WaitGroup // messages being worked
	pool     sync.WaitGroup // the pumps' goroutines
	poolStop chan struct{}  // closed when Run ends: idle goroutines exit
	credDown atomic.Bool

	publishDown atomic.Pointer[publishFailure] // the last publish that gave up; nil once one succeeds
	ackDown     atomic.Pointer[error]          // the last ack not confirmed; nil once one is
}

// New returns a worker; it does nothing until Run.
func New(cfg Config, deps Deps) (*Worker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	if deps.Source == nil || deps.Graph == nil || deps.Events == nil || deps.DeadLetters == nil {
		return nil, errors.New("worker: Source, Graph, Events and DeadLetters are required")
	}
	if cfg.Verify.Enabled && (deps.Checks == nil || deps.Scheduler == nil || deps.States == nil) {
		return nil, errNoTracking
	}
	obs := deps.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	w := &Worker{
		cfg:      cfg,
		deps:     deps,
		log:      cfg.Logger,
		obs:      obs,
		gate:     deps.Gate,
		circuit:  newCircuit(cfg.CircuitThreshold, cfg.CircuitCooldown, cfg.Now, obs),
		co:       newCoalescer(max(cfg.CoalesceWindow, 0)),
		attempts: attemptLog{m: make(map[msgKey]attemptEntry)},
		beats:    heartbeats{m: make(map[Message]time.Time)},
		poolStop: make(chan struct{}),
	}
	_, w.traceOff = cfg.Tracer.(noop.Tracer)
	if w.gate == nil {
		w.gate = NewGate(cfg.Now, obs)
	}
	w.limit = deps.Concurrency
	if w.limit == nil {
		w.limit = fixedConcurrency(cfg.Concurrency)
	}
	w.requests = newPump("requests", deps.Source, cfg.Concurrency, w.limit.Limit, w.allowed, w.handle, true)
	if cfg.Verify.Enabled {
		checks := cfg.Verify.Concurrency
		w.checks = newPump("state checks", deps.Checks, checks, func() int { return checks }, w.allowedChecks, w.handleCheck, false)
	}
	obs.CircuitOpen(false)
	obs.Throttled(false)
	return w, nil
}

// feedback passes a Graph answer on to an adaptive limiter, and turns a Retry-After on a
// 429, 503 or 504 into a pause of the whole process, shared with the other replicas.
func (w *Worker) feedback(resp Response, c classification, took time.Duration) {
	if c.verdict == verdictCredential || (c.verdict == verdictRetry && resp.Status == 0) {
		return // no answer from Graph: nothing to learn about its rate
	}
	throttled := c.verdict == verdictThrottled
	// A Retry-After of 0 or in the past says nothing: it counts as missing.
	retryAfter := resp.HasRetryAfter && resp.RetryAfter > 0
	if fb := w.deps.Feedback; fb != nil {
		if throttled {
			fb.Throttled(took, min(resp.RetryAfter, MaxPause), retryAfter)
		} else {
			fb.Succeeded(took)
		}
	}
	if throttled && retryAfter {
		w.gate.throttled(min(resp.RetryAfter, MaxPause))
	}
}

// Ready reports why the worker should not be sent traffic: the circuit is open, Graph
// tokens cannot be had, or events, dead letters or state checks cannot be stored.
func (w *Worker) Ready() error {
	if err := w.circuit.err(); err != nil {
		return err
	}
	if w.credDown.Load() {
		return errors.New("holding messages: no Graph token can be obtained")
	}
	if p := w.publishDown.Load(); p != nil {
		return fmt.Errorf("handing messages back: %s cannot be stored: %w", p.what, p.err)
	}
	if err := w.ackDown.Load(); err != nil {
		return fmt.Errorf("acks are not confirmed, so settled messages come back: %w", *err)
	}
	return nil
}

// Run fetches and works messages until ctx is done, then shuts down in order: it stops
// fetching, lets in-flight work finish within the shutdown timeout, hands back with a short
// delay whatever is still waiting, and returns once every message is settled or handed back.
func (w *Worker) Run(ctx context.Context) error {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	beatsDone := make(chan struct{})
	go func() {
		defer close(beatsDone)
		w.beats.run(work, w.cfg.Heartbeat, w.cfg.Now)
	}()

	var pumps sync.WaitGroup
	for _, p := range []*pump{w.requests, w.checks} {
		if p != nil {
			pumps.Go(func() { w.fetchLoop(ctx, work, p) })
		}
	}
	pumps.Wait()

	w.log.Info("stopping: no more fetching; waiting for in-flight work", "in_flight", w.requests.inflight.Load(), "timeout", w.cfg.ShutdownTimeout)
	finished := make(chan struct{})
	go func() {
		w.handlers.Wait()
		close(finished)
	}()
	timer := time.NewTimer(w.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-finished:
	case <-timer.C:
		w.log.Warn("shutdown timeout: handing back unfinished messages", "in_flight", w.requests.inflight.Load())
		cancelWork()
		<-finished
	}
	cancelWork()
	close(w.poolStop)
	w.pool.Wait()
	<-beatsDone
	w.log.Info("worker stopped")
	return nil
}

type nopObserver struct{}

func (nopObserver) Completed(string, time.Duration) {}
func (nopObserver) Retry(string)                    {}
func (nopObserver) StateChanged(string)             {}
func (nopObserver) InFlight(int)                    {}
func (nopObserver) Throttled(bool)                  {}
func (nopObserver) ThrottleWait(time.Duration)      {}
func (nopObserver) CircuitOpen(bool)                {}

// fixedConcurrency is the limit without a ConcurrencyLimit: always the configured one.
type fixedConcurrency int

func (f fixedConcurrency) Limit() int          { return int(f) }
func (fixedConcurrency) Observe(time.Duration) {}

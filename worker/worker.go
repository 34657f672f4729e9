package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Config tunes the worker. The zero value of each field means its default.
type Config struct {
	Source           string        // the CloudEvent source, "reprocessor/<instance>"
	Concurrency      int           // messages worked at once; default 16
	MaxDeliver       int           // deliveries before a retryable failure ends retries_exhausted; default 5
	DeliveryBudget   time.Duration // time one delivery may spend retrying in process before it is nak'd; default 1m
	Backoff          Backoff       // retry delays; default 1s doubling to 1m, full jitter
	CoalesceWindow   time.Duration // how long an accepted id coalesces duplicates; default 1m, negative turns it off
	CircuitThreshold int           // consecutive 403s (or 401s after a refresh) that open the circuit; default 20
	CircuitCooldown  time.Duration // how long the circuit stays open before a probe; default 30s
	Heartbeat        time.Duration // how often a long-running message is marked in progress; default 10s
	ShutdownTimeout  time.Duration // how long in-flight work may take to finish at shutdown; default 30s
	ShutdownNakDelay time.Duration // redelivery delay of what shutdown hands back; default 1s
	PublishBudget    time.Duration // how long storing an event, dead letter or check is retried before the message is handed back; default 30s
	Verify           VerifyConfig  // state tracking after accepted
	Logger           *slog.Logger
	Now              func() time.Time // default time.Now
	Rand             func() float64   // [0,1); default math/rand/v2
}

// Defaults returns the value each zero field of a Config stands for: the one place the
// worker's defaults are written (the configuration's defaults read them from here).
func Defaults() Config {
	return Config{
		Source:           "reprocessor/local",
		Concurrency:      16,
		MaxDeliver:       5,
		DeliveryBudget:   time.Minute,
		Backoff:          Backoff{Initial: time.Second, Max: time.Minute},
		CoalesceWindow:   time.Minute,
		CircuitThreshold: 20,
		CircuitCooldown:  30 * time.Second,
		Heartbeat:        10 * time.Second,
		ShutdownTimeout:  30 * time.Second,
		ShutdownNakDelay: time.Second,
		PublishBudget:    30 * time.Second,
		Verify: VerifyConfig{
			Concurrency: 4,
			FirstDelay:  5 * time.Second,
			MaxDelay:    time.Minute,
			Deadline:    10 * time.Minute,
		},
	}
}

func (c Config) withDefaults() Config {
	d := Defaults()
	c.Source = cmp.Or(c.Source, d.Source)
	c.Concurrency = cmp.Or(c.Concurrency, d.Concurrency)
	c.MaxDeliver = cmp.Or(c.MaxDeliver, d.MaxDeliver)
	c.DeliveryBudget = cmp.Or(c.DeliveryBudget, d.DeliveryBudget)
	c.Backoff.Initial = cmp.Or(c.Backoff.Initial, d.Backoff.Initial)
	c.Backoff.Max = cmp.Or(c.Backoff.Max, d.Backoff.Max)
	c.CoalesceWindow = cmp.Or(c.CoalesceWindow, d.CoalesceWindow)
	c.CircuitThreshold = cmp.Or(c.CircuitThreshold, d.CircuitThreshold)
	c.CircuitCooldown = cmp.Or(c.CircuitCooldown, d.CircuitCooldown)
	c.Heartbeat = cmp.Or(c.Heartbeat, d.Heartbeat)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, d.ShutdownTimeout)
	c.ShutdownNakDelay = cmp.Or(c.ShutdownNakDelay, d.ShutdownNakDelay)
	c.PublishBudget = cmp.Or(c.PublishBudget, d.PublishBudget)
	c.Verify = c.Verify.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency must be at least 1, got %d", c.Concurrency))
	}
	if c.MaxDeliver < 1 {
		errs = append(errs, fmt.Errorf("max deliver must be at least 1, got %d", c.MaxDeliver))
	}
	if c.CircuitThreshold < 1 {
		errs = append(errs, fmt.Errorf("circuit threshold must be at least 1, got %d", c.CircuitThreshold))
	}
	if c.Backoff.Max < c.Backoff.Initial {
		errs = append(errs, fmt.Errorf("backoff max %s is below backoff initial %s", c.Backoff.Max, c.Backoff.Initial))
	}
	return errors.Join(errs...)
}

// Deps are the adapters the worker drives.
type Deps struct {
	Source      Source
	Graph       Graph
	Events      EventPublisher
	DeadLetters DeadLetterer
	Limiter     Limiter      // nil: no rate limit
	Observer    Observer     // nil: nothing observed
	Hold        func() error // optional: while it returns an error, nothing is fetched (e.g. no Graph token yet)
	Gate        *Gate        // optional: the process's throttle gate, shared with replica control; default a gate of its own

	// State tracking, required when Config.Verify.Enabled.
	Checks    Source         // the verify work queue
	Scheduler CheckScheduler // puts checks on it
	States    StateReader    // reads assignments
}

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

	requests *pump
	checks   *pump          // nil when tracking is off
	handlers sync.WaitGroup // messages being worked
	pool     sync.WaitGroup // the pumps' goroutines
	poolStop chan struct{}  // closed when Run ends: idle goroutines exit
	credDown atomic.Bool

	publishDown atomic.Pointer[publishFailure] // the last publish that gave up; nil once one succeeds
	ackDown     atomic.Pointer[error]          // the last ack not confirmed; nil once one is
}

// publishFailure is why a message was last handed back for want of storing what it
// produced.
type publishFailure struct {
	what string
	err  error
}

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
	if w.gate == nil {
		w.gate = NewGate(cfg.Now, obs)
	}
	w.requests = newPump("requests", deps.Source, cfg.Concurrency, w.allowed, w.handle, true)
	if cfg.Verify.Enabled {
		w.checks = newPump("state checks", deps.Checks, cfg.Verify.Concurrency, w.allowedChecks, w.handleCheck, false)
	}
	obs.CircuitOpen(false)
	obs.Throttled(false)
	return w, nil
}

// feedback passes a Graph answer on to an adaptive limiter, and turns a Retry-After on a
// 429, 503 or 504 into a pause of the whole process, shared with the other replicas.
func (w *Worker) feedback(resp Response, c classification) {
	if c.verdict == verdictCredential || (c.verdict == verdictRetry && resp.Status == 0) {
		return // no answer from Graph: nothing to learn about its rate
	}
	throttled := c.verdict == verdictThrottled
	// A Retry-After of 0 or in the past says nothing: it counts as missing.
	retryAfter := resp.HasRetryAfter && resp.RetryAfter > 0
	if fb, ok := w.deps.Limiter.(RateFeedback); ok {
		if throttled {
			fb.Throttled(min(resp.RetryAfter, MaxPause), retryAfter)
		} else {
			fb.Succeeded()
		}
	}
	if throttled && retryAfter {
		w.gate.throttled(w.cfg.Now().Add(min(resp.RetryAfter, MaxPause)))
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

func (w *Worker) handleOne(ctx, work context.Context, p *pump, m Message) {
	defer w.handlers.Done()
	if p.observe {
		w.obs.InFlight(1)
	}
	defer func() {
		w.beats.remove(m)
		p.inflight.Add(-1)
		if p.observe {
			w.obs.InFlight(-1)
		}
		p.wake()
	}()
	defer w.recoverPanic(work, p, m)
	p.handle(ctx, work, m)
}

// recoverPanic keeps a bug met by one message from taking the process down: the server
// would deliver the message again to the restarted process, which would crash again, for
// ever. The message is handed back for a later delivery; a request that has panicked on
// MaxDeliver deliveries ends failed (retries_exhausted), so that it reaches the dead-letter
// stream instead of circling.
func (w *Worker) recoverPanic(work context.Context, p *pump, m Message) {
	r := recover()
	if r == nil {
		return
	}
	d := m.Delivery()
	w.log.Error("a message made the worker panic: this is a bug", "from", p.name, "stream_seq", d.StreamSeq,
		"delivery", d.NumDelivered, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if p == w.requests && d.NumDelivered >= uint64(w.cfg.MaxDeliver) {
		defer func() {
			if recover() != nil {
				w.handBack(m, d, 30*time.Second, "panicked again while settling")
			}
		}()
		req, _ := Decode(d.Data)
		detail := fmt.Sprintf("gave up after %d deliveries: the worker panicked: %v", d.NumDelivered, r)
		w.settle(work, m, d, req, result{kind: KindFailed, code: CodeRetriesExhausted, detail: detail}, w.cfg.Now())
		return
	}
	w.handBack(m, d, 30*time.Second, "the worker panicked")
}

// result is how a request ends.
type result struct {
	kind     string
	code     string
	detail   string
	resp     Response
	attempts int
	before   string // the state read before reprocess (REPROCESSOR_PRECHECK), if any
}

// handle settles one message: a terminal event (and a dead letter where due) then an ack,
// or a nak that hands it back for a later delivery.
func (w *Worker) handle(ctx, work context.Context, m Message) {
	d := m.Delivery()
	began := w.cfg.Now()
	w.obs.MessageReceived(d.NumDelivered > 1)
	w.obs.QueueWait(began.Sub(d.Timestamp))
	if ctx.Err() != nil {
		w.handBack(m, d, w.cfg.ShutdownNakDelay, "shutting down")
		return
	}

	req, err := Decode(d.Data)
	if err != nil {
		var de *DecodeError
		errors.As(err, &de)
		w.settle(work, m, d, req, result{kind: KindRejected, code: de.Code, detail: de.Detail}, began)
		return
	}

	key := keyOf(d)
	switch w.co.claim(req.ID, key, began) {
	case claimSameInFlight:
		return // a second delivery of a message this process is still working: that work settles it
	case claimCoalesce:
		w.settle(work, m, d, req, result{kind: KindCoalesced}, began)
		return
	case claimSameAccepted:
		w.settle(work, m, d, req, result{kind: KindAccepted, attempts: w.attempts.get(key).attempts}, began)
		return
	}
	accepted := false
	defer func() { w.co.release(req.ID, key, accepted, w.cfg.Now()) }()

	// A request whose outcome is known but could not be stored last time is settled with
	// that outcome, without calling Graph again.
	prev := w.attempts.get(key)
	if prev.settled != nil {
		accepted = w.settle(work, m, d, req, *prev.settled, began) && prev.settled.kind == KindAccepted
		return
	}
	res, nakDelay, terminal := w.call(ctx, work, d, req, began, prev.attempts)
	if !terminal {
		w.handBack(m, d, nakDelay, res.detail)
		return
	}
	accepted = w.settle(work, m, d, req, res, began) && res.kind == KindAccepted
}

// call makes Graph calls for req until an answer settles it or the message must be handed
// back with the returned delay; attempts is the count of calls made on earlier deliveries.
func (w *Worker) call(ctx, work context.Context, d Delivery, req Request, began time.Time, attempts int) (res result, nakDelay time.Duration, terminal bool) {
	key := keyOf(d)
	defer func() {
		if !terminal {
			w.attempts.set(key, attemptEntry{attempts: attempts})
		}
	}()
	deadline := began.Add(w.cfg.DeliveryBudget)
	retries, credRetries := 0, 0
	stopping := result{detail: "shutting down"}
	before := w.precheck(ctx, work, d, req)
	for {
		probe, err := w.circuit.admit(ctx)
		if err != nil {
			return stopping, w.cfg.ShutdownNakDelay, false
		}
		if err := w.pace(ctx); err != nil {
			w.circuit.abandon(probe)
			return stopping, w.cfg.ShutdownNakDelay, false
		}
		resp, err := w.deps.Graph.Reprocess(work, req.ID)
		for range resp.AuthRetries {
			w.obs.Retry(RetryUnauthorized)
		}
		c := classify(resp, err)
		w.feedback(resp, c)
		wasOpen, _ := w.circuit.state()
		dec := decide(c.verdict, wasOpen)
		w.applyCircuit(dec.circuit, probe)
		if dec.request == actHoldToken {
			if !w.credDown.Swap(true) {
				w.log.Warn("no Graph token: holding messages and pausing fetches until one is obtained", "err", err)
			}
			credRetries++
			if !sleep(ctx, Backoff{Initial: time.Second, Max: 30 * time.Second}.Delay(credRetries, Response{}, w.cfg.Rand)) {
				return stopping, w.cfg.ShutdownNakDelay, false
			}
			continue
		}
		if w.credDown.Swap(false) {
			w.log.Info("Graph token obtained again: resuming")
		}
		attempts++
		res = result{resp: resp, attempts: attempts, code: c.code, detail: c.detail, before: before}
		switch dec.request {
		case actSettle:
			res.kind = dec.kind
			return res, 0, true
		case actHoldCircuit:
			w.logFor(d, req).Debug("Graph refused while the circuit is open: holding the message", "status", resp.Status)
			continue
		}
		// actRetry
		retries++
		w.obs.Retry(c.reason)
		delay := w.cfg.Backoff.Delay(retries, resp, w.cfg.Rand)
		now := w.cfg.Now()
		if now.Add(delay).After(deadline) {
			if d.NumDelivered >= uint64(w.cfg.MaxDeliver) {
				res.kind, res.code = KindFailed, CodeRetriesExhausted
				res.detail = fmt.Sprintf("gave up after %d deliveries: %s", d.NumDelivered, c.detail)
				return res, 0, true
			}
			res.detail = c.detail
			return res, delay, false
		}
		w.logFor(d, req).Debug("retrying Graph call", "reason", c.reason, "detail", c.detail, "in", delay)
		if !sleep(ctx, delay) {
			return stopping, w.cfg.ShutdownNakDelay, false
		}
	}
}

// pace waits for the throttle gate and the rate limiter.
func (w *Worker) pace(ctx context.Context) error {
	for {
		if err := w.gate.wait(ctx); err != nil {
			return err
		}
		if w.deps.Limiter != nil {
			t0 := w.cfg.Now()
			if err := w.deps.Limiter.Wait(ctx); err != nil {
				return err
			}
			w.obs.RateLimitWait(w.cfg.Now().Sub(t0))
		}
		if !w.gate.closed() {
			return nil
		}
	}
}

// settle publishes the terminal event, then dead-letters or schedules the state check as
// the stored outcome requires, then acks. The terminal event goes first and carries the
// same id whatever the outcome: when a redelivery (after a lost ack, or a crash after the
// publish) reaches another outcome than an earlier delivery, the stream keeps the first
// and drops this one, and what follows is done for the outcome that stands, so that the
// dead-letter stream never holds a request that ended accepted. A crash between the event
// and the dead letter or check is mended by the redelivery: its event is a duplicate, and
// the dead letter and check are stored then (their ids keep them single too).
//
// It reports whether the message was settled; when what it must store cannot be stored
// within the publish budget (or before shutdown), the message is handed back instead, the
// outcome remembered for its next delivery to this process, and readiness says why.
func (w *Worker) settle(work context.Context, m Message, d Delivery, req Request, res result, began time.Time) bool {
	now := w.cfg.Now()
	ev := w.event(d, req, res, now)
	stored, err := w.publish(work, "event", func(ctx context.Context) (Stored, error) { return w.deps.Events.PublishEvent(ctx, ev) })
	if err != nil {
		w.keepOutcome(m, d, res, "event", err)
		return false
	}
	kind, dl := res.kind, DeadLetter{Code: res.code, Detail: res.detail, Attempts: res.attempts}
	if stored.Duplicate {
		kind = w.storedOutcome(d, req, res, stored, &dl)
	}
	if kind == KindFailed || kind == KindRejected {
		if _, err := w.publish(work, "dead letter", func(ctx context.Context) (Stored, error) {
			return Stored{}, w.deps.DeadLetters.DeadLetter(ctx, d, dl)
		}); err != nil {
			w.keepOutcome(m, d, res, "dead letter", err)
			return false
		}
	}
	if kind == KindAccepted && w.checks != nil {
		check := w.newCheck(d, req, res.before, now)
		if _, err := w.publish(work, "state check", func(ctx context.Context) (Stored, error) {
			return Stored{}, w.deps.Scheduler.ScheduleCheck(ctx, check)
		}); err != nil {
			w.keepOutcome(m, d, res, "state check", err)
			return false
		}
	}
	w.attempts.forget(keyOf(d))
	w.ack(m, d, req)
	if stored.Duplicate {
		return kind == KindAccepted
	}
	w.obs.EventPublished(res.kind)
	if kind == KindFailed || kind == KindRejected {
		w.obs.DeadLettered(res.code)
	}
	w.obs.Completed(res.kind, now.Sub(began))
	switch res.kind {
	case KindAccepted:
		w.obs.LastSuccess(now)
		// Most requests end here: build the logger only when debug lines are kept.
		if w.log.Enabled(work, slog.LevelDebug) {
			w.logFor(d, req).Debug("accepted", "attempts", res.attempts, "graph_request_id", res.resp.RequestID, "client_request_id", res.resp.ClientRequestID)
		}
	case KindCoalesced:
		w.logFor(d, req).Debug("coalesced with a request for the same id")
	default:
		w.logFor(d, req).Warn(res.kind, "code", res.code, "detail", res.detail, "attempts", res.attempts, "http_status", res.resp.Status,
			"graph_request_id", res.resp.RequestID, "client_request_id", res.resp.ClientRequestID)
	}
	return true
}

// ack acknowledges a settled request. An ack that is not confirmed leaves the message to
// come back, settled again then without a second event; while acks fail, readiness says so
// (an account whose permissions refuse acks would otherwise redeliver every request for
// ever behind a green /readyz).
func (w *Worker) ack(m Message, d Delivery, req Request) {
	if err := m.Ack(); err != nil {
		w.ackDown.Store(&err)
		w.logFor(d, req).Warn("ack not confirmed; the message will be redelivered and settled again without a duplicate event", "err", err)
		return
	}
	if p := w.ackDown.Load(); p != nil && w.ackDown.CompareAndSwap(p, nil) {
		w.log.Info("acks are confirmed again")
	}
}

// storedOutcome is the outcome that stands when the stream already held a terminal event
// for the request: the stored one's kind, or this one's when it could not be read back. A
// stored failure's code and detail go on its dead letter.
func (w *Worker) storedOutcome(d Delivery, req Request, res result, stored Stored, dl *DeadLetter) string {
	kind := res.kind
	if stored.Event != nil {
		kind = stored.Event.Kind()
		if e := stored.Event.Data.Error; e != nil {
			dl.Code, dl.Detail = e.Code, e.Message
		}
		dl.Attempts = stored.Event.Data.Attempts
	}
	conflict := kind != res.kind
	w.obs.EventDuplicate(res.kind, conflict)
	if conflict {
		w.logFor(d, req).Warn("an earlier delivery of this request already ended with another outcome: it stands, this one is dropped",
			"stored_outcome", kind, "dropped_outcome", res.kind, "dropped_code", res.code, "dropped_http_status", res.resp.Status)
	} else {
		w.logFor(d, req).Info("terminal event already stored by an earlier delivery (its ack was lost): not stored again", "outcome", kind)
	}
	return kind
}

// keepOutcome hands back a message whose outcome is known but could not be stored, with a
// delay growing with its deliveries, and remembers the outcome so that its next delivery
// to this process settles it without calling Graph again.
func (w *Worker) keepOutcome(m Message, d Delivery, res result, what string, err error) {
	w.attempts.set(keyOf(d), attemptEntry{attempts: res.attempts, settled: &res})
	if errors.Is(err, context.Canceled) && !errors.Is(err, ErrUnstorable) {
		w.handBack(m, d, w.cfg.ShutdownNakDelay, what+" not stored before shutdown")
		return
	}
	delay := Backoff{Initial: 5 * time.Second, Max: 5 * time.Minute}.ceiling(int(min(d.NumDelivered, 30)))
	w.log.Error("handing a message back: what it produced cannot be stored", "what", what, "stream_seq", d.StreamSeq,
		"delivery", d.NumDelivered, "outcome", res.kind, "err", err, "in", delay)
	w.handBack(m, d, delay, what+" cannot be stored")
}

// publish stores one thing (an event, a dead letter, a state check), retrying failures
// with backoff for at most the publish budget. It gives up at once on an error wrapping
// ErrUnstorable and when work is cancelled. The outcome is what readiness reports: a
// failure until the next success.
func (w *Worker) publish(work context.Context, what string, publish func(context.Context) (Stored, error)) (Stored, error) {
	delay := Backoff{Initial: 50 * time.Millisecond, Max: 5 * time.Second}
	deadline := w.cfg.Now().Add(w.cfg.PublishBudget)
	for attempt := 1; ; attempt++ {
		stored, err := publish(work)
		if err == nil {
			if p := w.publishDown.Load(); p != nil && w.publishDown.CompareAndSwap(p, nil) {
				w.log.Info("storing works again", "what", what)
			}
			return stored, nil
		}
		if what == "event" {
			w.obs.EventPublishFailed()
		}
		if work.Err() != nil {
			return Stored{}, fmt.Errorf("%w: %w", work.Err(), err)
		}
		d := delay.ceiling(attempt)
		if errors.Is(err, ErrUnstorable) || w.cfg.Now().Add(d).After(deadline) {
			w.publishDown.Store(&publishFailure{what: what, err: err})
			return Stored{}, err
		}
		w.log.Warn("publish failed; retrying", "what", what, "err", err, "in", d)
		if !sleep(work, d) {
			return Stored{}, fmt.Errorf("%w: %w", context.Canceled, err)
		}
	}
}

func (w *Worker) handBack(m Message, d Delivery, delay time.Duration, why string) {
	if err := m.NakWithDelay(delay); err != nil {
		w.log.Warn("nak failed; the message comes back after its ack wait", "stream_seq", d.StreamSeq, "err", err)
	}
	w.log.Debug("handed back for a later delivery", "stream_seq", d.StreamSeq, "delivery", d.NumDelivered, "delay", delay, "why", why)
}

func (w *Worker) event(d Delivery, req Request, res result, now time.Time) *Event {
	ev := &Event{
		SpecVersion:     "1.0",
		ID:              OutcomeEventID(d),
		Source:          w.cfg.Source,
		Type:            TypePrefix + res.kind,
		Subject:         req.ID,
		Time:            now.UTC(),
		DataContentType: "application/json",
		Data: EventData{
			AssignmentID:    req.ID,
			Attempts:        res.attempts,
			HTTPStatus:      res.resp.Status,
			GraphRequestID:  res.resp.RequestID,
			ClientRequestID: res.resp.ClientRequestID,
			CorrelationID:   req.CorrelationID,
			RequestedBy:     req.RequestedBy,
			Reason:          req.Reason,
			RequestedAt:     d.Timestamp.UTC(),
			CompletedAt:     now.UTC(),
		},
	}
	if res.code != "" {
		ev.Data.Error = &EventError{Code: res.code, Message: cutField(res.detail, MaxFieldBytes)}
	}
	return ev
}

func (w *Worker) logFor(d Delivery, req Request) *slog.Logger {
	return w.log.With("assignment_id", req.ID, "stream_seq", d.StreamSeq, "delivery", d.NumDelivered)
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

// msgKey identifies a request message across its deliveries and across incarnations of
// its stream (sequences start at 1 again in a recreated stream; store times do not repeat).
type msgKey struct {
	seq    uint64
	stored int64 // Unix nanoseconds
}

func keyOf(d Delivery) msgKey { return msgKey{seq: d.StreamSeq, stored: d.Timestamp.UnixNano()} }

// attemptEntry is what is remembered of a message handed back for a later delivery.
type attemptEntry struct {
	attempts int     // Graph calls made so far
	settled  *result // the outcome reached, when only storing it failed
}

// attemptLog remembers the Graph calls made for messages handed back for a later delivery.
type attemptLog struct {
	mu sync.Mutex
	m  map[msgKey]attemptEntry
}

func (a *attemptLog) get(k msgKey) attemptEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m[k]
}

func (a *attemptLog) set(k msgKey, e attemptEntry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.m) >= maxRecent { // messages taken by another replica never come back here
		clear(a.m)
	}
	a.m[k] = e
}

func (a *attemptLog) forget(k msgKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.m, k)
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

type nopObserver struct{}

func (nopObserver) MessageReceived(bool)            {}
func (nopObserver) QueueWait(time.Duration)         {}
func (nopObserver) Completed(string, time.Duration) {}
func (nopObserver) DeadLettered(string)             {}
func (nopObserver) Retry(string)                    {}
func (nopObserver) Throttled(bool)                  {}
func (nopObserver) ThrottleWait(time.Duration)      {}
func (nopObserver) RateLimitWait(time.Duration)     {}
func (nopObserver) InFlight(int)                    {}
func (nopObserver) EventPublished(string)           {}
func (nopObserver) EventPublishFailed()             {}
func (nopObserver) EventDuplicate(string, bool)     {}
func (nopObserver) CircuitOpen(bool)                {}
func (nopObserver) LastSuccess(time.Time)           {}
func (nopObserver) StateChanged(string)             {}

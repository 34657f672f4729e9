package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// This file handles one request message: the Graph call with its pacing and circuit, the
// decision (decide.go) and the settling: event, dead letter, ack or hand-back.

// publishFailure is why a message was last handed back for want of storing what it
// produced.
type publishFailure struct {
	what string
	err  error
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
	before   string        // the state read before reprocess (REPROCESSOR_PRECHECK), if any
	waited   time.Duration // of this delivery: spent waiting for the rate, a Retry-After, the circuit or a backoff
}

// handle settles one message: a terminal event (and a dead letter where due) then an ack,
// or a nak that hands it back for a later delivery.
func (w *Worker) handle(ctx, work context.Context, m Message) {
	d := m.Delivery()
	ctx, work, span := w.startRequestSpan(ctx, work, d)
	defer span.End()
	began := w.cfg.Now()
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
	res, nakDelay, terminal := w.call(ctx, work, d, req, began, prev)
	if !terminal {
		w.handBack(m, d, nakDelay, res.detail)
	} else {
		accepted = w.settle(work, m, d, req, res, began) && res.kind == KindAccepted
	}
	if res.attempts > prev.attempts {
		w.limit.Observe(w.cfg.Now().Sub(began) - res.waited)
	}
}

// call makes Graph calls for req until an answer settles it or the message must be handed
// back with the returned delay; prev is what earlier deliveries cost.
//
// A Retry-After that outlasts what this delivery may still spend hands the message back
// for when it ends, and that delivery is not counted against MaxDeliver: Graph asked us to
// wait, nothing failed.
func (w *Worker) call(ctx, work context.Context, d Delivery, req Request, began time.Time, prev attemptEntry) (res result, nakDelay time.Duration, terminal bool) {
	key := keyOf(d)
	attempts, throttledDeliveries := prev.attempts, prev.throttled
	var waited time.Duration
	defer func() {
		res.waited = waited
		if !terminal {
			w.attempts.set(key, attemptEntry{attempts: attempts, throttled: throttledDeliveries})
		}
	}()
	deadline := began.Add(w.cfg.DeliveryBudget)
	retries, credRetries := 0, 0
	stopping := result{detail: "shutting down"}
	pausedOut := func(remaining time.Duration) (result, time.Duration, bool) {
		throttledDeliveries++
		r := result{attempts: attempts, detail: fmt.Sprintf("waiting out a Retry-After of %s", remaining.Round(time.Second))}
		return r, remaining + time.Duration(w.cfg.Rand()*float64(remaining)/20), false
	}
	before := w.precheck(ctx, work, d, req)
	for {
		t0 := w.cfg.Now()
		probe, err := w.circuit.admit(ctx)
		if err != nil {
			return stopping, w.cfg.ShutdownNakDelay, false
		}
		err = w.tracedPace(ctx, deadline)
		waited += w.cfg.Now().Sub(t0)
		var long *longPause
		if errors.As(err, &long) {
			w.circuit.abandon(probe)
			return pausedOut(long.remaining)
		}
		if err != nil {
			w.circuit.abandon(probe)
			return stopping, w.cfg.ShutdownNakDelay, false
		}
		t1 := w.cfg.Now()
		gctx, gs := w.graphSpan(work, "reprocess", req.ID)
		resp, err := w.deps.Graph.Reprocess(gctx, req.ID)
		endGraphSpan(gs, resp, err)
		for range resp.AuthRetries {
			w.obs.Retry(RetryUnauthorized)
		}
		c := classify(resp, err)
		w.feedback(resp, c, w.cfg.Now().Sub(t1))
		wasOpen, _ := w.circuit.state()
		dec := decide(c.verdict, wasOpen)
		w.applyCircuit(dec.circuit, probe)
		if dec.request == actHoldToken {
			if !w.credDown.Swap(true) {
				w.log.Warn("no Graph token: holding messages and pausing fetches until one is obtained", "err", err)
			}
			credRetries++
			hold := Backoff{Initial: time.Second, Max: 30 * time.Second}.Delay(credRetries, Response{}, w.cfg.Rand)
			waited += hold
			if !sleep(ctx, hold) {
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
			if c.verdict == verdictThrottled {
				res, delay, _ := pausedOut(delay)
				res.resp, res.before = resp, before
				return res, delay, false
			}
			if counted := int(d.NumDelivered) - throttledDeliveries; counted >= w.cfg.MaxDeliver {
				res.kind, res.code = KindFailed, CodeRetriesExhausted
				res.detail = fmt.Sprintf("gave up after %d deliveries: %s", d.NumDelivered, c.detail)
				return res, 0, true
			}
			res.detail = c.detail
			return res, delay, false
		}
		w.logFor(d, req).Debug("retrying Graph call", "reason", c.reason, "detail", c.detail, "in", delay)
		waited += delay
		_, rs := w.cfg.Tracer.Start(ctx, "wait before retrying", trace.WithAttributes(
			attribute.String("reprocessor.retry_reason", c.reason), attribute.Float64("reprocessor.delay_seconds", delay.Seconds())))
		ok := sleep(ctx, delay)
		rs.End()
		if !ok {
			return stopping, w.cfg.ShutdownNakDelay, false
		}
	}
}

// tracedPace is pace in a span of its own, unless tracing is off.
func (w *Worker) tracedPace(ctx context.Context, deadline time.Time) error {
	if w.traceOff {
		return w.pace(ctx, deadline)
	}
	ctx, span := w.cfg.Tracer.Start(ctx, "wait for the rate limit and any Retry-After")
	defer span.End()
	return w.pace(ctx, deadline)
}

// pace waits for the throttle gate and the rate limiter. A pause that lasts past deadline
// is not waited out: it returns a *longPause saying how long it has left.
func (w *Worker) pace(ctx context.Context, deadline time.Time) error {
	for {
		if err := w.gate.wait(ctx, deadline); err != nil {
			return err
		}
		if w.deps.Limiter != nil {
			if err := w.deps.Limiter.Wait(ctx); err != nil {
				return err
			}
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
	ev.TraceParent = traceParent(work)
	if span := trace.SpanFromContext(work); span.IsRecording() {
		span.SetAttributes(attribute.String("reprocessor.outcome", res.kind), attribute.String("reprocessor.assignment_id", req.ID))
	}
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
			return w.deps.DeadLetters.DeadLetter(ctx, d, dl)
		}); err != nil {
			w.keepOutcome(m, d, res, "dead letter", err)
			return false
		}
	}
	if kind == KindAccepted && w.checks != nil {
		check := w.newCheck(d, req, res.before, now)
		check.TraceParent = ev.TraceParent
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
	w.obs.Completed(res.kind, now.Sub(began))
	switch res.kind {
	case KindAccepted:
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
	if kind != res.kind {
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
		Instance:        w.cfg.Instance,
		DataSchema:      DataSchema(res.kind),
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

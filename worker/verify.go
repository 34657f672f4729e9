package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/reprocessor/reprocessor/idlist"
)

// State tracking (DESIGN section 5): after a request ends accepted, a Check goes onto the
// verify work queue; a check reads the assignment, publishes state_changed when its state
// differs from the last one seen, and comes back later while the state is unsettled, until
// the state settles or the deadline passes.

// Assignment states, as v1.0 spells them (Graph's closed enum accessPackageAssignmentState;
// beta's PascalCase values are mapped to these by the Graph client; any other value is
// kept as it is).
const (
	StateDelivering         = "delivering"
	StatePartiallyDelivered = "partiallyDelivered"
	StateDelivered          = "delivered"
	StateExpired            = "expired"
	StateDeliveryFailed     = "deliveryFailed"
	StateUnknownFutureValue = "unknownFutureValue"
)

// StateNotFound is the state reported when the assignment no longer exists (Graph 404).
const StateNotFound = "notFound"

// SettledStates are the states that end tracking.
var SettledStates = []string{StateDelivered, StatePartiallyDelivered, StateDeliveryFailed, StateExpired, StateNotFound}

// KnownStates are the state values with their own label in the state-change metric; any
// other value is counted as "other".
var KnownStates = []string{StateDelivering, StatePartiallyDelivered, StateDelivered, StateExpired, StateDeliveryFailed, StateUnknownFutureValue, StateNotFound}

func settled(state string) bool {
	for _, s := range SettledStates {
		if s == state {
			return true
		}
	}
	return false
}

// Check is a scheduled state check of an accepted request: the payload of a message on
// the verify work queue.
type Check struct {
	AssignmentID  string    `json:"assignmentId"`
	RequestStream string    `json:"requestStream"`
	RequestSeq    uint64    `json:"requestSeq"`
	LastState     string    `json:"lastState,omitempty"` // the last state seen; "" before any
	Changes       int       `json:"changes"`             // state_changed events published so far
	AcceptedAt    time.Time `json:"acceptedAt"`
	NotBefore     time.Time `json:"notBefore"`
	Deadline      time.Time `json:"deadline"`
	// ResourcesPending: the state is delivered and its resources were not all back at the
	// last check; Missing is what lacked then.
	ResourcesPending bool      `json:"resourcesPending,omitempty"`
	Missing          []string  `json:"missing,omitempty"`
	TraceParent      string    `json:"traceparent,omitempty"` // the request's span, which the checks continue
	span             string    // this check's span, for its events (not stored)
	CorrelationID    string    `json:"correlationId,omitempty"`
	RequestedBy      string    `json:"requestedBy,omitempty"`
	Reason           string    `json:"reason,omitempty"`
	RequestedAt      time.Time `json:"requestedAt"`
}

// MsgID identifies the check for deduplication: one per request and number of changes seen,
// so that a redelivered request or check schedules nothing twice.
func (c *Check) MsgID() string {
	return c.ref() + "-verify-" + strconv.Itoa(c.Changes)
}

// ref is the RequestRef of the request the check follows.
func (c *Check) ref() string { return RequestRef(c.RequestStream, c.RequestSeq, c.RequestedAt) }

// Assignment is the part of an assignment that tracking reads.
type Assignment struct {
	State  string // v1.0 camelCase ("delivered"); unknown values kept as they are
	Status string
	// Detailed: the read also named the assignment's access package and target (v1.0
	// reads them in the same call), so that resource verification need not read it again.
	Detailed        bool
	AccessPackageID string
	TargetID        string
	TargetIsSPN     bool // the target is a service principal, not a user
}

// StateReader reads an assignment's state from Graph. Errors are as for Graph.Reprocess.
type StateReader interface {
	GetAssignment(ctx context.Context, assignmentID string) (Assignment, Response, error)
}

// CheckScheduler puts a check on the verify work queue, with Nats-Msg-Id set to its MsgID,
// and waits for the stream's acknowledgement.
type CheckScheduler interface {
	ScheduleCheck(ctx context.Context, c *Check) error
}

// VerifyConfig tunes state tracking; the zero value of each field means its default.
type VerifyConfig struct {
	Enabled     bool
	Concurrency int           // checks at once; default 4
	FirstDelay  time.Duration // from accepted to the first check; default 5s
	MaxDelay    time.Duration // the longest wait between checks; default 1m
	Deadline    time.Duration // from accepted to giving up; default 10m
	Precheck    bool          // read the state before reprocess too
	Resources   bool          // once delivered, check the target holds the package's resources (Deps.Resources)
}

// ResourceCheck is what a resource verification found: whether the target holds every
// group and app role resource role of its package, and those it lacks.
type ResourceCheck struct {
	Restored bool
	Missing  []string // e.g. "member of group <id>", "appRole <id> of <service principal id>"
	// Unchecked: there is nothing to check against (the assignment names no package or
	// target object); the event then carries no verdict.
	Unchecked bool
}

// MaxMissing bounds the missing resource roles carried on an event.
const MaxMissing = 64

// ResourceChecker checks a delivered assignment's resources (DESIGN section 5): the
// package's resource roles against the target's direct group memberships, ownerships and
// app role assignments. Errors and answers are as for Graph.Reprocess: a Response that is
// not a 2xx is the read that failed.
type ResourceChecker interface {
	// a is the assignment as the state check read it; when it is not Detailed, the checker
	// reads the assignment's package and target itself.
	CheckResources(ctx context.Context, assignmentID string, a Assignment) (ResourceCheck, Response, error)
}

func (v VerifyConfig) withDefaults() VerifyConfig {
	d := Defaults().Verify
	v.Concurrency = max(v.Concurrency, 0)
	if v.Concurrency == 0 {
		v.Concurrency = d.Concurrency
	}
	if v.FirstDelay <= 0 {
		v.FirstDelay = d.FirstDelay
	}
	if v.MaxDelay <= 0 {
		v.MaxDelay = d.MaxDelay
	}
	if v.Deadline <= 0 {
		v.Deadline = d.Deadline
	}
	return v
}

// nextCheck is the wait before the next check: half the time since the request was
// accepted, between the first delay and the longest wait, and never past the deadline.
func (v VerifyConfig) nextCheck(c *Check, now time.Time) time.Duration {
	d := min(max(now.Sub(c.AcceptedAt)/2, v.FirstDelay), v.MaxDelay)
	return max(min(d, c.Deadline.Sub(now)), 0)
}

// newCheck returns the first check of an accepted request.
func (w *Worker) newCheck(d Delivery, req Request, lastState string, now time.Time) *Check {
	v := w.cfg.Verify
	return &Check{
		AssignmentID: req.ID, RequestStream: d.Stream, RequestSeq: d.StreamSeq, LastState: lastState,
		AcceptedAt: now, NotBefore: now.Add(v.FirstDelay), Deadline: now.Add(v.Deadline),
		CorrelationID: req.CorrelationID, RequestedBy: req.RequestedBy, Reason: req.Reason, RequestedAt: d.Timestamp,
	}
}

// precheck reads the state before reprocess, so that the history starts from the real
// previous state; a failure only means the history starts from nothing.
func (w *Worker) precheck(ctx, work context.Context, d Delivery, req Request) string {
	if !w.cfg.Verify.Enabled || !w.cfg.Verify.Precheck || w.deps.States == nil {
		return ""
	}
	if err := w.pace(ctx, time.Time{}); err != nil {
		return ""
	}
	t0 := w.cfg.Now()
	a, resp, err := w.deps.States.GetAssignment(work, req.ID)
	w.feedback(resp, classify(resp, err), w.cfg.Now().Sub(t0))
	switch {
	case err != nil:
		w.logFor(d, req).Debug("precheck failed", "err", err)
		return ""
	case resp.Status == http.StatusNotFound:
		return StateNotFound
	case resp.Status/100 != 2:
		w.logFor(d, req).Debug("precheck failed", "status", resp.Status)
		return ""
	}
	return cutField(a.State, MaxFieldBytes)
}

// handleCheck runs one check: read the state, publish what changed, then settle the check
// message (ack when tracking ends or a new check carries the new state on, nak with a delay
// while nothing changed).
func (w *Worker) handleCheck(ctx, work context.Context, m Message) {
	d := m.Delivery()
	var c Check
	err := json.Unmarshal(d.Data, &c)
	id, validID := idlist.Normalize(c.AssignmentID)
	if err != nil || !validID || c.RequestStream == "" || len(c.RequestStream) > 255 || c.RequestSeq == 0 {
		// Only the worker writes checks; one that is not its own is dropped, never followed.
		w.log.Error("dropping an unreadable state check", "stream_seq", d.StreamSeq, "err", err)
		_ = m.Ack()
		return
	}
	c.AssignmentID = id
	if ctx.Err() != nil {
		w.handBack(m, d, w.cfg.ShutdownNakDelay, "shutting down")
		return
	}
	_, span := w.cfg.Tracer.Start(parentFrom(context.Background(), c.TraceParent), "check assignment state",
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attribute.String("reprocessor.assignment_id", c.AssignmentID),
			attribute.Int("reprocessor.changes", c.Changes)))
	defer span.End()
	ctx, work = trace.ContextWithSpan(ctx, span), trace.ContextWithSpan(work, span)
	c.span = traceParent(work)
	v := w.cfg.Verify
	now := w.cfg.Now()
	if wait := c.NotBefore.Sub(now); wait > 0 {
		w.handBack(m, d, wait, "check not due yet")
		return
	}
	log := w.log.With("assignment_id", c.AssignmentID, "request_seq", c.RequestSeq, "check_delivery", d.NumDelivered)
	if !now.Before(c.Deadline) {
		last := c.LastState
		if last == "" {
			last = "unknown"
		}
		ev := w.stateEvent(&c, "final", last, fmt.Sprintf("not settled within %s of being accepted", v.Deadline), false, Response{}, now)
		ev.Data.PreviousState, ev.Data.Final = last, true
		if c.ResourcesPending {
			// Delivered, but not every resource came back: one last look decides.
			rc, ok := w.checkResources(ctx, work, d, &c, Assignment{})
			if !ok {
				rc = ResourceCheck{Missing: c.Missing}
			}
			settledTrue := true
			ev.Data.Settled, ev.Data.Status = &settledTrue, fmt.Sprintf("delivered; resources checked until %s after being accepted", v.Deadline)
			ev.Data.Restored, ev.Data.Missing = &rc.Restored, rc.Missing
		}
		if w.publishAndAck(work, m, d, ev) {
			log.Warn("state tracking reached its deadline", "last_state", last)
		}
		return
	}

	probe, err := w.circuit.admit(ctx)
	if err != nil {
		w.handBack(m, d, w.cfg.ShutdownNakDelay, "shutting down")
		return
	}
	if err := w.pace(ctx, time.Time{}); err != nil {
		w.circuit.abandon(probe)
		w.handBack(m, d, w.cfg.ShutdownNakDelay, "shutting down")
		return
	}
	t0 := w.cfg.Now()
	gctx, gs := w.graphSpan(work, "get_assignment", c.AssignmentID)
	a, resp, err := w.deps.States.GetAssignment(gctx, c.AssignmentID)
	endGraphSpan(gs, resp, err)
	cl := classify(resp, err)
	w.feedback(resp, cl, w.cfg.Now().Sub(t0))
	for range resp.AuthRetries {
		w.obs.Retry(RetryUnauthorized)
	}
	state, status := cutField(a.State, MaxFieldBytes), cutField(a.Status, MaxFieldBytes)
	if err == nil && resp.Status == http.StatusNotFound {
		// The assignment is gone: a state of its own, not an unreadable answer.
		cl, state, status = classification{verdict: verdictAccepted}, StateNotFound, graphDetail(resp)
	}
	wasOpen, _ := w.circuit.state()
	dec := decide(cl.verdict, wasOpen)
	w.applyCircuit(dec.circuit, probe)
	switch dec.check {
	case actHoldToken:
		w.handBack(m, d, 5*time.Second, "no Graph token")
		return
	case actHoldCircuit:
		w.handBack(m, d, max(w.cfg.CircuitCooldown, v.FirstDelay), cl.detail)
		return
	case actRetry:
		w.obs.Retry(cl.reason)
		delay := w.cfg.Backoff.Delay(int(min(d.NumDelivered, 30)), resp, w.cfg.Rand)
		w.handBack(m, d, max(delay, 100*time.Millisecond), cl.detail)
		return
	case actStop:
		last := c.LastState
		if last == "" {
			last = "unknown"
		}
		ev := w.stateEvent(&c, "final", last, "tracking stopped: "+cl.detail, false, resp, now)
		ev.Data.PreviousState, ev.Data.Final = last, true
		w.publishAndAck(work, m, d, ev)
		return
	}
	done := settled(state)
	var rc *ResourceCheck
	if done && state == StateDelivered && v.Resources && w.deps.Resources != nil {
		r, ok := w.checkResources(ctx, work, d, &c, a)
		if !ok && r.Missing == nil {
			// The check could not be made now (throttled, a network error): come back.
			w.handBack(m, d, max(w.cfg.Backoff.Delay(int(min(d.NumDelivered, 30)), Response{}, w.cfg.Rand), time.Second), "resource check not made")
			return
		}
		if ok {
			rc = &r
		}
	}
	pending := rc != nil && !rc.Restored // delivered, resources not yet back: keep checking
	changed := state != c.LastState
	restoredNow := rc != nil && rc.Restored && c.ResourcesPending
	if changed || (done && c.Changes == 0) || restoredNow {
		ev := w.stateEvent(&c, strconv.Itoa(c.Changes+1), state, status, done, resp, now)
		ev.Data.Final = done && !pending
		if rc != nil {
			ev.Data.Restored, ev.Data.Missing = &rc.Restored, rc.Missing
		}
		if _, err := w.publish(work, "event", func(ctx context.Context) (Stored, error) { return w.deps.Events.PublishEvent(ctx, ev) }); err != nil {
			w.checkNotStored(m, d, "event", err)
			return
		}
		if changed {
			w.obs.StateChanged(state)
		}
		log.Info("assignment state changed", "previous_state", c.LastState, "state", state, "settled", done)
	}
	if done && !pending {
		_ = m.Ack()
		return
	}
	if !changed {
		w.handBack(m, d, v.nextCheck(&c, now), "state unchanged")
		return
	}
	next := c
	next.LastState, next.Changes = state, c.Changes+1
	next.ResourcesPending, next.Missing = pending, nil
	if pending {
		next.Missing = rc.Missing
	}
	next.NotBefore = now.Add(v.nextCheck(&c, now))
	if _, err := w.publish(work, "state check", func(ctx context.Context) (Stored, error) {
		return Stored{}, w.deps.Scheduler.ScheduleCheck(ctx, &next)
	}); err != nil {
		w.checkNotStored(m, d, "state check", err)
		return
	}
	_ = m.Ack()
}

// checkResources checks a delivered assignment's resources, paced like every Graph call.
// It reports false when no answer was had: a retryable failure (r.Missing nil: try again
// later), or one that will not pass by retrying, such as a permission the worker lacks
// (logged; r.Missing set to the last known, the event then carries no verdict).
func (w *Worker) checkResources(ctx, work context.Context, d Delivery, c *Check, a Assignment) (ResourceCheck, bool) {
	log := w.log.With("assignment_id", c.AssignmentID, "request_seq", c.RequestSeq)
	if err := w.pace(ctx, time.Time{}); err != nil {
		return ResourceCheck{}, false
	}
	t0 := w.cfg.Now()
	gctx, gs := w.graphSpan(work, "check_resources", c.AssignmentID)
	rc, resp, err := w.deps.Resources.CheckResources(gctx, c.AssignmentID, a)
	endGraphSpan(gs, resp, err)
	cl := classify(resp, err)
	w.feedback(resp, cl, w.cfg.Now().Sub(t0))
	switch {
	case err == nil && resp.Status/100 == 2 && rc.Unchecked:
		log.Debug("resources not checked: the assignment names no package or target object")
		return ResourceCheck{Missing: []string{}}, false
	case err == nil && resp.Status/100 == 2:
		if len(rc.Missing) > MaxMissing {
			rc.Missing = append(rc.Missing[:MaxMissing:MaxMissing], fmt.Sprintf("... and %d more", len(rc.Missing)-MaxMissing))
		}
		for i, s := range rc.Missing {
			rc.Missing[i] = cutField(s, 256)
		}
		if rc.Missing == nil {
			rc.Missing = []string{}
		}
		rc.Restored = len(rc.Missing) == 0
		return rc, true
	case cl.verdict == verdictRetry || cl.verdict == verdictThrottled || cl.verdict == verdictCredential:
		log.Debug("resource check failed; retried", "status", resp.Status, "err", err)
		return ResourceCheck{}, false
	}
	log.Warn("resource check failed: the event carries no restored verdict", "status", resp.Status, "err", err, "detail", cl.detail)
	return ResourceCheck{Missing: []string{}}, false
}

// publishAndAck publishes a final event for a check and acks it; it reports success.
func (w *Worker) publishAndAck(work context.Context, m Message, d Delivery, ev *Event) bool {
	if _, err := w.publish(work, "event", func(ctx context.Context) (Stored, error) { return w.deps.Events.PublishEvent(ctx, ev) }); err != nil {
		w.checkNotStored(m, d, "event", err)
		return false
	}
	_ = m.Ack()
	return true
}

// checkNotStored hands back a check whose event or successor could not be stored: soon at
// shutdown, else with a delay growing with its deliveries. The check is read again then.
func (w *Worker) checkNotStored(m Message, d Delivery, what string, err error) {
	if errors.Is(err, context.Canceled) && !errors.Is(err, ErrUnstorable) {
		w.handBack(m, d, w.cfg.ShutdownNakDelay, what+" not stored before shutdown")
		return
	}
	delay := Backoff{Initial: 5 * time.Second, Max: 5 * time.Minute}.ceiling(int(min(d.NumDelivered, 30)))
	w.log.Error("handing a state check back: what it produced cannot be stored", "what", what, "stream_seq", d.StreamSeq, "err", err, "in", delay)
	w.handBack(m, d, delay, what+" cannot be stored")
}

// stateEvent builds a state_changed event; n numbers it within the request's history.
func (w *Worker) stateEvent(c *Check, n, state, status string, isSettled bool, resp Response, now time.Time) *Event {
	return &Event{
		SpecVersion:     "1.0",
		ID:              c.ref() + "-" + KindStateChanged + "-" + n,
		Source:          w.cfg.Source,
		Instance:        w.cfg.Instance,
		DataSchema:      DataSchema(KindStateChanged),
		TraceParent:     cmp.Or(c.span, c.TraceParent),
		Type:            TypePrefix + KindStateChanged,
		Subject:         c.AssignmentID,
		Time:            now.UTC(),
		DataContentType: "application/json",
		Data: EventData{
			AssignmentID:    c.AssignmentID,
			HTTPStatus:      resp.Status,
			GraphRequestID:  resp.RequestID,
			ClientRequestID: resp.ClientRequestID,
			CorrelationID:   c.CorrelationID,
			RequestedBy:     c.RequestedBy,
			Reason:          c.Reason,
			RequestedAt:     c.RequestedAt.UTC(),
			CompletedAt:     now.UTC(),
			PreviousState:   cutField(c.LastState, MaxFieldBytes),
			State:           state,
			Status:          status,
			Settled:         &isSettled,
		},
	}
}

var errNoTracking = errors.New("state tracking needs Checks, Scheduler and States")

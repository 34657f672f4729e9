package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reprocessor/reprocessor/internal/testsync"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeMsg is a hand-made Message that records how it was settled.
type fakeMsg struct {
	d      Delivery
	ackErr error // what Ack returns
	mu     sync.Mutex
	acks   int
	naks   []time.Duration
	hbs    int
}

func (m *fakeMsg) Delivery() Delivery { return m.d }
func (m *fakeMsg) Ack() error         { m.mu.Lock(); m.acks++; m.mu.Unlock(); return m.ackErr }
func (m *fakeMsg) InProgress() error  { m.mu.Lock(); m.hbs++; m.mu.Unlock(); return nil }
func (m *fakeMsg) NakWithDelay(d time.Duration) error {
	m.mu.Lock()
	m.naks = append(m.naks, d)
	m.mu.Unlock()
	return nil
}

// fakeSource hands out queued messages in batches.
type fakeSource struct{ ch chan Message }

func (s *fakeSource) Fetch(ctx context.Context, max int, handle func(Message)) error {
	for i := 0; i < max; i++ {
		select {
		case m := <-s.ch:
			handle(m)
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
			return nil
		}
	}
	return nil
}

// sink records events and dead letters, and drops an event whose id it holds already, as
// the events stream does within its dedupe window.
type sink struct {
	mu     sync.Mutex
	events []*Event
	dls    []DeadLetter
	dlRefs map[string]bool
}

func (s *sink) PublishEvent(_ context.Context, e *Event) (Stored, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, old := range s.events {
		if old.ID == e.ID {
			return Stored{Duplicate: true, Event: old}, nil
		}
	}
	s.events = append(s.events, e)
	return Stored{}, nil
}

// DeadLetter stores dl once per request, as the dead-letter stream's dedupe does.
func (s *sink) DeadLetter(_ context.Context, d Delivery, dl DeadLetter) (Stored, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ref := RequestRef(d.Stream, d.StreamSeq, d.Timestamp)
	if s.dlRefs[ref] {
		return Stored{Duplicate: true}, nil
	}
	if s.dlRefs == nil {
		s.dlRefs = make(map[string]bool)
	}
	s.dlRefs[ref] = true
	s.dls = append(s.dls, dl)
	return Stored{}, nil
}

func (s *sink) kinds() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := map[string]int{}
	for _, e := range s.events {
		k[e.Kind()]++
	}
	return k
}

type graphFunc func(ctx context.Context, id string) (Response, error)

func (f graphFunc) Reprocess(ctx context.Context, id string) (Response, error) { return f(ctx, id) }

type setup struct {
	w      *Worker
	src    *fakeSource
	sink   *sink
	cancel context.CancelFunc
	done   chan struct{}
	seq    uint64
}

func newSetup(t *testing.T, cfg Config, g graphFunc) *setup {
	t.Helper()
	sk := &sink{}
	return newSetupStoring(t, cfg, g, sk, sk)
}

// newSetupStoring is newSetup with events published through events (which must record
// into sk, the sink the setup reads) and dead letters stored in sk.
func newSetupStoring(t *testing.T, cfg Config, g graphFunc, sk *sink, events EventPublisher) *setup {
	t.Helper()
	s := &setup{src: &fakeSource{ch: make(chan Message, 1000)}, sink: sk, done: make(chan struct{})}
	w, err := New(cfg, Deps{Source: s.src, Graph: g, Events: events, DeadLetters: sk})
	if err != nil {
		t.Fatal(err)
	}
	s.w = w
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { defer close(s.done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

func (s *setup) send(payload string, delivered uint64) *fakeMsg {
	s.seq++
	m := &fakeMsg{d: Delivery{Data: []byte(payload), Stream: "S", StreamSeq: s.seq, NumDelivered: delivered, Timestamp: time.Now()}}
	s.src.ch <- m
	return m
}

// runWorker runs w until the returned stop (or the test's end) cancels it, and waits for it.
func runWorker(t *testing.T, w *Worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testsync.Poll(t, what, 10*time.Second, 5*time.Millisecond, cond)
}

func guid(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

func TestRetryAfterPausesEveryCaller(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var throttledAt time.Time
	var calls []time.Time
	s := newSetup(t, Config{Concurrency: 8}, func(ctx context.Context, id string) (Response, error) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		calls = append(calls, now)
		if throttledAt.IsZero() {
			throttledAt = now
			return Response{Status: 429, HasRetryAfter: true, RetryAfter: 1500 * time.Millisecond}, nil
		}
		return Response{Status: 202}, nil
	})
	s.send(guid(0), 1)
	waitFor(t, "the 429", func() bool { mu.Lock(); defer mu.Unlock(); return !throttledAt.IsZero() })
	for i := 1; i < 8; i++ {
		s.send(guid(i), 1)
	}
	waitFor(t, "8 accepted", func() bool { return s.sink.kinds()[KindAccepted] == 8 })
	mu.Lock()
	defer mu.Unlock()
	for _, c := range calls[1:] {
		if c.Sub(throttledAt) < 1500*time.Millisecond {
			t.Fatalf("a call went out %s after a Retry-After of 1.5s", c.Sub(throttledAt))
		}
	}
}

func TestPersistentServerErrorExhaustsDeliveries(t *testing.T) {
	t.Parallel()
	s := newSetup(t, Config{MaxDeliver: 3, DeliveryBudget: 50 * time.Millisecond, Backoff: Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond}},
		func(ctx context.Context, id string) (Response, error) { return Response{Status: 500}, nil })
	first := s.send(guid(1), 1)
	waitFor(t, "a nak", func() bool { first.mu.Lock(); defer first.mu.Unlock(); return len(first.naks) == 1 })
	if len(s.sink.kinds()) != 0 {
		t.Fatalf("events before the last delivery: %v", s.sink.kinds())
	}
	last := s.send(guid(2), 3)
	waitFor(t, "failed", func() bool { return s.sink.kinds()[KindFailed] == 1 })
	s.sink.mu.Lock()
	defer s.sink.mu.Unlock()
	if e := s.sink.events[0]; e.Data.Error.Code != CodeRetriesExhausted || e.Data.Attempts < 2 {
		t.Fatalf("event = %+v %+v", e.Data, e.Data.Error)
	}
	if len(s.sink.dls) != 1 || s.sink.dls[0].Code != CodeRetriesExhausted {
		t.Fatalf("dead letters = %+v", s.sink.dls)
	}
	last.mu.Lock()
	defer last.mu.Unlock()
	if last.acks != 1 || len(last.naks) != 0 {
		t.Fatalf("last delivery acks=%d naks=%v", last.acks, last.naks)
	}
}

func TestCircuitOpensAndCloses(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	forbid := true
	calls := 0
	s := newSetup(t, Config{Concurrency: 2, CircuitThreshold: 5, CircuitCooldown: 100 * time.Millisecond},
		func(ctx context.Context, id string) (Response, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			if forbid {
				return Response{Status: 403}, nil
			}
			return Response{Status: 202}, nil
		})
	for i := range 30 {
		s.send(guid(i), 1)
	}
	waitFor(t, "the circuit to open", func() bool { return s.w.Ready() != nil })
	waitFor(t, "5 failures", func() bool { return s.sink.kinds()[KindFailed] == 5 })
	mu.Lock()
	atOpen := calls
	mu.Unlock()
	// The open circuit probes Graph every cooldown: two probes answered 403 fail nothing.
	waitFor(t, "two probes", func() bool { mu.Lock(); defer mu.Unlock(); return calls >= atOpen+2 })
	if k := s.sink.kinds(); k[KindFailed] != 5 {
		t.Fatalf("failures while the circuit is open: %v", k)
	}
	if len(s.src.ch) < 20 {
		t.Fatalf("fetching went on while the circuit was open: %d left queued", len(s.src.ch))
	}
	mu.Lock()
	forbid = false
	mu.Unlock()
	waitFor(t, "25 accepted", func() bool { return s.sink.kinds()[KindAccepted] == 25 })
	if err := s.w.Ready(); err != nil {
		t.Fatalf("still not ready: %v", err)
	}
}

func TestCredentialFailureHoldsMessages(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	broken := true
	s := newSetup(t, Config{Concurrency: 4}, func(ctx context.Context, id string) (Response, error) {
		mu.Lock()
		defer mu.Unlock()
		if broken {
			return Response{}, fmt.Errorf("token: %w", ErrCredential)
		}
		return Response{Status: 202}, nil
	})
	for i := range 10 {
		s.send(guid(i), 1)
	}
	waitFor(t, "not ready", func() bool { return s.w.Ready() != nil })
	if len(s.sink.kinds()) != 0 {
		t.Fatalf("events without a token: %v", s.sink.kinds())
	}
	mu.Lock()
	broken = false
	mu.Unlock()
	waitFor(t, "10 accepted", func() bool { return s.sink.kinds()[KindAccepted] == 10 })
}

func TestShutdownFinishesInFlightAndHandsBackWaiting(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	cfg := Config{Concurrency: 4, ShutdownTimeout: 5 * time.Second, Backoff: Backoff{Initial: 10 * time.Second, Max: 10 * time.Second},
		Rand: func() float64 { return 0.99 }}
	s := newSetup(t, cfg, func(ctx context.Context, id string) (Response, error) {
		if id == guid(9) {
			return Response{Status: 500}, nil // then waits ~10s for its retry
		}
		<-release
		return Response{Status: 202}, nil
	})
	msgs := []*fakeMsg{s.send(guid(1), 1), s.send(guid(2), 1), s.send(guid(3), 1)}
	waiting := s.send(guid(9), 1)
	waitFor(t, "4 in flight", func() bool { return s.w.requests.inflight.Load() == 4 })
	s.cancel()
	// Shutdown hands the one waiting for its retry back at once, while the others finish.
	waitFor(t, "the waiting message handed back", func() bool {
		waiting.mu.Lock()
		defer waiting.mu.Unlock()
		return len(waiting.naks) == 1
	})
	close(release)
	<-s.done
	for _, m := range msgs {
		if m.acks != 1 {
			t.Fatalf("in-flight message not finished: acks=%d naks=%v", m.acks, m.naks)
		}
	}
	if len(waiting.naks) != 1 || waiting.acks != 0 {
		t.Fatalf("waiting message: acks=%d naks=%v", waiting.acks, waiting.naks)
	}
}

// feedbackLimiter records what the worker tells an adaptive limiter.
type feedbackLimiter struct {
	mu                   sync.Mutex
	succeeded, throttled int
}

func (l *feedbackLimiter) Wait(context.Context) error { return nil }
func (l *feedbackLimiter) Succeeded(time.Duration)    { l.mu.Lock(); l.succeeded++; l.mu.Unlock() }
func (l *feedbackLimiter) Throttled(_, _ time.Duration, _ bool) {
	l.mu.Lock()
	l.throttled++
	l.mu.Unlock()
}

type pauseRecorder struct {
	mu     sync.Mutex
	pauses []time.Time
}

func (p *pauseRecorder) SharePause(until time.Time) {
	p.mu.Lock()
	p.pauses = append(p.pauses, until)
	p.mu.Unlock()
}

func (p *pauseRecorder) ShareCut(float64) {}

func TestFeedbackAndSharedPauses(t *testing.T) {
	t.Parallel()
	lim, pauses := &feedbackLimiter{}, &pauseRecorder{}
	var mu sync.Mutex
	calls := 0
	src, sk := &fakeSource{ch: make(chan Message, 10)}, &sink{}
	gate := NewGate(nil, nil)
	gate.ShareWith(pauses)
	w, err := New(Config{Concurrency: 1, Backoff: Backoff{Initial: time.Millisecond, Max: time.Millisecond}}, Deps{
		Source: src, Events: sk, DeadLetters: sk, Limiter: lim, Feedback: lim, Gate: gate,
		Graph: graphFunc(func(ctx context.Context, id string) (Response, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			switch calls {
			case 1: // too short to share: the other replicas meet such a limit by themselves
				return Response{Status: 429, HasRetryAfter: true, RetryAfter: 50 * time.Millisecond}, nil
			case 2:
				return Response{Status: 429, HasRetryAfter: true, RetryAfter: MinSharedPause}, nil
			case 3:
				return Response{Status: 503}, nil
			case 4:
				return Response{}, fmt.Errorf("dial: %w", ErrNetwork)
			}
			return Response{Status: 202}, nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	runWorker(t, w)
	src.ch <- &fakeMsg{d: Delivery{Data: []byte(guid(1)), Stream: "S", StreamSeq: 1, NumDelivered: 1, Timestamp: time.Now()}}
	waitFor(t, "accepted", func() bool { return sk.kinds()[KindAccepted] == 1 })
	lim.mu.Lock()
	defer lim.mu.Unlock()
	if lim.throttled != 3 || lim.succeeded != 1 {
		t.Fatalf("limiter heard %d throttled and %d succeeded, want 3 and 1 (no answer is neither)", lim.throttled, lim.succeeded)
	}
	pauses.mu.Lock()
	defer pauses.mu.Unlock()
	if len(pauses.pauses) != 1 {
		t.Fatalf("%d pauses shared, want 1 (only a Retry-After of MinSharedPause or more is shared)", len(pauses.pauses))
	}
	// A pause heard from another replica holds this one's calls.
	gate.PauseUntil(time.Now().Add(time.Hour))
	if !w.gate.closed() {
		t.Fatal("PauseUntil did not close the gate")
	}
}

// TestPanicIsContained: a message that makes the worker panic is handed back, and ends
// failed (dead-lettered) on its last delivery, while the process goes on.
func TestPanicIsContained(t *testing.T) {
	t.Parallel()
	bad := guid(66)
	s := newSetup(t, Config{MaxDeliver: 2}, func(ctx context.Context, id string) (Response, error) {
		if id == bad {
			panic("boom")
		}
		return Response{Status: 202}, nil
	})
	first := s.send(bad, 1)
	waitFor(t, "the first delivery handed back", func() bool { first.mu.Lock(); defer first.mu.Unlock(); return len(first.naks) == 1 })
	s.send(guid(1), 1)
	waitFor(t, "an unrelated request accepted", func() bool { return s.sink.kinds()[KindAccepted] == 1 })
	last := s.send(bad, 2)
	waitFor(t, "the last delivery failed", func() bool { return s.sink.kinds()[KindFailed] == 1 })
	s.sink.mu.Lock()
	defer s.sink.mu.Unlock()
	if len(s.sink.dls) != 1 || s.sink.dls[0].Code != CodeRetriesExhausted {
		t.Fatalf("dead letters %+v", s.sink.dls)
	}
	last.mu.Lock()
	defer last.mu.Unlock()
	if last.acks != 1 {
		t.Fatalf("last delivery acks=%d naks=%v", last.acks, last.naks)
	}
}

// inFlightGauge records the highest in-flight count the worker reports.
type inFlightGauge struct {
	nopObserver
	mu       sync.Mutex
	now, top int
}

func (g *inFlightGauge) InFlight(d int) {
	g.mu.Lock()
	g.now += d
	g.top = max(g.top, g.now)
	g.mu.Unlock()
}

func TestPrefetchedMessagesWaitForAFreeSlot(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var calls, top atomic.Int64
	src := &fakeSource{ch: make(chan Message, 100)}
	sk, gauge := &sink{}, &inFlightGauge{}
	w, err := New(Config{Concurrency: 4, ShutdownTimeout: 5 * time.Second}, Deps{
		Source: src, Events: sk, DeadLetters: sk, Observer: gauge,
		Graph: graphFunc(func(ctx context.Context, id string) (Response, error) {
			n := calls.Add(1)
			for was := top.Load(); n > was && !top.CompareAndSwap(was, n); was = top.Load() {
			}
			defer calls.Add(-1)
			<-release
			return Response{Status: 202}, nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*fakeMsg
	for i := range 20 {
		m := &fakeMsg{d: Delivery{Data: []byte(guid(i)), Stream: "S", StreamSeq: uint64(i + 1), NumDelivered: 1, Timestamp: time.Now()}}
		msgs = append(msgs, m)
		src.ch <- m
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()

	// Four at work, two more fetched and waiting for a goroutine, the rest left queued.
	waitFor(t, "4 working and 2 prefetched", func() bool { return w.requests.inflight.Load() == 6 && calls.Load() == 4 })
	time.Sleep(50 * time.Millisecond)
	if n := w.requests.inflight.Load(); n != 6 || len(src.ch) != 14 {
		t.Fatalf("fetched %d (want 6), left %d queued (want 14)", n, len(src.ch))
	}
	// Once the four finish, the waiting two are worked, still never more than four at once.
	cancel()
	close(release)
	<-done
	if top.Load() != 4 {
		t.Fatalf("at most %d Graph calls at once, want 4", top.Load())
	}
	if gauge.top != 4 || gauge.now != 0 {
		t.Fatalf("in-flight gauge peaked at %d and ended at %d; want 4 and 0", gauge.top, gauge.now)
	}
	acked, handedBack := 0, 0
	for _, m := range msgs[:6] {
		acked += m.acks
		handedBack += len(m.naks)
	}
	if acked != 4 || handedBack != 2 {
		t.Fatalf("of the six fetched: %d acked, %d handed back; want 4 and 2 (the prefetched ones, at shutdown)", acked, handedBack)
	}
	for _, m := range msgs[6:] {
		if m.acks+len(m.naks) != 0 {
			t.Fatal("a message never fetched was settled")
		}
	}
}

// TestWakeEndsAHoldAtOnce: a worker held back (no Graph token yet) starts fetching as soon
// as it is woken, not at its next poll, which this test puts an hour away.
func TestWakeEndsAHoldAtOnce(t *testing.T) {
	var held atomic.Bool
	held.Store(true)
	var holdChecks atomic.Int64
	src, sk := &fakeSource{ch: make(chan Message, 10)}, &sink{}
	w, err := New(Config{Concurrency: 4}, Deps{
		Source: src, Events: sk, DeadLetters: sk,
		Graph: graphFunc(func(context.Context, string) (Response, error) { return Response{Status: 202}, nil }),
		Hold: func() error {
			holdChecks.Add(1)
			if held.Load() {
				return errors.New("no Graph token yet")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	w.requests.poll = time.Hour
	runWorker(t, w)

	src.ch <- &fakeMsg{d: Delivery{Data: []byte(guid(1)), Stream: "S", StreamSeq: 1, NumDelivered: 1, Timestamp: time.Now()}}
	waitFor(t, "the hold to be checked", func() bool { return holdChecks.Load() > 0 })
	held.Store(false)
	w.Wake()
	waitFor(t, "the held request to be accepted after Wake", func() bool { return sk.kinds()[KindAccepted] == 1 })
}

// TestTracingOffCarriesTheProducersTrace: with no tracer configured (tracing off) the
// worker builds no span of its own, yet an event still carries the producer's traceparent,
// as it did through a no-op tracer; a request without one gives events without one. The
// Graph call's context carries the producer's span context too.
func TestTracingOffCarriesTheProducersTrace(t *testing.T) {
	t.Parallel()
	const producer = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	var mu sync.Mutex
	seen := map[string]string{}
	s := newSetup(t, Config{Concurrency: 2}, func(ctx context.Context, id string) (Response, error) {
		mu.Lock()
		seen[id] = traceParent(ctx)
		mu.Unlock()
		return Response{Status: 202}, nil
	})
	if !s.w.traceOff {
		t.Fatal("the default tracer is not taken for a no-op one")
	}
	s.seq++
	s.src.ch <- &fakeMsg{d: Delivery{Data: []byte(guid(1)), Stream: "S", StreamSeq: s.seq, NumDelivered: 1, Timestamp: time.Now(),
		Header: map[string][]string{"Traceparent": {producer}}}}
	s.send(guid(2), 1)
	waitFor(t, "2 accepted", func() bool { return s.sink.kinds()[KindAccepted] == 2 })
	want := map[string]string{guid(1): producer, guid(2): ""}
	s.sink.mu.Lock()
	defer s.sink.mu.Unlock()
	for _, e := range s.sink.events {
		if e.TraceParent != want[e.Subject] {
			t.Errorf("event of %s: traceparent %q, want %q", e.Subject, e.TraceParent, want[e.Subject])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for id, tp := range want {
		if seen[id] != tp {
			t.Errorf("Graph call of %s: traceparent %q in its context, want %q", id, seen[id], tp)
		}
	}
}

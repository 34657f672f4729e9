package worker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// redeliver hands m to the worker again as the server would after a lost ack: the same
// stream, sequence and store time, one delivery more.
func (s *setup) redeliver(m *fakeMsg) *fakeMsg {
	d := m.d
	d.NumDelivered++
	again := &fakeMsg{d: d}
	s.src.ch <- again
	return again
}

// answers returns a Graph that answers the given statuses in turn, then the last one.
func answers(statuses ...int) (graphFunc, *atomic.Int64) {
	var n atomic.Int64
	return func(context.Context, string) (Response, error) {
		i := int(n.Add(1)) - 1
		return Response{Status: statuses[min(i, len(statuses)-1)]}, nil
	}, &n
}

// TestLostAckFirstOutcomeStands: when the ack of a request is lost and its redelivery ends
// otherwise (403, then 202; or 202, then 403), exactly one terminal event is stored, the
// first, and the dead-letter stream holds a copy only of a request that ended failed.
func TestLostAckFirstOutcomeStands(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		statuses []int
		stands   string
		dls      int
	}{
		{"failed then accepted", []int{403, 202}, KindFailed, 1},
		{"accepted then failed", []int{202, 403}, KindAccepted, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g, calls := answers(tc.statuses...)
			s := newSetup(t, Config{CoalesceWindow: -1}, g)
			first := s.send(guid(1), 1)
			waitFor(t, "the first outcome", func() bool { first.mu.Lock(); defer first.mu.Unlock(); return first.acks == 1 })
			again := s.redeliver(first) // its ack was lost
			waitFor(t, "the redelivery settled", func() bool { again.mu.Lock(); defer again.mu.Unlock(); return again.acks == 1 })
			if calls.Load() != 2 {
				t.Fatalf("%d Graph calls, want 2 (the redelivery calls again)", calls.Load())
			}
			s.sink.mu.Lock()
			defer s.sink.mu.Unlock()
			if len(s.sink.events) != 1 || s.sink.events[0].Kind() != tc.stands {
				t.Fatalf("events %v, want one %s", s.sink.kinds(), tc.stands)
			}
			if len(s.sink.dls) != tc.dls {
				t.Fatalf("%d dead letters, want %d", len(s.sink.dls), tc.dls)
			}
		})
	}
}

// TestEventIDsSurviveStreamRecreation: the same sequence in a recreated stream (another
// store time) gives other ids, so nothing of the new request is dropped as a duplicate,
// and the coalescer does not take it for the old one.
func TestEventIDsSurviveStreamRecreation(t *testing.T) {
	t.Parallel()
	g, _ := answers(202)
	s := newSetup(t, Config{}, g)
	old := &fakeMsg{d: Delivery{Data: []byte(guid(1)), Stream: "S", StreamSeq: 1, NumDelivered: 1, Timestamp: time.Unix(1000, 0)}}
	s.src.ch <- old
	waitFor(t, "the first accepted", func() bool { return s.sink.kinds()[KindAccepted] == 1 })
	recreated := &fakeMsg{d: Delivery{Data: []byte(guid(2)), Stream: "S", StreamSeq: 1, NumDelivered: 1, Timestamp: time.Unix(2000, 0)}}
	s.src.ch <- recreated
	waitFor(t, "the second accepted", func() bool { return s.sink.kinds()[KindAccepted] == 2 })
	s.sink.mu.Lock()
	defer s.sink.mu.Unlock()
	if a, b := s.sink.events[0].ID, s.sink.events[1].ID; a == b || !strings.HasPrefix(a, "S-1-1000000000000-") {
		t.Fatalf("event ids %q and %q", a, b)
	}
}

// flakySink fails its publishes as told.
type flakySink struct {
	sink
	fail atomic.Pointer[error] // nil: publish
	n    atomic.Int64
}

func (f *flakySink) PublishEvent(ctx context.Context, e *Event) (Stored, error) {
	f.n.Add(1)
	if err := f.fail.Load(); err != nil {
		return Stored{}, *err
	}
	return f.sink.PublishEvent(ctx, e)
}

func newFlakySetup(t *testing.T, cfg Config, g graphFunc) (*setup, *flakySink) {
	t.Helper()
	fs := &flakySink{}
	return newSetupStoring(t, cfg, g, &fs.sink, fs), fs
}

// TestUnstorableEventFreesTheSlot: an event no retry can store hands its message back at
// once with a delay, readiness says why, the slot is free for other messages, and the next
// delivery settles the known outcome without calling Graph again.
func TestUnstorableEventFreesTheSlot(t *testing.T) {
	t.Parallel()
	g, calls := answers(202)
	s, fs := newFlakySetup(t, Config{Concurrency: 1}, g)
	unstorable := errors.Join(ErrUnstorable, errors.New("too large"))
	fs.fail.Store(&unstorable)
	m := s.send(guid(1), 1)
	waitFor(t, "handed back", func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.naks) == 1 })
	m.mu.Lock()
	delay := m.naks[0]
	m.mu.Unlock()
	if delay < time.Second {
		t.Fatalf("handed back with a delay of %s, want a real one", delay)
	}
	if err := s.w.Ready(); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("Ready() = %v, want the reason", err)
	}
	// The only slot is free: another message is worked while the first waits.
	other := s.send(guid(2), 1)
	waitFor(t, "the other handed back too", func() bool { other.mu.Lock(); defer other.mu.Unlock(); return len(other.naks) == 1 })

	fs.fail.Store(nil)
	before := calls.Load()
	again := s.redeliver(m)
	waitFor(t, "settled on redelivery", func() bool { again.mu.Lock(); defer again.mu.Unlock(); return again.acks == 1 })
	if calls.Load() != before {
		t.Fatalf("the redelivery called Graph again (%d calls, %d before)", calls.Load(), before)
	}
	if err := s.w.Ready(); err != nil {
		t.Fatalf("Ready() = %v after a publish succeeded", err)
	}
}

// TestPublishRetriesAreBounded: a publish failing for another reason is retried within
// the publish budget, then the message is handed back: it never holds a slot for ever.
func TestPublishRetriesAreBounded(t *testing.T) {
	t.Parallel()
	g, _ := answers(202)
	s, fs := newFlakySetup(t, Config{Concurrency: 1, PublishBudget: 300 * time.Millisecond}, g)
	timeout := errors.New("nats: timeout")
	fs.fail.Store(&timeout)
	start := time.Now()
	m := s.send(guid(1), 1)
	waitFor(t, "handed back", func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.naks) == 1 })
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("held the slot for %s with a budget of 300ms", d)
	}
	if fs.n.Load() < 2 {
		t.Fatalf("%d publish attempts, want retries", fs.n.Load())
	}
	if err := s.w.Ready(); err == nil {
		t.Fatal("ready while events cannot be stored")
	}
}

// TestGraphTextIsBounded: a 2 MiB error message is cut, with a marker, in the event.
func TestGraphTextIsBounded(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("é", 1<<20)
	s := newSetup(t, Config{}, func(context.Context, string) (Response, error) {
		return Response{Status: 404, ErrorCode: "ResourceNotFound", ErrorMessage: huge}, nil
	})
	s.send(guid(1), 1)
	waitFor(t, "failed", func() bool { return s.sink.kinds()[KindFailed] == 1 })
	s.sink.mu.Lock()
	defer s.sink.mu.Unlock()
	msg := s.sink.events[0].Data.Error.Message
	if len(msg) > MaxFieldBytes || !strings.HasSuffix(msg, TruncatedMarker) || !strings.HasPrefix(msg, "Graph answered 404") {
		t.Fatalf("error message of %d bytes: %q...", len(msg), msg[:min(len(msg), 60)])
	}
	if len(s.sink.dls[0].Detail) > MaxFieldBytes {
		t.Fatalf("dead letter detail of %d bytes", len(s.sink.dls[0].Detail))
	}
}

// TestRedirectFails: a 3xx is never taken for success.
func TestRedirectFails(t *testing.T) {
	t.Parallel()
	for _, status := range []int{301, 302, 303, 307, 308} {
		c := classify(Response{Status: status}, nil)
		if c.verdict != verdictPermanent || c.code != CodeAPIError {
			t.Errorf("%d: %+v, want failed api_error", status, c)
		}
	}
}

// TestPauseIsCapped: a pause of ten years, however heard, closes the gate for an hour.
func TestPauseIsCapped(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	g := NewGate(func() time.Time { return now }, nil)
	g.pauseUntil(now.Add(10 * 365 * 24 * time.Hour))
	if g.until.Sub(now) != MaxPause {
		t.Fatalf("paused for %s", g.until.Sub(now))
	}
}

// TestRetryAfterZeroIsNotALoop: a Graph answering 429 with Retry-After 0, with no rate
// limit, is called a bounded number of times in a delivery, not in a tight loop.
func TestRetryAfterZeroIsNotALoop(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	var mu sync.Mutex
	s := newSetup(t, Config{DeliveryBudget: 300 * time.Millisecond, Backoff: Backoff{Initial: 50 * time.Millisecond, Max: time.Second}},
		func(context.Context, string) (Response, error) {
			mu.Lock()
			defer mu.Unlock()
			calls.Add(1)
			return Response{Status: 429, HasRetryAfter: true, RetryAfter: 0}, nil
		})
	m := s.send(guid(1), 1)
	waitFor(t, "handed back", func() bool { m.mu.Lock(); defer m.mu.Unlock(); return len(m.naks) == 1 })
	if n := calls.Load(); n > 7 {
		t.Fatalf("%d calls within a 300ms budget with a first delay of 50ms", n)
	}
}

// TestRefusedAckFailsReadiness: an ack the server does not confirm (an account that may
// not ack) makes readiness say so, until an ack is confirmed again.
func TestRefusedAckFailsReadiness(t *testing.T) {
	t.Parallel()
	g, _ := answers(202)
	s := newSetup(t, Config{}, g)
	refused := &fakeMsg{d: Delivery{Data: []byte(guid(1)), Stream: "S", StreamSeq: 1, NumDelivered: 1, Timestamp: time.Now()},
		ackErr: errors.New("nats: permissions violation for publish to $JS.ACK.S")}
	s.src.ch <- refused
	waitFor(t, "not ready", func() bool {
		err := s.w.Ready()
		return err != nil && strings.Contains(err.Error(), "acks are not confirmed")
	})
	s.send(guid(2), 1)
	waitFor(t, "ready again", func() bool { return s.w.Ready() == nil })
}

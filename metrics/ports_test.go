package metrics

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/reprocessor/reprocessor/worker"
)

type fakeMessage struct{ d worker.Delivery }

func (m fakeMessage) Delivery() worker.Delivery      { return m.d }
func (fakeMessage) Ack() error                       { return nil }
func (fakeMessage) NakWithDelay(time.Duration) error { return nil }
func (fakeMessage) InProgress() error                { return nil }
func (s fakeSource) Fetch(_ context.Context, _ int, handle func(worker.Message)) error {
	for _, m := range s {
		handle(m)
	}
	return nil
}

type fakeSource []worker.Message

// TestDecorateSource counts first deliveries and redeliveries apart, and every message
// still reaches the worker's handler.
func TestDecorateSource(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	stored := time.Now().Add(-2 * time.Second)
	src := m.DecorateSource(fakeSource{
		fakeMessage{worker.Delivery{NumDelivered: 1, Timestamp: stored}},
		fakeMessage{worker.Delivery{NumDelivered: 1, Timestamp: stored}},
		fakeMessage{worker.Delivery{NumDelivered: 3, Timestamp: stored}},
	})
	handled := 0
	if err := src.Fetch(t.Context(), 3, func(worker.Message) { handled++ }); err != nil {
		t.Fatal(err)
	}
	if handled != 3 {
		t.Errorf("handled %d, want 3", handled)
	}
	if first, again := testutil.ToFloat64(m.received[0]), testutil.ToFloat64(m.received[1]); first != 2 || again != 1 {
		t.Errorf("received first=%v redelivered=%v, want 2 and 1", first, again)
	}
	if n := sampleCount(t, reg, "reprocessor_queue_wait_seconds"); n != 3 {
		t.Errorf("queue waits observed %d, want 3", n)
	}
}

// storeFunc is an EventPublisher and a DeadLetterer answering what it is given.
type storeFunc struct {
	stored worker.Stored
	err    error
}

func (s storeFunc) PublishEvent(context.Context, *worker.Event) (worker.Stored, error) {
	return s.stored, s.err
}

func (s storeFunc) DeadLetter(context.Context, worker.Delivery, worker.DeadLetter) (worker.Stored, error) {
	return s.stored, s.err
}

func event(kind string) *worker.Event { return &worker.Event{Type: worker.TypePrefix + kind} }

// TestDecorateEvents: a stored event counts by kind, a failure counts once per publication,
// a terminal event the stream already held counts as a duplicate (and a conflict when the
// stored outcome differs), and a state_changed duplicate is no outcome at all.
func TestDecorateEvents(t *testing.T) {
	t.Parallel()
	m, _ := setup(t)
	ctx := t.Context()
	for _, c := range []struct {
		store storeFunc
		e     *worker.Event
	}{
		{storeFunc{}, event(worker.KindAccepted)},
		{storeFunc{}, event(worker.KindStateChanged)},
		{storeFunc{err: errors.New("nats: timeout")}, event(worker.KindAccepted)},
		{storeFunc{stored: worker.Stored{Duplicate: true}}, event(worker.KindFailed)},
		{storeFunc{stored: worker.Stored{Duplicate: true, Event: event(worker.KindAccepted)}}, event(worker.KindFailed)},
		{storeFunc{stored: worker.Stored{Duplicate: true, Event: event(worker.KindAccepted)}}, event(worker.KindAccepted)},
		{storeFunc{stored: worker.Stored{Duplicate: true}}, event(worker.KindStateChanged)},
	} {
		_, err := m.DecorateEvents(c.store).PublishEvent(ctx, c.e)
		if !errors.Is(err, c.store.err) {
			t.Fatalf("error %v, want %v", err, c.store.err)
		}
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"published accepted", testutil.ToFloat64(m.eventsPublished.get(worker.KindAccepted)), 1},
		{"published state_changed", testutil.ToFloat64(m.eventsPublished.get(worker.KindStateChanged)), 1},
		{"publish failures", testutil.ToFloat64(m.eventPublishFailures), 1},
		{"duplicate failed", testutil.ToFloat64(m.duplicateOutcomes.get(worker.KindFailed)), 2},
		{"duplicate accepted", testutil.ToFloat64(m.duplicateOutcomes.get(worker.KindAccepted)), 1},
		{"duplicate state_changed", testutil.ToFloat64(m.duplicateOutcomes.get(worker.KindStateChanged)), 0},
		{"conflicting failed", testutil.ToFloat64(m.conflictingOutcomes.get(worker.KindFailed)), 1},
		{"conflicting accepted", testutil.ToFloat64(m.conflictingOutcomes.get(worker.KindAccepted)), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestDecorateDeadLetters counts a stored dead letter by its code, once: not a failed one,
// not one the stream already held.
func TestDecorateDeadLetters(t *testing.T) {
	t.Parallel()
	m, _ := setup(t)
	dl := worker.DeadLetter{Code: worker.CodeNotFound}
	for _, s := range []storeFunc{{}, {stored: worker.Stored{Duplicate: true}}, {err: errors.New("nats: timeout")}} {
		if _, err := m.DecorateDeadLetters(s).DeadLetter(t.Context(), worker.Delivery{}, dl); !errors.Is(err, s.err) {
			t.Fatalf("error %v, want %v", err, s.err)
		}
	}
	if got := testutil.ToFloat64(m.deadLettered.get(worker.CodeNotFound)); got != 1 {
		t.Errorf("dead lettered %v, want 1", got)
	}
}

type limiterFunc func(context.Context) error

func (f limiterFunc) Wait(ctx context.Context) error { return f(ctx) }

// TestDecorateLimiter: no limiter stays none (the worker skips waiting), a wait is recorded,
// a wait cut short by shutdown is not.
func TestDecorateLimiter(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	if l := m.DecorateLimiter(nil); l != nil {
		t.Fatalf("DecorateLimiter(nil) = %v, want nil", l)
	}
	ok := m.DecorateLimiter(limiterFunc(func(context.Context) error { return nil }))
	cut := m.DecorateLimiter(limiterFunc(func(ctx context.Context) error { return context.Canceled }))
	if err := ok.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := cut.Wait(t.Context()); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if n := sampleCount(t, reg, "reprocessor_rate_limit_wait_seconds"); n != 1 {
		t.Errorf("rate-limit waits observed %d, want 1", n)
	}
}

// sampleCount is the number of observations of the unlabelled histogram name.
func sampleCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("no %s", name)
	return 0
}

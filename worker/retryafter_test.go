package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand, safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Unix(1_800_000_000, 0).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// TestLongRetryAfterHandsBackUncounted: a 429 with Retry-After 315 s, far longer than a
// delivery may wait, pauses the process (and every replica) for 315 s and hands the
// request back with that delay; nothing is fetched meanwhile; that delivery does not count
// against MaxDeliver; after the pause work resumes.
func TestLongRetryAfterHandsBackUncounted(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	var statuses atomic.Value
	statuses.Store([]int{429})
	var calls atomic.Int64
	g := graphFunc(func(context.Context, string) (Response, error) {
		s := statuses.Load().([]int)
		n := int(calls.Add(1)) - 1
		st := s[min(n, len(s)-1)]
		if st == 429 {
			return Response{Status: 429, HasRetryAfter: true, RetryAfter: 315 * time.Second}, nil
		}
		return Response{Status: st}, nil
	})
	src, sk, pauses := &fakeSource{ch: make(chan Message, 10)}, &sink{}, &pauseRecorder{}
	gate := NewGate(clock.Now, nil)
	gate.ShareWith(pauses)
	w, err := New(Config{MaxDeliver: 2, DeliveryBudget: time.Millisecond, Now: clock.Now,
		Backoff: Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond}},
		Deps{Source: src, Graph: g, Events: sk, DeadLetters: sk, Gate: gate})
	if err != nil {
		t.Fatal(err)
	}
	runWorker(t, w)

	first := &fakeMsg{d: Delivery{Data: []byte(guid(1)), Stream: "S", StreamSeq: 1, NumDelivered: 1, Timestamp: clock.Now()}}
	src.ch <- first
	waitFor(t, "the request handed back", func() bool { first.mu.Lock(); defer first.mu.Unlock(); return len(first.naks) == 1 })
	if d := first.naks[0]; d < 315*time.Second || d > 315*time.Second*21/20 {
		t.Fatalf("handed back with a delay of %s, want 315 s (and at most 5%% jitter)", d)
	}
	if k := sk.kinds(); len(k) != 0 {
		t.Fatalf("events for a throttled request: %v", k)
	}
	pauses.mu.Lock()
	shared := len(pauses.pauses) == 1 && pauses.pauses[0].Sub(clock.Now()) == 315*time.Second
	pauses.mu.Unlock()
	if !shared {
		t.Fatalf("the pause was not shared with the other replicas as 315 s: %v", pauses.pauses)
	}

	// While the pause lasts nothing is fetched.
	clock.Advance(300 * time.Second)
	if n, _ := w.allowed(); n != 0 {
		t.Fatalf("%d requests may be fetched 15 s before the pause ends, want none", n)
	}
	statuses.Store([]int{0, 500})
	again := func(n uint64) *fakeMsg {
		d := first.d
		d.NumDelivered = n
		return &fakeMsg{d: d}
	}
	// After it, the second delivery (MaxDeliver 2) meets a 500: as the first delivery was
	// the Retry-After's, it is handed back, not failed. The clock moves past the pause
	// before the delivery is sent: a fetch already waiting on this fake source takes it at
	// once, and during the pause it would be handed back for the pause's end instead.
	clock.Advance(16 * time.Second)
	second := again(2)
	src.ch <- second
	w.Wake()
	waitFor(t, "the second delivery handed back", func() bool { second.mu.Lock(); defer second.mu.Unlock(); return len(second.naks) == 1 })
	if k := sk.kinds(); len(k) != 0 {
		t.Fatalf("events after the second delivery: %v", k)
	}
	// The third meets a 500 too: two deliveries that failed, the most: failed. It is sent
	// once the second is done with: a delivery arriving while the same process still works
	// the message is left to that work (the coalescer), and this fake source never
	// redelivers it.
	waitFor(t, "the second delivery done with", func() bool { return w.requests.inflight.Load() == 0 })
	third := again(3)
	src.ch <- third
	waitFor(t, "failed on the third delivery", func() bool { return sk.kinds()[KindFailed] == 1 })
	sk.mu.Lock()
	defer sk.mu.Unlock()
	if e := sk.events[0]; e.Data.Error == nil || e.Data.Error.Code != CodeRetriesExhausted {
		t.Fatalf("event %+v, want failed with retries_exhausted", e.Data)
	}
}

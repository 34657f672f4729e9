package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/worker"
)

// fetch runs one Fetch and returns what it handed out.
func fetch(t *testing.T, q *Queue, max int) []worker.Message {
	t.Helper()
	var got []worker.Message
	if err := q.Fetch(testContext(t), max, func(m worker.Message) { got = append(got, m) }); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	return got
}

// fetchUntil fetches until it gets a message, or fails the test after limit.
func fetchUntil(t *testing.T, q *Queue, limit time.Duration) worker.Message {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if got := fetch(t, q, 1); len(got) == 1 {
			return got[0]
		}
	}
	t.Fatalf("no message within %s", limit)
	return nil
}

func ack(t *testing.T, msgs ...worker.Message) {
	t.Helper()
	for _, m := range msgs {
		if err := m.Ack(); err != nil {
			t.Fatalf("ack: %v", err)
		}
	}
}

func TestFetchDeliversAndRespectsMax(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{FetchMaxWait: 300 * time.Millisecond})
	before := time.Now().Add(-time.Second)
	var seqs []uint64
	for i := range 5 {
		h := nats.Header{"X-Request": {fmt.Sprint(i)}, "X-Multi": {"a", "b"}}
		seqs = append(seqs, f.publishRequest(t, []byte(fmt.Sprintf("id-%d", i)), h))
	}

	got := fetch(t, f.q, 3)
	if len(got) != 3 {
		t.Fatalf("fetched %d messages with max 3", len(got))
	}
	for i, m := range got {
		d := m.Delivery()
		if string(d.Data) != fmt.Sprintf("id-%d", i) || d.Subject != "entitlement.reprocess.requests" ||
			d.Stream != DefaultRequestsStream || d.StreamSeq != seqs[i] || d.NumDelivered != 1 ||
			d.Timestamp.Before(before) || d.Timestamp.After(time.Now()) {
			t.Errorf("delivery %d: %+v", i, d)
		}
		if v := d.Header["X-Request"]; len(v) != 1 || v[0] != fmt.Sprint(i) {
			t.Errorf("delivery %d: X-Request %q", i, v)
		}
		if v := d.Header["X-Multi"]; len(v) != 2 {
			t.Errorf("delivery %d: X-Multi %q", i, v)
		}
	}
	ack(t, got...)

	rest := fetch(t, f.q, 10)
	if len(rest) != 2 || string(rest[0].Delivery().Data) != "id-3" {
		t.Fatalf("second fetch: %d messages", len(rest))
	}
	ack(t, rest...)

	if empty := fetch(t, f.q, 10); len(empty) != 0 {
		t.Fatalf("fetch on an empty queue: %d messages", len(empty))
	}
	// Acked messages leave the work queue.
	if n := f.streamMsgs(t, DefaultRequestsStream); n != 0 {
		t.Errorf("requests stream holds %d messages after acks", n)
	}
}

func TestFetchRedeliversUnackedAfterAckWait(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{AckWait: time.Second, FetchMaxWait: 500 * time.Millisecond})
	f.publishRequest(t, []byte("x"), nil)

	first := fetchUntil(t, f.q, 5*time.Second)
	if first.Delivery().NumDelivered != 1 {
		t.Fatalf("first delivery: %+v", first.Delivery())
	}
	again := fetchUntil(t, f.q, 10*time.Second)
	if d := again.Delivery(); d.NumDelivered != 2 || d.StreamSeq != first.Delivery().StreamSeq {
		t.Fatalf("redelivery: %+v", d)
	}
	ack(t, again)
}

func TestInProgressExtendsAckDeadline(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{AckWait: time.Second, FetchMaxWait: 2500 * time.Millisecond})
	f.publishRequest(t, []byte("x"), nil)
	m := fetchUntil(t, f.q, 5*time.Second)

	// Keep the message in progress while a pull longer than two AckWaits runs: it must not
	// come back meanwhile.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if err := m.InProgress(); err != nil {
					t.Errorf("in progress: %v", err)
					return
				}
			}
		}
	}()
	got := fetch(t, f.q, 1)
	close(stop)
	<-done
	if len(got) != 0 {
		t.Fatalf("message redelivered while in progress: %+v", got[0].Delivery())
	}
	// Once no longer in progress, it comes back.
	again := fetchUntil(t, f.q, 10*time.Second)
	if again.Delivery().NumDelivered != 2 {
		t.Fatalf("redelivery: %+v", again.Delivery())
	}
	ack(t, again)
}

func TestNakWithDelayDelaysRedelivery(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{AckWait: 30 * time.Second, FetchMaxWait: 300 * time.Millisecond})
	f.publishRequest(t, []byte("x"), nil)
	m := fetchUntil(t, f.q, 5*time.Second)

	const delay = 1500 * time.Millisecond
	start := time.Now()
	if err := m.NakWithDelay(delay); err != nil {
		t.Fatalf("nak: %v", err)
	}
	if got := fetch(t, f.q, 1); len(got) != 0 {
		t.Fatalf("redelivered at once after NakWithDelay")
	}
	again := fetchUntil(t, f.q, 10*time.Second)
	if elapsed := time.Since(start); elapsed < delay-100*time.Millisecond {
		t.Errorf("redelivered after %s, want at least %s", elapsed, delay)
	}
	if again.Delivery().NumDelivered != 2 {
		t.Errorf("redelivery: %+v", again.Delivery())
	}
	ack(t, again)
}

func TestPending(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{FetchMaxWait: 300 * time.Millisecond})
	ctx := testContext(t)
	for range 5 {
		f.publishRequest(t, []byte("x"), nil)
	}
	// The consumer's counts may trail the stream and the deliveries by a moment on a busy
	// machine.
	wantPending := func(when string, wantPending, wantAckPending uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			pending, ackPending, err := f.q.Pending(ctx)
			if err == nil && pending == wantPending && ackPending == wantAckPending {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: pending %d, ack pending %d, %v; want %d, %d", when, pending, ackPending, err, wantPending, wantAckPending)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wantPending("after publishing 5", 5, 0)
	got := fetch(t, f.q, 2)
	wantPending("after fetching 2", 3, 2)
	ack(t, got...)
}

func TestFetchReturnsWhenContextDone(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{FetchMaxWait: time.Minute})
	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	go func() { errc <- f.q.Fetch(ctx, 1, func(worker.Message) {}) }()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("fetch after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fetch did not return after its context was cancelled")
	}
	if err := f.q.Fetch(ctx, 1, func(worker.Message) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("fetch with a done context: %v", err)
	}
	if err := f.q.Fetch(testContext(t), 0, func(worker.Message) {}); err == nil {
		t.Error("fetch with max 0: no error")
	}
}

func TestFetchWhileDisconnected(t *testing.T) {
	t.Parallel()
	srv, err := StartEmbedded(EmbeddedConfig{Port: -1, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	logger := testLogger(t)
	ctx := testContext(t)
	nc, err := Connect(ctx, ConnConfig{URL: srv.ClientURL()}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	disconnected := make(chan struct{})
	nc.SetDisconnectErrHandler(func(*nats.Conn, error) { close(disconnected) })
	js := jetstreamFor(t, nc)
	q, err := Setup(ctx, js, Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	<-disconnected
	err = q.Fetch(ctx, 1, func(worker.Message) {})
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("fetch while disconnected: %v, want ErrNotConnected", err)
	}
	nc.Close()
	err = q.Fetch(ctx, 1, func(worker.Message) {})
	if !errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, ErrNotConnected) {
		t.Fatalf("fetch on a closed connection: %v, want nats.ErrConnectionClosed", err)
	}
}

package queue

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/worker"
)

// benchSetup is setup with a silent logger.
func benchSetup(b *testing.B, cfg Config) fixture {
	b.Helper()
	srv := startServer(b, b.TempDir())
	nc, js := connect(b, srv.ClientURL())
	q, err := Setup(testContext(b), js, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatalf("setup: %v", err)
	}
	return fixture{srv: srv, nc: nc, js: js, q: q}
}

// BenchmarkPublishEvent publishes distinct events from many goroutines, each waiting for
// its acknowledgement, as the worker's handlers do.
func BenchmarkPublishEvent(b *testing.B) {
	f := benchSetup(b, Config{})
	ctx := testContext(b)
	var seq atomic.Uint64
	b.SetParallelism(16) // many handlers per core, as with a worker concurrency in the tens
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		e := testEvent("")
		for pb.Next() {
			e.ID = worker.RequestRef(DefaultRequestsStream, seq.Add(1), time.Unix(0, 1)) + "-outcome"
			if _, err := f.q.PublishEvent(ctx, e); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkFetchAck fetches and acknowledges requests queued beforehand, in batches of 100.
func BenchmarkFetchAck(b *testing.B) {
	f := benchSetup(b, Config{FetchMaxWait: time.Second, MaxAckPending: 10_000})
	ctx := testContext(b)
	queueRequests(b, f, b.N)
	b.ResetTimer()
	done := 0
	for done < b.N {
		err := f.q.Fetch(ctx, min(100, b.N-done), func(m worker.Message) {
			if err := m.Ack(); err != nil {
				b.Error(err)
			}
			done++
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkAckAwaited compares the acknowledgement the worker sends (Ack: fire and forget)
// with one awaited (DoubleAck: the server confirms it), 64 messages at a time as the
// worker's slots do: what awaiting every ack would cost (the whole worker's cost is in
// "reprocessor bench --rate 0", where it was 13-17%).
func BenchmarkAckAwaited(b *testing.B) {
	for _, awaited := range []bool{false, true} {
		name := "ack"
		if awaited {
			name = "double_ack"
		}
		b.Run(name, func(b *testing.B) {
			f := benchSetup(b, Config{FetchMaxWait: time.Second, MaxAckPending: 10_000})
			ctx := testContext(b)
			queueRequests(b, f, b.N)
			work := make(chan *message, 64)
			var wg sync.WaitGroup
			for range 64 {
				wg.Go(func() {
					for m := range work {
						var err error
						if awaited {
							err = m.msg.DoubleAck(ctx)
						} else {
							err = m.msg.Ack()
						}
						if err != nil {
							b.Error(err)
						}
					}
				})
			}
			b.ResetTimer()
			done := 0
			for done < b.N {
				err := f.q.Fetch(ctx, min(100, b.N-done), func(m worker.Message) {
					work <- m.(*message)
					done++
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			close(work)
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// queueRequests publishes n requests before a benchmark's timer starts.
func queueRequests(b *testing.B, f fixture, n int) {
	b.Helper()
	ctx := testContext(b)
	requests, _, _ := f.q.cfg.Subjects()
	for i := range n {
		if _, err := f.js.PublishAsync(requests, fmt.Appendf(nil, "0f8fad5b-d9cb-469f-a165-%012d", i)); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 || i == n-1 {
			select {
			case <-f.js.PublishAsyncComplete():
			case <-ctx.Done():
				b.Fatal("queueing requests timed out")
			}
		}
	}
}

package queue_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// An embedded server, the streams and consumer, one request fetched and acknowledged.
func Example() {
	dir, err := os.MkdirTemp("", "queue-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := slog.New(slog.DiscardHandler)

	srv, err := queue.StartEmbedded(queue.EmbeddedConfig{Port: -1, DataDir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, err := queue.Connect(ctx, queue.ConnConfig{URL: srv.ClientURL()}, logger)
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	q, err := queue.Setup(ctx, js, queue.Config{FetchMaxWait: time.Second}, logger)
	if err != nil {
		panic(err)
	}

	requests, _, _ := q.Config().Subjects()
	if _, err := js.Publish(ctx, requests, []byte("0f8fad5b-d9cb-469f-a165-70867728950e")); err != nil {
		panic(err)
	}
	err = q.Fetch(ctx, 10, func(m worker.Message) {
		d := m.Delivery()
		fmt.Printf("%s #%d on %s: %s\n", d.Stream, d.StreamSeq, d.Subject, d.Data)
		if err := m.Ack(); err != nil {
			panic(err)
		}
	})
	if err != nil {
		panic(err)
	}
	// Output: REPROCESS_REQUESTS #1 on entitlement.reprocess.requests: 0f8fad5b-d9cb-469f-a165-70867728950e
}

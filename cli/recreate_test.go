package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/worker"
)

// TestDeletedStreamsAreRecreated: an operator deletes the consumer and the events stream
// while the worker runs. The worker notices, says so, creates them again and goes on:
// requests published after are settled and their events stored.
func TestDeletedStreamsAreRecreated(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the queue poll")
	}
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	w := sys.startWorker(env{})
	sys.publish(payloads(ids(5, 71))...)
	sys.waitFor("5 events", 30*time.Second, func() bool { return kinds(sys.readEvents())[worker.KindAccepted] == 5 })

	ctx := context.Background()
	if err := sys.js.DeleteConsumer(ctx, "REPROCESS_REQUESTS", "reprocessor"); err != nil {
		t.Fatal(err)
	}
	if err := sys.js.DeleteStream(ctx, "REPROCESS_EVENTS"); err != nil {
		t.Fatal(err)
	}
	sys.waitFor("the worker to say so and recreate them", 30*time.Second, func() bool {
		return strings.Contains(w.logs.String(), "streams or consumers are missing") &&
			strings.Contains(w.logs.String(), "created the missing streams and consumers again")
	})
	want := ids(5, 72)
	sys.publish(payloads(want)...)
	sys.waitTerminal(want, 60*time.Second)
	if code, body := w.get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d after the repair: %s", code, body)
	}
}

// TestDeletedConsumerWithNoCreate: with creation turned off, a deleted consumer makes
// readiness fail, naming it, until an operator creates it again.
func TestDeletedConsumerWithNoCreate(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the queue poll")
	}
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.startWorker(env{}).stop() // creates the streams and the consumer
	w := sys.startWorker(env{"REPROCESSOR_NO_CREATE": "true"})
	sys.waitFor("ready", 30*time.Second, func() bool { code, _ := w.get("/readyz"); return code == 200 })
	if err := sys.js.DeleteConsumer(context.Background(), "REPROCESS_REQUESTS", "reprocessor"); err != nil {
		t.Fatal(err)
	}
	sys.waitFor("not ready, naming the consumer", 30*time.Second, func() bool {
		code, body := w.get("/readyz")
		return code != 200 && strings.Contains(body, "consumer reprocessor on stream REPROCESS_REQUESTS")
	})
}

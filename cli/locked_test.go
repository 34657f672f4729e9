package cli

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// lockedDownPermissions are exactly what README's "Locked-down accounts" says the worker's
// account needs with REPROCESSOR_NO_CREATE, for the default prefix.
func lockedDownPermissions() *server.Permissions {
	const p = "entitlement.reprocess"
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			// look up the streams and the consumers
			"$JS.API.STREAM.INFO.REPROCESS_REQUESTS", "$JS.API.STREAM.INFO.REPROCESS_EVENTS",
			"$JS.API.STREAM.INFO.REPROCESS_DLQ", "$JS.API.STREAM.INFO.REPROCESS_VERIFY",
			"$JS.API.CONSUMER.INFO.REPROCESS_REQUESTS.reprocessor",
			"$JS.API.CONSUMER.INFO.REPROCESS_VERIFY.reprocessor-verify",
			// pull and ack from them
			"$JS.API.CONSUMER.MSG.NEXT.REPROCESS_REQUESTS.reprocessor",
			"$JS.API.CONSUMER.MSG.NEXT.REPROCESS_VERIFY.reprocessor-verify",
			"$JS.ACK.REPROCESS_REQUESTS.reprocessor.>",
			"$JS.ACK.REPROCESS_VERIFY.reprocessor-verify.>",
			// read back the stored terminal event a duplicate stands for
			"$JS.API.STREAM.MSG.GET.REPROCESS_EVENTS",
			// publish events, dead letters and state checks; share throttling
			p + ".events.>", p + ".dlq", p + ".verify", p + ".control.>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", p + ".control.>"}},
	}
}

// TestLockedDownAccount runs a worker as a NATS user holding only the permissions README
// lists, against streams an administrator provisioned, with state tracking and the shared
// adaptive rate on, and checks that every request is worked and nothing was refused.
func TestLockedDownAccount(t *testing.T) {
	t.Parallel()
	srv := startJetStreamServer(t, &server.Options{Users: []*server.User{
		{Username: "admin", Password: "admin-pw"},
		{Username: "worker", Password: "worker-pw", Permissions: lockedDownPermissions()},
	}})
	sys := newSystemOn(t, graphtest.Options{}, srv.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	sys.ensureStreams() // the administrator provisions

	w := sys.startWorker(env{
		"NATS_USER": "worker", "NATS_PASSWORD": "worker-pw",
		"REPROCESSOR_NO_CREATE":       "true",
		"REPROCESSOR_RATE":            "auto",
		"REPROCESSOR_VERIFY":          "true",
		"REPROCESSOR_VERIFY_DELAY":    "100ms",
		"REPROCESSOR_VERIFY_DEADLINE": "4s",
	})
	good := ids(20, 907)
	sys.gt.SetAnswer(good[0], 404) // one dead letter
	sys.publish(payloads(good)...)

	var evs []worker.Event
	sys.waitFor("every request ended and tracked", 60*time.Second, func() bool {
		evs = sys.readEvents()
		k := kinds(evs)
		final := 0
		for _, e := range evs {
			if e.Data.Final {
				final++
			}
		}
		return k[worker.KindAccepted] == 19 && k[worker.KindFailed] == 1 && final == 19
	})
	if n := len(sys.streamMessages("REPROCESS_DLQ")); n != 1 {
		t.Errorf("%d dead letters, want 1", n)
	}
	if code, body := w.get("/readyz"); code != 200 {
		t.Errorf("/readyz %d: %s", code, body)
	}
	if err := w.stop(); err != nil {
		t.Fatalf("worker: %v", err)
	}
	if logs := w.logs.String(); strings.Contains(strings.ToLower(logs), "permission") {
		t.Errorf("the worker met a permission it was not given:\n%s", logs)
	}
}

// TestLockedDownPermissionsDocumented keeps README's permission block and the test's in step.
func TestLockedDownPermissionsDocumented(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "### Locked-down accounts")
	section, _, _ = strings.Cut(section, "\n### ")
	p := lockedDownPermissions()
	for _, s := range append(p.Publish.Allow, p.Subscribe.Allow...) {
		if !strings.Contains(section, `"`+s+`"`) {
			t.Errorf("README's locked-down permissions lack %q", s)
		}
	}
}

// TestRefusedAcks: a worker whose account may not ack requests (a permissions mistake)
// sees every settled request come back. Each still has exactly one terminal event (the
// redeliveries are dropped by the events stream), and /readyz says why.
func TestRefusedAcks(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out redeliveries")
	}
	t.Parallel()
	perms := lockedDownPermissions()
	perms.Publish.Allow = slices.DeleteFunc(perms.Publish.Allow, func(s string) bool { return strings.HasPrefix(s, "$JS.ACK.REPROCESS_REQUESTS") })
	srv := startJetStreamServer(t, &server.Options{Users: []*server.User{
		{Username: "admin", Password: "admin-pw"},
		{Username: "worker", Password: "worker-pw", Permissions: perms},
	}})
	sys := newSystemOn(t, graphtest.Options{}, srv.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	if _, err := queue.Setup(context.Background(), sys.js, queue.Config{AckWait: time.Second}, nil); err != nil {
		t.Fatal(err) // the administrator provisions, with a short ack wait
	}
	w := sys.startWorker(env{
		"NATS_USER": "worker", "NATS_PASSWORD": "worker-pw",
		"REPROCESSOR_NO_CREATE": "true",
		"REPROCESSOR_ACK_WAIT":  "1s",
	})
	want := ids(10, 911)
	sys.publish(payloads(want)...)
	sys.waitFor("not ready, saying acks are refused", 30*time.Second, func() bool {
		code, body := w.get("/readyz")
		return code != 200 && strings.Contains(body, "refused an ack")
	})
	// Redeliveries come every second and are settled again (as the same process remembers
	// them accepted, without calling Graph); after a few, still one terminal event each.
	sys.waitFor("redeliveries", 30*time.Second, func() bool {
		_, body := w.get("/metrics")
		return metricValue(body, `reprocessor_duplicate_outcomes_total{kind="accepted"}`) >= float64(2*len(want))
	})
	sys.waitTerminal(want, 30*time.Second)
}

package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/graph/graphtest"
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
	readme, err := os.ReadFile("../../README.md")
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

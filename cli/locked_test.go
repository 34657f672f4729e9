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

	"github.com/reprocessor/reprocessor/bulk"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// lockedDownPermissions are exactly what docs/operations.md's "Locked-down accounts" says the worker's
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

// TestLockedDownAccount runs a worker as a NATS user holding only the permissions docs/operations.md
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

// TestLockedDownPermissionsDocumented keeps the permission blocks of docs/operations.md
// and the tests' in step: the worker's, and enqueue's and dlq's.
func TestLockedDownPermissionsDocumented(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, found := strings.Cut(string(doc), "\n## Locked-down accounts")
	if !found {
		t.Fatal(`docs/operations.md has no "Locked-down accounts" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	workerPart, bulkPart, found := strings.Cut(section, "### enqueue and dlq")
	if !found {
		t.Fatal(`the section has no "### enqueue and dlq" part`)
	}
	for _, c := range []struct {
		what, text string
		p          *server.Permissions
	}{{"the worker's", workerPart, lockedDownPermissions()}, {"enqueue's and dlq's", bulkPart, bulkPermissions()}} {
		for _, s := range append(c.p.Publish.Allow, c.p.Subscribe.Allow...) {
			if !strings.Contains(c.text, `"`+s+`"`) {
				t.Errorf("docs/operations.md: %s locked-down permissions lack %q", c.what, s)
			}
		}
	}
}

// bulkPermissions are exactly what docs/operations.md says enqueue (with --wait) and dlq
// list and replay need against provisioned streams, for the default prefix.
func bulkPermissions() *server.Permissions {
	const p = "entitlement.reprocess"
	allow := []string{
		// look up the streams
		"$JS.API.STREAM.INFO.REPROCESS_REQUESTS", "$JS.API.STREAM.INFO.REPROCESS_RUNS",
		"$JS.API.STREAM.INFO.REPROCESS_EVENTS", "$JS.API.STREAM.INFO.REPROCESS_DLQ",
		// publish requests and the run record
		p + ".requests", p + ".runs.>",
		// dlq replay removes what it put back
		"$JS.API.STREAM.MSG.DELETE.REPROCESS_DLQ",
	}
	// read a stream with an ordered consumer: the run record, the events (--wait), the DLQ
	for _, st := range []string{"REPROCESS_RUNS", "REPROCESS_EVENTS", "REPROCESS_DLQ"} {
		allow = append(allow, "$JS.API.CONSUMER.CREATE."+st+".>", "$JS.API.CONSUMER.INFO."+st+".>",
			"$JS.API.CONSUMER.MSG.NEXT."+st+".>", "$JS.API.CONSUMER.DELETE."+st+".>")
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: allow},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
}

// TestLockedDownBulkAccount runs enqueue --wait, dlq list and dlq replay as a NATS user
// holding only bulkPermissions, against streams an administrator provisioned.
func TestLockedDownBulkAccount(t *testing.T) {
	t.Parallel()
	srv := startJetStreamServer(t, &server.Options{Users: []*server.User{
		{Username: "admin", Password: "admin-pw"},
		{Username: "bulk", Password: "bulk-pw", Permissions: bulkPermissions()},
	}})
	sys := newSystemOn(t, graphtest.Options{}, srv.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	sys.ensureStreams() // the administrator provisions, the run record stream too
	if err := bulk.EnsureRunsStream(context.Background(), sys.js, bulk.RunsConfig{Prefix: "entitlement.reprocess"}); err != nil {
		t.Fatal(err)
	}
	sys.startWorker(env{"NATS_USER": "admin", "NATS_PASSWORD": "admin-pw"})
	want := ids(12, 913)
	sys.gt.SetAnswer(want[0], 403)
	sys.gt.SetAnswer(want[1], 403)

	for k, v := range (env{"NATS_USER": "bulk", "NATS_PASSWORD": "bulk-pw", "REPROCESSOR_NO_CREATE": "true"}) {
		sys.env[k] = v
	}
	code, out, errOut := sys.enqueue(append([]string{"--wait", "--timeout", "60s"}, want...)...)
	if code != exitNotAllAccepted || !strings.Contains(out, "accepted 10, failed 2") {
		t.Fatalf("enqueue: exit %d\n%s\n%s", code, out, errOut)
	}
	sys.deadLetters(2)
	var listOut, listErr syncBuffer
	if code := cmdDLQ(context.Background(), []string{"list", "--json"}, sys.env.get, &listOut, &listErr); code != exitOK || strings.Count(listOut.String(), "\n") != 2 {
		t.Fatalf("dlq list: exit %d\n%s\n%s", code, listOut.String(), listErr.String())
	}
	sys.gt.ClearFaults()
	var replayOut, replayErr syncBuffer
	if code := cmdDLQ(context.Background(), []string{"replay"}, sys.env.get, &replayOut, &replayErr); code != exitOK {
		t.Fatalf("dlq replay: exit %d\n%s\n%s", code, replayOut.String(), replayErr.String())
	}
	sys.waitFor("the DLQ emptied by the replay", 30*time.Second, func() bool { return len(sys.streamMessages("REPROCESS_DLQ")) == 0 })
	if text := out + errOut + listErr.String() + replayErr.String(); strings.Contains(strings.ToLower(text), "permission") {
		t.Errorf("a bulk command met a permission it was not given:\n%s", text)
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

package cli

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/service"
	"github.com/reprocessor/reprocessor/worker"
)

// Tests here run the whole worker in this process against an embedded NATS server and the
// simulated Graph, and check it from the outside: the events stream, the dead-letter
// stream, the consumer's state, the Graph call record and the HTTP endpoints.

func TestAccepts500(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	w := sys.startWorker(env{"REPROCESSOR_CONCURRENCY": "32"})
	want := ids(500, 1)
	sys.publish(payloads(want)...)

	evs := sys.events(500)
	if k := kinds(evs); k[worker.KindAccepted] != 500 || len(evs) != 500 {
		t.Fatalf("events = %v, want 500 accepted", k)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		seen[e.Subject] = true
		if e.SpecVersion != "1.0" || (e.Source != "urn:reprocessor:entitlement.reprocess" || e.Instance != "test") || e.Type != "entitlement.reprocess.accepted" ||
			e.DataContentType != "application/json" || e.Data.AssignmentID != e.Subject || e.Data.HTTPStatus != 202 ||
			e.Data.Attempts != 1 || e.Data.GraphRequestID == "" || e.Data.ClientRequestID == "" ||
			e.Data.RequestedAt.IsZero() || e.Data.CompletedAt.Before(e.Data.RequestedAt) {
			t.Fatalf("malformed accepted event: %+v", e)
		}
	}
	for _, id := range want {
		if !seen[id] {
			t.Fatalf("no event for %s", id)
		}
	}
	calls := sys.gt.Calls()
	reprocess := 0
	crids := map[string]bool{}
	for _, c := range calls {
		if c.Operation != graphtest.OpReprocess {
			continue
		}
		reprocess++
		if !c.TokenValid || c.Status != http.StatusAccepted || c.ClientRequestID == "" || crids[c.ClientRequestID] {
			t.Fatalf("bad reprocess call: %+v", c)
		}
		crids[c.ClientRequestID] = true
	}
	if reprocess != 500 {
		t.Fatalf("%d reprocess calls, want 500", reprocess)
	}
	sys.waitFor("nothing pending", 10*time.Second, func() bool {
		p, ap := sys.pending()
		return p == 0 && ap == 0
	})
	if n := len(sys.streamMessages("REPROCESS_DLQ")); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	if code, body := w.get("/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	if code, _ := w.get("/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}
}

// TestOutcomes runs every row of the outcomes table (DESIGN section 4) through the system.
func TestOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		status   int    // SetAnswer for the id
		kind     string // the terminal event
		code     string // its error code, if any
		dlq      bool
		attempts int
	}{
		{"202 accepted", 0, worker.KindAccepted, "", false, 1},
		{"400 bad request", 400, worker.KindFailed, worker.CodeBadRequest, true, 1},
		{"404 not found", 404, worker.KindFailed, worker.CodeNotFound, true, 1},
		{"409 conflict", 409, worker.KindFailed, worker.CodeConflict, true, 1},
		{"422 other 4xx", 422, worker.KindFailed, worker.CodeAPIError, true, 1},
		{"403 forbidden", 403, worker.KindFailed, worker.CodeForbidden, true, 1},
		{"401 after a refresh", 401, worker.KindFailed, worker.CodeUnauthorized, true, 1},
	}
	sys := newSystem(t, graphtest.Options{})
	sys.startWorker(nil)
	all := ids(len(tests), 2)
	for i, tt := range tests {
		sys.gt.SetAnswer(all[i], tt.status)
	}
	sys.publish(payloads(all)...)
	evs := sys.events(len(tests))
	byID := map[string]worker.Event{}
	for _, e := range evs {
		byID[e.Subject] = e
	}
	dlq := map[string]*nats.Header{}
	for _, m := range sys.deadLetters(kinds(evs)[worker.KindFailed] + kinds(evs)[worker.KindRejected]) {
		h := m.Headers()
		dlq[string(m.Data())] = &h
	}
	for i, tt := range tests {
		e := byID[all[i]]
		code := ""
		if e.Data.Error != nil {
			code = e.Data.Error.Code
		}
		if e.Kind() != tt.kind || code != tt.code || e.Data.Attempts != tt.attempts {
			t.Errorf("%s: event %s code %q attempts %d, want %s %q %d", tt.name, e.Kind(), code, e.Data.Attempts, tt.kind, tt.code, tt.attempts)
		}
		if tt.status != 0 && e.Data.HTTPStatus != tt.status {
			t.Errorf("%s: httpStatus %d", tt.name, e.Data.HTTPStatus)
		}
		h, ok := dlq[all[i]]
		if ok != tt.dlq {
			t.Errorf("%s: dead-lettered = %v, want %v", tt.name, ok, tt.dlq)
		}
		if ok && (h.Get("Reprocess-Error") != tt.code || h.Get("Reprocess-Attempts") != "1" ||
			h.Get("Reprocess-Original-Subject") != "entitlement.reprocess.requests" || h.Get("Reprocess-Stream-Sequence") == "" ||
			h.Get("Reprocess-Error-Detail") == "") {
			t.Errorf("%s: dead-letter headers %v", tt.name, *h)
		}
	}
}

func TestServerErrorStormThenRecovery(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.startWorker(env{"REPROCESSOR_CONCURRENCY": "4"})
	sys.gt.Storm503(12)
	sys.publish(payloads(ids(10, 4))...)
	evs := sys.events(10)
	if k := kinds(evs); k[worker.KindAccepted] != 10 {
		t.Fatalf("events = %v", k)
	}
	if n := len(sys.streamMessages("REPROCESS_DLQ")); n != 0 {
		t.Fatalf("%d dead letters after a 503 storm", n)
	}
	if n := sys.gt.CallCount(graphtest.OpReprocess); n != 22 {
		t.Fatalf("%d reprocess calls, want 22 (12 answered 503)", n)
	}
}

func TestForbiddenOpensCircuit(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	w := sys.startWorker(env{"REPROCESSOR_CONCURRENCY": "4", "REPROCESSOR_CIRCUIT_COOLDOWN": "200ms"})
	sys.gt.Forbid(-1)
	sys.publish(payloads(ids(100, 6))...)
	sys.waitFor("readiness to fail for the circuit", 20*time.Second, func() bool {
		code, body := w.get("/readyz")
		return code == 503 && strings.Contains(body, "circuit open")
	})
	sys.waitFor("20 failures", 20*time.Second, func() bool { return kinds(sys.readEvents())[worker.KindFailed] >= 20 })
	time.Sleep(time.Second) // several probe cycles
	evs := sys.readEvents()
	if k := kinds(evs); k[worker.KindFailed] != 20 || len(evs) != 20 {
		t.Fatalf("events while the circuit is open: %v", k)
	}
	if pending, _ := sys.pending(); pending < 70 {
		t.Fatalf("only %d messages still queued: fetching went on while the circuit was open", pending)
	}
	if _, body := w.get("/metrics"); !strings.Contains(body, "reprocessor_circuit_open 1") {
		t.Fatal("reprocessor_circuit_open is not 1")
	}
	sys.gt.ClearFaults()
	evs = sys.events(100)
	if k := kinds(evs); k[worker.KindAccepted] != 80 || k[worker.KindFailed] != 20 {
		t.Fatalf("events after the fault was removed: %v", k)
	}
	if code, body := w.get("/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %s after the circuit closed", code, body)
	}
	if n := len(sys.deadLetters(20)); n != 20 {
		t.Fatalf("%d dead letters, want 20", n)
	}
}

func TestBadMessagesAreRejected(t *testing.T) {
	t.Parallel()
	const id = "0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12"
	tests := []struct {
		name    string
		payload []byte
		code    string
	}{
		{"empty", []byte{}, worker.CodeInvalidPayload},
		{"not a guid", []byte("not-a-guid"), worker.CodeInvalidID},
		{"traversal", []byte("../users"), worker.CodeInvalidID},
		{"encoded traversal", []byte("%2e%2e%2fusers"), worker.CodeInvalidID},
		{"query appended", []byte(id + "?$expand=target"), worker.CodeInvalidID},
		{"path appended", []byte(id + "/../../users"), worker.CodeInvalidID},
		{"braces", []byte("{" + id + "}"), worker.CodeInvalidID},
		{"urn", []byte("urn:uuid:" + id), worker.CodeInvalidID},
		{"two ids", []byte(id + "\n" + id), worker.CodeInvalidPayload},
		{"invalid json", []byte(`{"id": "` + id), worker.CodeInvalidPayload},
		{"json without id", []byte(`{"correlationId":"x"}`), worker.CodeInvalidPayload},
		{"json numeric id", []byte(`{"id": 12}`), worker.CodeInvalidPayload},
		{"binary", []byte{0x00, 0xff, 0x13, 0x37, 0xc3, 0x28, 0x0a}, worker.CodeInvalidPayload},
		{"512 KiB", bytes.Repeat([]byte("a"), 512*1024), worker.CodePayloadTooLarge},
	}
	sys := newSystem(t, graphtest.Options{})
	sys.startWorker(nil)
	for i, tt := range tests {
		// A header travels with the message and must come back in the dead letter.
		msg := &nats.Msg{Subject: "entitlement.reprocess.requests", Data: tt.payload, Header: nats.Header{"X-Test": []string{fmt.Sprint(i)}}}
		if _, err := sys.js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	evs := sys.events(len(tests))
	dl := sys.deadLetters(len(tests))
	if len(evs) != len(tests) || len(dl) != len(tests) {
		t.Fatalf("%d events and %d dead letters for %d bad messages", len(evs), len(dl), len(tests))
	}
	for i, tt := range tests {
		e := evs[i] // one at a time in order is not guaranteed; find by sequence
		for _, ev := range evs {
			if strings.HasPrefix(ev.ID, fmt.Sprintf("REPROCESS_REQUESTS-%d-", i+1)) {
				e = ev
			}
		}
		if e.Kind() != worker.KindRejected || e.Data.Error == nil || e.Data.Error.Code != tt.code {
			t.Errorf("%s: event %s %+v, want rejected %s", tt.name, e.Kind(), e.Data.Error, tt.code)
		}
		var d *nats.Msg
		for _, m := range dl {
			if m.Headers().Get("X-Test") == fmt.Sprint(i) {
				d = &nats.Msg{Data: m.Data(), Header: m.Headers()}
			}
		}
		if d == nil {
			t.Errorf("%s: no dead letter", tt.name)
			continue
		}
		if !bytes.Equal(d.Data, tt.payload) {
			t.Errorf("%s: dead letter is not a byte-exact copy", tt.name)
		}
		if d.Header.Get("Reprocess-Error") != tt.code || d.Header.Get("Reprocess-Stream-Sequence") != fmt.Sprint(i+1) {
			t.Errorf("%s: dead-letter headers %v", tt.name, d.Header)
		}
	}
	if n := sys.gt.CallCount(graphtest.OpReprocess); n != 0 {
		t.Fatalf("%d Graph calls for bad messages", n)
	}
}

func TestDuplicatesCoalesce(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{LatencyMin: 200 * time.Millisecond})
	sys.startWorker(env{"REPROCESSOR_CONCURRENCY": "8"})
	id := ids(1, 7)[0]
	batch := make([][]byte, 20)
	for i := range batch {
		batch[i] = []byte(id)
	}
	sys.publish(batch...)
	evs := sys.events(20)
	if k := kinds(evs); k[worker.KindAccepted] != 1 || k[worker.KindCoalesced] != 19 {
		t.Fatalf("events = %v", k)
	}
	if n := sys.gt.CallCount(graphtest.OpReprocess); n != 1 {
		t.Fatalf("%d Graph calls for one id published 20 times", n)
	}
	if n := len(sys.streamMessages("REPROCESS_DLQ")); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}

func TestMetricsAgreeWithEvents(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	w := sys.startWorker(nil)
	all := ids(30, 8)
	sys.gt.SetAnswer(all[0], 404)
	sys.gt.SetAnswer(all[1], 400)
	sys.publish(payloads(all)...)
	sys.publish([]byte("nope"), []byte(all[2]+"x"))
	evs := sys.events(32)
	k := kinds(evs)
	_, body := w.get("/metrics")
	for kind, n := range map[string]int{"accepted": k["accepted"], "failed": k["failed"], "rejected": k["rejected"], "coalesced": k["coalesced"]} {
		want := fmt.Sprintf(`reprocessor_messages_completed_total{outcome=%q} %d`, kind, n)
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
		want = fmt.Sprintf(`reprocessor_events_published_total{kind=%q} %d`, kind, n)
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, want := range []string{
		`reprocessor_dead_lettered_total{reason="not_found"} 1`,
		`reprocessor_dead_lettered_total{reason="bad_request"} 1`,
		`reprocessor_dead_lettered_total{reason="invalid_id"} 2`,
		`reprocessor_graph_requests_total{code="202",operation="reprocess"} 28`,
		`reprocessor_graph_requests_total{code="404",operation="reprocess"} 1`,
		`reprocessor_messages_received_total{delivery="first"} 32`,
		`reprocessor_in_flight 0`,
		`reprocessor_build_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Logf("events %v\n%s", k, body)
	}
}

// TestHealthBeforeNATS: the HTTP listener answers while NATS cannot be reached yet, alive
// but not ready, and the worker gets going once NATS appears.
func TestHealthBeforeNATS(t *testing.T) {
	t.Parallel()
	gt, err := graphtest.Start(graphtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gt.Close)
	natsPort, httpPort := freePort(t), freePort(t)
	e := testEnv(fmt.Sprintf("nats://127.0.0.1:%d", natsPort), gt)
	e["REPROCESSOR_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", httpPort)
	cfg, _, err := config.Load(nil, e.get)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := logging.New(testWriter{t}, "debug", "text", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.Run(ctx, cfg, log, e.get, service.Options{GraphHTTP: gt.Client()}) }()
	defer func() { cancel(); <-done }()

	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	waitUntil(t, "/healthz", 10*time.Second, func() bool {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if code, body := httpGet(t, base+"/readyz"); code != 503 || !strings.Contains(body, "nats:") {
		t.Fatalf("/readyz without NATS = %d %q", code, body)
	}
	ns, err := queue.StartEmbedded(queue.EmbeddedConfig{Port: natsPort, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	waitUntil(t, "readiness once NATS is up", 30*time.Second, func() bool {
		code, _ := httpGet(t, base+"/readyz")
		return code == 200
	})
}

// TestRetryAfterBeyondTheDeliveryIsNotAFailure: a 429 whose Retry-After outlasts what one
// delivery may wait (REPROCESSOR_DELIVERY_BUDGET) hands the request back for when it ends,
// and that delivery does not count against REPROCESSOR_MAX_DELIVER: with a single delivery
// allowed, the request is accepted after the wait instead of failing retries_exhausted.
func TestRetryAfterBeyondTheDeliveryIsNotAFailure(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	w := sys.startWorker(env{
		"REPROCESSOR_MAX_DELIVER":     "1",
		"REPROCESSOR_DELIVERY_BUDGET": "1s",
	})
	sys.gt.Throttle429(1, "3")
	id := ids(1, 915)
	start := time.Now()
	sys.publish(payloads(id)...)
	evs := sys.events(1)
	if k := kinds(evs); k[worker.KindAccepted] != 1 {
		t.Fatalf("events = %v, want one accepted", k)
	}
	if waited := time.Since(start); waited < 3*time.Second {
		t.Errorf("accepted %s after publishing, within the Retry-After of 3 s", waited)
	}
	if n := sys.gt.CallCount(graphtest.OpReprocess); n != 2 {
		t.Errorf("%d reprocess calls, want 2 (the 429, then the 202)", n)
	}
	if n := len(sys.streamMessages("REPROCESS_DLQ")); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	_, body := w.get("/metrics")
	if !strings.Contains(body, `reprocessor_messages_received_total{delivery="redelivery"} 1`) {
		t.Errorf("the request was not handed back and redelivered once:\n%s", body)
	}
}

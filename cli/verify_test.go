package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/worker"
)

// Tests of state tracking (DESIGN section 5): each one reprocesses ids whose simulated
// lifecycle is known and checks the exact state_changed history of each.

// tracking turns state tracking on with short delays.
var tracking = env{
	"REPROCESSOR_VERIFY":          "true",
	"REPROCESSOR_VERIFY_DELAY":    "100ms",
	"REPROCESSOR_VERIFY_DEADLINE": "4s",
}

// step is one expected state_changed event.
type step struct {
	from, to string
	settled  bool
}

// history returns the state_changed events of each assignment, in publication order.
func history(evs []worker.Event) map[string][]worker.Event {
	h := map[string][]worker.Event{}
	for _, e := range evs {
		if e.Kind() == worker.KindStateChanged {
			h[e.Subject] = append(h[e.Subject], e)
		}
	}
	return h
}

func checkHistory(t *testing.T, name string, got []worker.Event, want []step) {
	t.Helper()
	var steps []step
	for _, e := range got {
		if e.Data.Settled == nil {
			t.Errorf("%s: state_changed without settled: %+v", name, e.Data)
			return
		}
		steps = append(steps, step{e.Data.PreviousState, e.Data.State, *e.Data.Settled})
		if last := len(steps) == len(got); e.Data.Final != last {
			t.Errorf("%s: event %s final=%v", name, e.ID, e.Data.Final)
		}
	}
	if !slices.Equal(steps, want) {
		t.Errorf("%s: history %v, want %v", name, steps, want)
	}
	ids := map[string]bool{}
	for _, e := range got {
		if ids[e.ID] {
			t.Errorf("%s: event id %s twice", name, e.ID)
		}
		ids[e.ID] = true
	}
}

// countSettledEnds waits until every id has a state_changed event whose settled is set
// and tracking has ended (a settled state, or the deadline's settled=false).
func (s *system) waitTracked(ids []string, timeout time.Duration) map[string][]worker.Event {
	s.t.Helper()
	var h map[string][]worker.Event
	s.waitFor("tracking to end", timeout, func() bool {
		h = history(s.readEvents())
		for _, id := range ids {
			evs := h[id]
			if len(evs) == 0 {
				return false
			}
			last := evs[len(evs)-1]
			if !last.Data.Final {
				return false
			}
		}
		return true
	})
	return h
}

func TestStateTrackingLifecycles(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	all := ids(7, 20)
	lifecycles := []struct {
		name string
		l    graphtest.Lifecycle
		want []step
	}{
		{"delivered", graphtest.Lifecycle{Delivering: 1500 * time.Millisecond},
			[]step{{"", "delivering", false}, {"delivering", "delivered", true}}},
		{"delivery failed", graphtest.Lifecycle{Delivering: 1500 * time.Millisecond, Final: "deliveryFailed"},
			[]step{{"", "delivering", false}, {"delivering", "deliveryFailed", true}}},
		{"partially delivered", graphtest.Lifecycle{Delivering: 1500 * time.Millisecond, Final: "partiallyDelivered"},
			[]step{{"", "delivering", false}, {"delivering", "partiallyDelivered", true}}},
		{"deleted", graphtest.Lifecycle{Delivering: 1500 * time.Millisecond, Deleted: true},
			[]step{{"", "delivering", false}, {"delivering", "notFound", true}}},
		{"unknown state", graphtest.Lifecycle{Delivering: 1500 * time.Millisecond, Final: "quantumEntangled"},
			[]step{{"", "delivering", false}, {"delivering", "quantumEntangled", false}, {"quantumEntangled", "quantumEntangled", false}}},
		{"stuck until the deadline", graphtest.Lifecycle{Stuck: true},
			[]step{{"", "delivering", false}, {"delivering", "delivering", false}}},
		{"already settled", graphtest.Lifecycle{Delivering: 0},
			[]step{{"", "delivered", true}}},
	}
	for i, lc := range lifecycles {
		sys.gt.SetLifecycle(all[i], lc.l)
	}
	w := sys.startWorker(tracking)
	sys.publish(payloads(all)...)
	h := sys.waitTracked(all, 30*time.Second)
	for i, lc := range lifecycles {
		checkHistory(t, lc.name, h[all[i]], lc.want)
	}
	for _, e := range h[all[0]] {
		if e.Data.CorrelationID != "" || e.Data.RequestedAt.IsZero() || (e.Source != "urn:reprocessor:entitlement.reprocess" || e.Instance != "test") || e.Data.HTTPStatus != 200 || e.Data.Status == "" {
			t.Fatalf("malformed state_changed event %+v", e)
		}
	}
	if final := h[all[5]][1]; !strings.HasSuffix(final.ID, "-final") || !strings.Contains(final.Data.Status, "not settled within 4s") {
		t.Errorf("the deadline's event: %s %q", final.ID, final.Data.Status)
	}
	_, body := w.get("/metrics")
	for _, want := range []string{
		`reprocessor_assignment_state_changes_total{state="delivering"} 6`,
		`reprocessor_assignment_state_changes_total{state="delivered"} 2`,
		`reprocessor_assignment_state_changes_total{state="deliveryFailed"} 1`,
		`reprocessor_assignment_state_changes_total{state="notFound"} 1`,
		`reprocessor_assignment_state_changes_total{state="other"} 1`,
		`reprocessor_events_published_total{kind="state_changed"} 14`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if n := sys.gt.CallCount(graphtest.OpGetAssignment); n < 14 {
		t.Errorf("only %d assignment reads", n)
	}
	if !strings.Contains(body, `reprocessor_graph_requests_total{code="200",operation="get_assignment"}`) {
		t.Error("tracking calls are not counted under operation get_assignment")
	}
	sys.waitFor("the verify queue to empty", 10*time.Second, func() bool { return sys.streamCount("REPROCESS_VERIFY") == 0 })
}

func TestStateTrackingPrecheckAndBeta(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.gt.SetDefaultLifecycle(&graphtest.Lifecycle{Delivering: 1500 * time.Millisecond, Final: "partiallyDelivered"})
	overrides := env{"REPROCESSOR_PRECHECK": "true", "REPROCESSOR_GRAPH_API_VERSION": "beta"}
	for k, v := range tracking {
		overrides[k] = v
	}
	sys.startWorker(overrides)
	all := ids(3, 21)
	sys.publish(payloads(all)...)
	h := sys.waitTracked(all, 30*time.Second)
	for _, id := range all {
		checkHistory(t, id, h[id], []step{{"delivered", "delivering", false}, {"delivering", "partiallyDelivered", true}})
	}
	for _, c := range sys.gt.Calls() {
		if c.APIVersion != "" && c.APIVersion != "beta" {
			t.Fatalf("a %s call on %s", c.Operation, c.APIVersion)
		}
	}
}

func TestStateTrackingHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.gt.SetDefaultLifecycle(&graphtest.Lifecycle{Delivering: 0})
	// The first check waits long enough for the 429 below to be in place before it reads.
	sys.startWorker(env{"REPROCESSOR_VERIFY": "true", "REPROCESSOR_VERIFY_DELAY": "2s", "REPROCESSOR_VERIFY_DEADLINE": "8s"})
	id := ids(1, 22)[0]
	sys.publish([]byte(id))
	sys.events(1) // accepted
	sys.gt.Throttle429(1, "1.2")
	h := sys.waitTracked([]string{id}, 30*time.Second)
	checkHistory(t, "throttled", h[id], []step{{"", "delivered", true}})
	var throttledAt time.Time
	reads := 0
	for _, c := range sys.gt.Calls() {
		if c.Operation != graphtest.OpGetAssignment {
			continue
		}
		reads++
		if c.Status == http.StatusTooManyRequests {
			throttledAt = c.Time
			continue
		}
		if throttledAt.IsZero() || c.Time.Sub(throttledAt) < 1200*time.Millisecond {
			t.Fatalf("a read %s after a 429 with Retry-After: 1.2 (throttled at %v)", c.Time.Sub(throttledAt), throttledAt)
		}
	}
	if reads != 2 {
		t.Fatalf("%d reads, want 2", reads)
	}
}

// TestStateTrackingSurvivesKill kills a worker while it tracks assignments; a new worker
// resumes the checks and every history ends exactly as it would have, without duplicates.
func TestStateTrackingSurvivesKill(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.gt.SetDefaultLifecycle(&graphtest.Lifecycle{Delivering: 3 * time.Second})
	overrides := env{"REPROCESSOR_ACK_WAIT": "2s", "REPROCESSOR_VERIFY_DEADLINE": "1m"}
	for k, v := range tracking {
		if k != "REPROCESSOR_VERIFY_DEADLINE" {
			overrides[k] = v
		}
	}
	all := ids(50, 23)
	sys.ensureStreams()
	sys.publish(payloads(all)...)
	first := sys.startChild(t, "first worker", overrides)
	first.waitRunning()
	sys.waitFor("tracking under way", 20*time.Second, func() bool {
		return len(history(sys.readEvents())) == len(all)
	})
	first.kill()
	second := sys.startChild(t, "second worker", overrides)
	second.waitRunning()
	h := sys.waitTracked(all, 60*time.Second)
	for _, id := range all {
		checkHistory(t, id, h[id], []step{{"", "delivering", false}, {"delivering", "delivered", true}})
	}
	if t.Failed() {
		return
	}
	if code := second.terminate(30 * time.Second); code != 0 {
		t.Fatalf("second worker exited %d", code)
	}
	if n := sys.streamCount("REPROCESS_VERIFY"); n != 0 {
		t.Fatalf("%d checks left", n)
	}
}

// TestEnqueueWaitSettled: enqueue --wait-settled follows the worker's real state tracking
// and waits for each accepted id's final state_changed event, not the first one.
func TestEnqueueWaitSettled(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	all := ids(20, 24)
	sys.gt.SetDefaultLifecycle(&graphtest.Lifecycle{Delivering: 1500 * time.Millisecond})
	sys.gt.SetLifecycle(all[0], graphtest.Lifecycle{Delivering: 1500 * time.Millisecond, Final: "deliveryFailed"})
	sys.startWorker(tracking)
	dir := t.TempDir()
	file := dir + "/ids.txt"
	if err := os.WriteFile(file, []byte(strings.Join(all, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	report := dir + "/report.json"
	code, out, errOut := sys.enqueue("--file", file, "--run-id", "settle-run", "--wait-settled", "--timeout", "1m", "--report", report)
	if code != exitNotAllAccepted {
		t.Fatalf("exit %d, want %d (one assignment ends deliveryFailed)\n%s\n%s", code, exitNotAllAccepted, out, errOut)
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		AssignmentID string `json:"assignmentId"`
		Outcome      string `json:"outcome"`
		State        string `json:"state"`
		Settled      *bool  `json:"settled"`
	}
	if err := json.Unmarshal(raw, &rows); err != nil {
		t.Fatalf("report: %v\n%s", err, raw)
	}
	if len(rows) != len(all) {
		t.Fatalf("%d report rows, want %d", len(rows), len(all))
	}
	for _, r := range rows {
		want := "delivered"
		if r.AssignmentID == all[0] {
			want = "deliveryFailed"
		}
		if r.Outcome != "accepted" || r.State != want || r.Settled == nil || !*r.Settled {
			t.Errorf("row %+v, want accepted, settled in %s", r, want)
		}
	}
}

// TestForgedStateCheck: a state check that is not the worker's own (published by anyone on
// the verify subject, with an id that is not a GUID) is dropped: it reaches no Graph call
// and produces no event.
func TestForgedStateCheck(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.startWorker(tracking)
	forged := []string{
		`{"assignmentId":"../users","requestStream":"REPROCESS_REQUESTS","requestSeq":1,"deadline":"2099-01-01T00:00:00Z"}`,
		`{"assignmentId":"0f8fad5b-d9cb-469f-a165-70867728950e","requestStream":"","requestSeq":1}`,
		`not json`,
	}
	for _, f := range forged {
		if _, err := sys.js.Publish(context.Background(), "entitlement.reprocess.verify", []byte(f)); err != nil {
			t.Fatal(err)
		}
	}
	sys.waitFor("the forged checks dropped", 30*time.Second, func() bool { return sys.streamCount("REPROCESS_VERIFY") == 0 })
	for _, c := range sys.gt.Calls() {
		if strings.Contains(c.Path, "identityGovernance") {
			t.Errorf("a forged check reached Graph: %s %s", c.Method, c.Path)
		}
	}
	if evs := sys.readEvents(); len(evs) != 0 {
		t.Errorf("forged checks produced events: %+v", evs)
	}
}

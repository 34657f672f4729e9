package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/worker"
)

// drift runs "reprocessor drift args..." in this process against sys.
func (s *system) drift(ctx context.Context, overrides env, args ...string) (int, string, string) {
	s.t.Helper()
	e := env{}
	for k, v := range s.env {
		e[k] = v
	}
	e["REPROCESSOR_LOG_LEVEL"] = "warn"
	for k, v := range overrides {
		e[k] = v
	}
	var out, errOut syncBuffer
	code := driftMain(ctx, args, e.get, enqueueIO{
		stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, graphHTTP: s.gt.Client(), progress: 50 * time.Millisecond,
	})
	return code, out.String(), errOut.String()
}

func readJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
}

// Find, heal, prove: drift --enqueue --wait-settled reprocesses what drifted, resource
// verification says restored, and a second scan finds nothing.
func TestDriftEnqueueHealsAndRescanFindsNone(t *testing.T) {
	sys := newSystem(t, graphtest.Options{StrictStore: true, PageSize: 7})
	seeded := sys.gt.Seed(graphtest.Shape{Packages: 4, Groups: 5, Apps: 2, SharePoint: true, Assignments: 40, Drift: 0.25, Seed: 11})
	if len(seeded.Drifted) == 0 {
		t.Fatal("the seed drifted nothing")
	}
	sys.startWorker(env{"REPROCESSOR_VERIFY": "true", "REPROCESSOR_VERIFY_RESOURCES": "true", "REPROCESSOR_VERIFY_DELAY": "50ms"})
	dir := t.TempDir()
	report, outcomes := filepath.Join(dir, "drift.json"), filepath.Join(dir, "outcomes.json")
	code, out, errOut := sys.drift(context.Background(), nil, "--enqueue", "--wait-settled", "--timeout", "1m", "--report", report, "--enqueue-report", outcomes)
	if code != exitDrift {
		t.Fatalf("exit %d, want %d (drift found)\n%s\n%s", code, exitDrift, out, errOut)
	}
	var rows []struct {
		AssignmentID, AccessPackageID, TargetObjectID, PrincipalName string
		Missing                                                      []map[string]string
	}
	readJSONFile(t, report, &rows)
	if len(rows) != len(seeded.Drifted) {
		t.Errorf("report has %d rows, the seed drifted %d", len(rows), len(seeded.Drifted))
	}
	for _, r := range rows {
		want, ok := seeded.Drifted[r.AssignmentID]
		if !ok || len(r.Missing) != 1 || r.PrincipalName == "" || r.TargetObjectID == "" {
			t.Errorf("row %+v: want one of the seeded drifts (%q) with its target", r, want)
		}
	}
	var results []struct {
		AssignmentID string
		Outcome      string
		State        string
		Restored     *bool
	}
	readJSONFile(t, outcomes, &results)
	for _, r := range results {
		if r.Outcome != worker.KindAccepted || r.State != worker.StateDelivered || r.Restored == nil || !*r.Restored {
			t.Errorf("enqueued %+v: want accepted, delivered, restored", r)
		}
	}
	if len(results) != len(seeded.Drifted) {
		t.Errorf("%d outcomes for %d drifted", len(results), len(seeded.Drifted))
	}
	// The request's reason names what was missing.
	for _, e := range sys.readEvents() {
		if e.Kind() == worker.KindAccepted && !strings.HasPrefix(e.Data.Reason, "drift: missing ") {
			t.Errorf("accepted event reason %q: want what was missing", e.Data.Reason)
		}
	}
	// Every event of the heal, state_changed with restored and missing included, matches
	// the schema its dataschema names.
	var raw [][]byte
	for _, m := range sys.streamMessages("REPROCESS_EVENTS") {
		raw = append(raw, m.Data())
	}
	if kinds := checkEvents(t, raw, "urn:reprocessor:entitlement.reprocess"); kinds[worker.KindStateChanged] == 0 {
		t.Errorf("events %v: want state_changed among them", kinds)
	}
	code, out, errOut = sys.drift(context.Background(), nil)
	if code != exitOK || !strings.Contains(out, " 0 drifted") {
		t.Errorf("re-scan: exit %d, want 0 and nothing drifted\n%s\n%s", code, out, errOut)
	}
}

// Reprocess that cannot bring a group back: the final state_changed says restored false
// and names the group.
func TestResourceVerificationRestoredFalse(t *testing.T) {
	sys := newSystem(t, graphtest.Options{StrictStore: true})
	seeded := sys.gt.Seed(graphtest.Shape{Packages: 1, Groups: 2, Assignments: 5, Drift: 1, Seed: 5})
	for _, g := range seeded.Groups {
		sys.gt.SetRestorable(g, false)
	}
	sys.startWorker(env{"REPROCESSOR_VERIFY": "true", "REPROCESSOR_VERIFY_RESOURCES": "true",
		"REPROCESSOR_VERIFY_DELAY": "50ms", "REPROCESSOR_VERIFY_DEADLINE": "1500ms"})
	var id, missing string
	for a, m := range seeded.Drifted {
		id, missing = a, strings.TrimPrefix(m, "member of group ")
		break
	}
	code, out, errOut := sys.enqueue("--wait-settled", "--timeout", "1m", id)
	if code != exitNotAllAccepted && code != exitOK {
		t.Fatalf("enqueue exit %d\n%s\n%s", code, out, errOut)
	}
	var final *worker.Event
	sys.waitFor("a final state_changed", 20*time.Second, func() bool {
		for _, e := range sys.readEvents() {
			if e.Kind() == worker.KindStateChanged && e.Data.Final && e.Subject == id {
				final = &e
				return true
			}
		}
		return false
	})
	if final.Data.Restored == nil || *final.Data.Restored || len(final.Data.Missing) != 1 || !strings.Contains(final.Data.Missing[0], missing) {
		t.Errorf("final event %+v: want restored false, missing the group %s", final.Data, missing)
	}
	if final.Data.State != worker.StateDelivered || final.Data.Settled == nil || !*final.Data.Settled {
		t.Errorf("final event %+v: want delivered and settled", final.Data)
	}
}

// The scheduled scanner enqueues each drifted assignment once across scans, and serves
// its metrics.
func TestDriftEveryEnqueuesOnce(t *testing.T) {
	sys := newSystem(t, graphtest.Options{StrictStore: true})
	seeded := sys.gt.Seed(graphtest.Shape{Packages: 2, Groups: 3, Assignments: 20, Drift: 0.3, Seed: 9})
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	scanner := func() (context.CancelFunc, chan int) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() {
			code, _, _ := sys.drift(ctx, env{"REPROCESSOR_HTTP_ADDR": addr}, "--every", "1s", "--enqueue")
			done <- code
		}()
		return cancel, done
	}
	cancel, done := scanner()
	scans := func() int {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return 0
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body := string(b)
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, `reprocessor_drift_scans_total{result="ok"} `) {
				var n int
				fmt.Sscan(strings.Fields(line)[1], &n)
				return n
			}
		}
		return 0
	}
	sys.waitFor("three scans", 30*time.Second, func() bool { return scans() >= 3 })
	if status, body := httpGet(t, "http://"+addr+"/readyz"); status != 200 {
		t.Errorf("readyz %d %s", status, body)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("scanner exit %d", code)
	}
	// A restarted scanner remembers what it enqueued: two more scans enqueue nothing.
	cancel, done = scanner()
	sys.waitFor("two scans after the restart", 30*time.Second, func() bool { return scans() >= 2 })
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("restarted scanner exit %d", code)
	}
	// No worker ran: the requests wait in the work queue; read them without acking.
	cons, err := sys.js.Consumer(context.Background(), "REPROCESS_REQUESTS", "reprocessor")
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.FetchNoWait(1000)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	seen := map[string]int{}
	for m := range batch.Messages() {
		msgs = append(msgs, m)
		var req struct{ ID string }
		_ = json.Unmarshal(m.Data(), &req)
		seen[req.ID]++
	}
	if len(msgs) != len(seeded.Drifted) {
		t.Errorf("%d requests after 3+ scans, want each of the %d drifted once: %v", len(msgs), len(seeded.Drifted), seen)
	}
	for id := range seeded.Drifted {
		if seen[id] != 1 {
			t.Errorf("%s enqueued %d times", id, seen[id])
		}
	}
}

func TestDriftExitCodes(t *testing.T) {
	sys := newSystem(t, graphtest.Options{StrictStore: true})
	sys.gt.Seed(graphtest.Shape{Packages: 1, Groups: 1, Assignments: 3, Seed: 1})
	for _, args := range [][]string{{"--access-package", "../../users"}, {"--report", "x.txt"}, {"--wait"}, {"--every", "10ms"}, {"extra"}} {
		if code, _, errOut := sys.drift(context.Background(), nil, args...); code != exitUsage {
			t.Errorf("drift %v: exit %d, want %d\n%s", args, code, exitUsage, errOut)
		}
	}
	if code, out, _ := sys.drift(context.Background(), nil); code != exitOK {
		t.Errorf("no drift: exit %d\n%s", code, out)
	}
	sys.gt.Forbid(-1)
	if code, _, errOut := sys.drift(context.Background(), nil); code != exitFailed || !strings.Contains(errOut, "403") {
		t.Errorf("forbidden: exit %d, want %d with the status\n%s", code, exitFailed, errOut)
	}
}

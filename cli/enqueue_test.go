package cli

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/bulk"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/worker"
)

// enqueue runs "reprocessor enqueue args..." in this process against sys.
func (s *system) enqueue(args ...string) (int, string, string) {
	s.t.Helper()
	e := env{}
	for k, v := range s.env {
		e[k] = v
	}
	e["REPROCESSOR_LOG_LEVEL"] = "warn"
	var out, errOut syncBuffer
	code := enqueueMain(context.Background(), args, e.get, enqueueIO{
		stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, graphHTTP: s.gt.Client(), progress: 50 * time.Millisecond,
	})
	return code, out.String(), errOut.String()
}

// shortDedupe makes the requests stream forget Nats-Msg-Ids almost at once, so that only
// enqueue's own run record can keep an id from being published twice.
func (s *system) shortDedupe() {
	s.t.Helper()
	ctx := context.Background()
	st, err := s.js.Stream(ctx, "REPROCESS_REQUESTS")
	if err != nil {
		s.t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.Duplicates = 100 * time.Millisecond
	if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
		s.t.Fatal(err)
	}
}

// waitDedupeForgotten waits until the requests stream has forgotten the Nats-Msg-Ids
// published so far: it publishes a probe and then the same probe again until the server no
// longer calls it a duplicate, which means the window has passed since the probe, and so
// since everything before it. The probes are deleted.
func (s *system) waitDedupeForgotten() {
	s.t.Helper()
	ctx := context.Background()
	probe := func() *jetstream.PubAck {
		ack, err := s.js.Publish(ctx, "entitlement.reprocess.requests", []byte("dedupe probe"), jetstream.WithMsgID("dedupe-probe"))
		if err != nil {
			s.t.Fatal(err)
		}
		return ack
	}
	first := probe()
	var second *jetstream.PubAck
	s.waitFor("the dedupe window to pass", 30*time.Second, func() bool {
		second = probe()
		return !second.Duplicate
	})
	st, err := s.js.Stream(ctx, "REPROCESS_REQUESTS")
	if err != nil {
		s.t.Fatal(err)
	}
	for _, seq := range []uint64{first.Sequence, second.Sequence} {
		if err := st.DeleteMsg(ctx, seq); err != nil {
			s.t.Fatal(err)
		}
	}
}

// requestIDs counts the ids of the messages in the requests stream.
func (s *system) requestIDs() map[string]int {
	s.t.Helper()
	ctx := context.Background()
	st, err := s.js.Stream(ctx, "REPROCESS_REQUESTS")
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	got := map[string]int{}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			s.t.Fatal(err)
		}
		r, err := worker.Decode(m.Data)
		if err != nil {
			s.t.Fatalf("request %q: %v", m.Data, err)
		}
		got[r.ID]++
	}
	return got
}

// idFile writes a file of 2,000 lines: ids, duplicates, comments, blank and invalid lines.
// It returns the path, the distinct ids in order and the invalid line numbers.
func idFile(t *testing.T, salt int) (string, []string, []int) {
	var lines, distinct []string
	var invalid []int
	all := ids(1500, salt)
	next := 0
	for n := 1; n <= 2000; n++ {
		switch {
		case n%97 == 0:
			lines = append(lines, fmt.Sprintf("not-an-id-%d", n))
			invalid = append(invalid, n)
		case n%50 == 0:
			lines = append(lines, "# a comment")
		case n%41 == 0:
			lines = append(lines, "   ")
		case n%7 == 0 && next > 0:
			lines = append(lines, strings.ToUpper(all[next/2])) // a duplicate, in upper case
		case next < len(all):
			lines = append(lines, "  "+all[next]+" ")
			distinct = append(distinct, all[next])
			next++
		default:
			lines = append(lines, all[0])
		}
	}
	path := filepath.Join(t.TempDir(), "ids.txt")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, distinct, invalid
}

func TestEnqueueFileWaitReport(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	path, want, invalid := idFile(t, 41)
	sys.gt.SetAnswer(want[3], 404)
	sys.gt.SetAnswer(want[10], 400)
	sys.startWorker(env{"REPROCESSOR_CONCURRENCY": "32"})
	report := filepath.Join(t.TempDir(), "report.csv")

	code, out, errOut := sys.enqueue("--file", path, "--run-id", "file-run", "--wait", "--timeout", "2m", "--report", report)
	if code != exitNotAllAccepted {
		t.Fatalf("exit %d, want %d (invalid lines and failures)\n%s\n%s", code, exitNotAllAccepted, out, errOut)
	}
	for _, n := range invalid {
		if !strings.Contains(errOut, fmt.Sprintf("line %d: ", n)) {
			t.Fatalf("invalid line %d not reported:\n%s", n, errOut)
		}
	}
	if !strings.Contains(out, fmt.Sprintf("%d distinct ids", len(want))) || !strings.Contains(out, fmt.Sprintf("%d invalid", len(invalid))) ||
		!strings.Contains(out, "outcomes: accepted 1498, failed 2") {
		t.Fatalf("summary:\n%s", out)
	}

	calls := map[string][]graphtest.Call{}
	for _, c := range sys.gt.Calls() {
		if c.Operation == graphtest.OpReprocess {
			calls[c.AssignmentID] = append(calls[c.AssignmentID], c)
		}
	}
	if len(calls) != len(want) {
		t.Fatalf("%d ids reached Graph, want %d", len(calls), len(want))
	}
	rows := readCSVReport(t, report)
	if len(rows) != len(want) {
		t.Fatalf("%d report rows, want %d", len(rows), len(want))
	}
	for _, r := range rows {
		cs := calls[r["assignmentId"]]
		if len(cs) != 1 {
			t.Fatalf("%s: %d Graph calls, want 1", r["assignmentId"], len(cs))
		}
		c := cs[0]
		wantOutcome := "accepted"
		if c.Status != 202 {
			wantOutcome = "failed"
		}
		if r["outcome"] != wantOutcome || r["httpStatus"] != strconv.Itoa(c.Status) || r["graphRequestId"] != c.RequestID ||
			r["inputLine"] == "" || r["requestedAt"] == "" || r["completedAt"] == "" {
			t.Fatalf("report row %v does not match the Graph call %+v", r, c)
		}
		if c.Status == 404 && r["errorCode"] != worker.CodeNotFound || c.Status == 400 && r["errorCode"] != worker.CodeBadRequest {
			t.Fatalf("report row %v: error code", r)
		}
	}

	// The same run again publishes nothing new, and still reports every id.
	before := sys.gt.CallCount(graphtest.OpReprocess)
	code, out, _ = sys.enqueue("--file", path, "--run-id", "file-run", "--wait", "--timeout", "1m", "--report", report)
	if code != exitNotAllAccepted || !strings.Contains(out, fmt.Sprintf("%d already published by this run", len(want))) || !strings.Contains(out, "published 0 ") {
		t.Fatalf("re-run: exit %d\n%s", code, out)
	}
	if after := sys.gt.CallCount(graphtest.OpReprocess); after != before {
		t.Fatalf("re-run made %d more Graph calls", after-before)
	}
	if rows := readCSVReport(t, report); len(rows) != len(want) || rows[0]["outcome"] != "accepted" {
		t.Fatalf("re-run report: %d rows, first %v", len(rows), rows[0])
	}
}

func readCSVReport(t *testing.T, path string) []map[string]string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	recs, err := csv.NewReader(fh).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]string
	for _, rec := range recs[1:] {
		r := map[string]string{}
		for i, h := range recs[0] {
			r[h] = rec[i]
		}
		rows = append(rows, r)
	}
	return rows
}

func TestEnqueueResumeAfterDedupeWindow(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.ensureStreams()
	sys.shortDedupe()
	all := ids(300, 42)
	code, out, errOut := sys.enqueue(append([]string{"--run-id", "resume"}, all[:100]...)...)
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	sys.waitDedupeForgotten()
	path := filepath.Join(t.TempDir(), "ids.csv")
	csvText := "name,assignment\n"
	for i, id := range all {
		csvText += fmt.Sprintf("n%d,%s\n", i, id)
	}
	if err := os.WriteFile(path, []byte(csvText), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = sys.enqueue("--file", path, "--column", "assignment", "--run-id", "resume")
	if code != exitOK || !strings.Contains(out, "100 already published by this run") || !strings.Contains(out, "published 200 ") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	got := sys.requestIDs()
	if len(got) != 300 {
		t.Fatalf("%d distinct ids in the requests stream, want 300", len(got))
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s published %d times", id, n)
		}
	}
	// A dry run publishes nothing.
	if code, out, _ := sys.enqueue("--dry-run", "--file", path, "--column", "assignment"); code != exitOK || !strings.Contains(out, "dry run") {
		t.Fatalf("dry run: exit %d\n%s", code, out)
	}
	if n := len(sys.requestIDs()); n != 300 {
		t.Fatalf("after the dry run: %d messages", n)
	}
}

func TestEnqueueFromGraph(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{StrictStore: true, PageSize: 100})
	sys.ensureStreams()
	pkg := "11111111-2222-4333-8444-555555555555"
	want := ids(300, 43)
	for _, id := range want {
		sys.gt.AddAssignments(graphtest.Assignment{ID: id, AccessPackageID: pkg})
	}
	for _, id := range ids(20, 44) {
		sys.gt.AddAssignments(graphtest.Assignment{ID: id, AccessPackageID: pkg, State: "expired", Status: "Expired"})
	}
	for _, id := range ids(20, 45) {
		sys.gt.AddAssignments(graphtest.Assignment{ID: id})
	}
	// Two calls pass, the third is throttled with a Retry-After.
	sys.gt.SetRateLimit(2, 2)
	code, out, errOut := sys.enqueue("--from-graph", "--state", "delivered", "--access-package", pkg, "--run-id", "graph")
	if code != exitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	var statuses []int
	for _, c := range sys.gt.Calls() {
		if c.Operation == graphtest.OpListAssignments {
			statuses = append(statuses, c.Status)
		}
	}
	throttled := 0
	for _, s := range statuses {
		if s == 429 {
			throttled++
		}
	}
	if throttled == 0 || len(statuses)-throttled != 3 {
		t.Fatalf("list calls answered %v, want three pages and a 429", statuses)
	}
	got := sys.requestIDs()
	if len(got) != 300 {
		t.Fatalf("%d ids published, want 300", len(got))
	}
	for _, id := range want {
		if got[id] != 1 {
			t.Fatalf("%s published %d times", id, got[id])
		}
	}
}

func TestDLQReplayAfterFix(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	all := ids(10, 46)
	for _, id := range all[:3] {
		sys.gt.SetAnswer(id, 403)
	}
	sys.startWorker(nil)
	code, out, _ := sys.enqueue(append([]string{"--run-id", "dlq", "--wait", "--timeout", "1m"}, all...)...)
	if code != exitNotAllAccepted || !strings.Contains(out, "failed 3") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	sys.waitFor("3 dead letters", 30*time.Second, func() bool { return len(sys.streamMessages("REPROCESS_DLQ")) == 3 })

	var listOut, listErr syncBuffer
	if code := cmdDLQ(context.Background(), []string{"list", "--json", "--reason", "forbidden"}, sys.env.get, &listOut, &listErr); code != exitOK {
		t.Fatalf("dlq list: exit %d: %s", code, listErr.String())
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(listOut.String()), "\n") {
		var d struct {
			AssignmentID, Error string
			Attempts            int
		}
		if err := json.Unmarshal([]byte(line), &d); err != nil || d.Error != "forbidden" || d.Attempts < 1 {
			t.Fatalf("dlq list line %q: %v", line, err)
		}
		listed[d.AssignmentID] = true
	}
	if len(listed) != 3 || !listed[all[0]] || !listed[all[1]] || !listed[all[2]] {
		t.Fatalf("listed %v", listed)
	}
	var dry syncBuffer
	if code := cmdDLQ(context.Background(), []string{"replay", "--dry-run"}, sys.env.get, &dry, &listErr); code != exitOK || strings.Count(dry.String(), "forbidden") != 3 {
		t.Fatalf("dry run: exit %d\n%s", code, dry.String())
	}
	if n := len(sys.streamMessages("REPROCESS_DLQ")); n != 3 {
		t.Fatalf("the dry run changed the DLQ: %d left", n)
	}

	sys.gt.ClearFaults()
	var replayOut syncBuffer
	if code := cmdDLQ(context.Background(), []string{"replay", "--reason", "forbidden"}, sys.env.get, &replayOut, &listErr); code != exitOK {
		t.Fatalf("replay: exit %d: %s", code, listErr.String())
	}
	sys.waitFor("accepted after replay", 30*time.Second, func() bool {
		accepted := 0
		for _, e := range sys.readEvents() {
			if e.Kind() == worker.KindAccepted && listed[e.Subject] && e.Data.CorrelationID == "dlq" {
				accepted++
			}
		}
		return accepted == 3
	})
	if n := len(sys.streamMessages("REPROCESS_DLQ")); n != 0 {
		t.Fatalf("%d dead letters left after the replay", n)
	}
}

// TestEnqueueSIGINT interrupts an enqueue process in the middle and runs it again: every id
// ends in the requests stream exactly once, although the server's dedupe window is over.
func TestEnqueueSIGINT(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.ensureStreams()
	sys.shortDedupe()
	all := ids(4000, 47)
	path := filepath.Join(t.TempDir(), "ids.txt")
	if err := os.WriteFile(path, []byte(strings.Join(all, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "enqueue", "--file", path, "--run-id", "sigint", "--rate", "1000")
	cmd.Env = append(os.Environ(), childEnv+"=1", "NATS_URL="+sys.nats.ClientURL(), "REPROCESSOR_LOG_LEVEL=warn")
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := sys.js.Stream(context.Background(), "REPROCESS_REQUESTS")
	if err != nil {
		t.Fatal(err)
	}
	sys.waitFor("some ids published", 30*time.Second, func() bool {
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs >= 500
	})
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != exitInterrupted || !strings.Contains(out.String(), "interrupted after publishing") {
		t.Fatalf("child: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	first := len(sys.requestIDs())
	if first == 0 || first >= len(all) {
		t.Fatalf("%d ids published before the interrupt", first)
	}
	sys.waitDedupeForgotten()
	code, rerun, _ := sys.enqueue("--file", path, "--run-id", "sigint")
	if code != exitOK || !strings.Contains(rerun, fmt.Sprintf("%d already published by this run", first)) {
		t.Fatalf("re-run: exit %d\n%s", code, rerun)
	}
	got := sys.requestIDs()
	if len(got) != len(all) {
		t.Fatalf("%d distinct ids, want %d", len(got), len(all))
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s published %d times", id, n)
		}
	}
}

// writeIDFile writes n distinct ids, one a line.
func writeIDFile(tb testing.TB, n, salt int) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "ids.txt")
	fh, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		fmt.Fprintf(fh, "%08x-0000-4000-8000-%012x\n", salt, i)
	}
	if err := fh.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// BenchmarkEnqueue100k publishes 100,000 ids from a file into a loopback NATS server and
// reports ids/s. Run it with
//
//	go test -run '^$' -bench 'Enqueue' -benchtime 1x ./cli
func BenchmarkEnqueue100k(b *testing.B) {
	sys := newBenchSystem(b)
	sys.ensureStreams()
	const n = 100_000
	var total time.Duration
	for i := 0; i < b.N; i++ {
		path := writeIDFile(b, n, 5000+i)
		e := env{}
		for k, v := range sys.env {
			e[k] = v
		}
		e["REPROCESSOR_LOG_LEVEL"] = "error"
		var out, errOut syncBuffer
		start := time.Now()
		code := enqueueMain(context.Background(), []string{"--file", path, "--run-id", fmt.Sprintf("bench-%d", i)}, e.get,
			enqueueIO{stdout: &out, stderr: &errOut, progress: time.Hour})
		total += time.Since(start)
		if code != exitOK {
			b.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
		}
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "ids/s")
}

// BenchmarkEnqueueMemory1M runs enqueue as its own process on a file of 1,000,000 ids and
// reports its peak resident memory (VmHWM).
func BenchmarkEnqueueMemory1M(b *testing.B) {
	for i := 0; i < b.N; i++ {
		sys := newBenchSystem(b)
		sys.ensureStreams()
		path := writeIDFile(b, 1_000_000, 6000+i)
		cmd := exec.Command(os.Args[0], "enqueue", "--file", path, "--run-id", "mem")
		cmd.Env = append(os.Environ(), childEnv+"=1", "NATS_URL="+sys.nats.ClientURL(), "REPROCESSOR_LOG_LEVEL=error")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		// Sample VmHWM until the process ends: it holds the peak.
		hwm := 0
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for running := true; running; {
			select {
			case err := <-done:
				if err != nil {
					b.Fatalf("enqueue: %v\n%s", err, out.String())
				}
				running = false
			case <-time.After(50 * time.Millisecond):
				if kb, ok := readHWM(cmd.Process.Pid); ok {
					hwm = max(hwm, kb)
				}
			}
		}
		b.ReportMetric(float64(hwm)/1024, "peak-RSS-MiB")
	}
}

// readHWM reads a running process's VmHWM in KiB.
func readHWM(pid int) (int, bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.Atoi(f[1])
			return kb, err == nil
		}
	}
	return 0, false
}

// TestDLQStreams: dlq list and dlq replay --dry-run work through the dead-letter stream as
// they read it, holding none of it: a dead letter deleted after the first one was shown is
// never shown (a command that read everything first would still show it).
func TestDLQStreams(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	sys.ensureStreams()
	const n = 2000
	for i := range n {
		m := &nats.Msg{Subject: "entitlement.reprocess.dlq", Data: []byte(fmt.Sprintf("0f8fad5b-d9cb-469f-a165-%012d", i)),
			Header: nats.Header{"Reprocess-Error": {"not_found"}, "Reprocess-Attempts": {"1"}}}
		if _, err := sys.js.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
	}
	<-sys.js.PublishAsyncComplete()
	ctx := context.Background()
	dlq, err := sys.js.Stream(ctx, "REPROCESS_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	last := uint64(n)
	deleteLast := func() {
		if err := dlq.DeleteMsg(ctx, last); err != nil {
			t.Errorf("delete dead letter %d: %v", last, err)
		}
		last--
	}

	// list: the table is written out in blocks while the stream is read.
	out := &firstWrite{do: deleteLast}
	var errOut syncBuffer
	if code := cmdDLQ(ctx, []string{"list"}, sys.env.get, out, &errOut); code != exitOK {
		t.Fatalf("dlq list: exit %d: %s", code, errOut.String())
	}
	if rows := strings.Count(out.String(), "\n") - 1; rows != n-1 {
		t.Fatalf("dlq list showed %d dead letters, want %d: it read the stream before writing", rows, n-1)
	}

	// replay --dry-run: each dead letter is handed on as it is read.
	seen := 0
	_, err = bulk.ReplayDeadLetters(ctx, sys.js, "REPROCESS_DLQ", "entitlement.reprocess.requests", bulk.DLQFilter{}, true, func(r bulk.ReplayResult) {
		if seen == 0 {
			deleteLast()
		}
		seen++
	})
	if err != nil || seen != n-2 {
		t.Fatalf("dry run saw %d dead letters (err %v), want %d", seen, err, n-2)
	}
}

// firstWrite runs do on its first write, and keeps what is written.
type firstWrite struct {
	syncBuffer
	do   func()
	once sync.Once
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.once.Do(w.do)
	return w.syncBuffer.Write(p)
}

package metrics

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/reprocessor/reprocessor/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func setup(t testing.TB) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return New(reg, BuildInfo{Version: "1.2.3", Revision: "abc123", GoVersion: "go1.26.8"}), reg
}

// exerciseAll calls every method, with every label value, known or not.
func exerciseAll(m *Metrics) {
	m.MessageReceived(false)
	m.MessageReceived(true)
	m.QueueWait(1500 * time.Millisecond)
	m.QueueWait(-time.Second)
	for _, o := range append(worker.Outcomes, "bogus") {
		m.Completed(o, 20*time.Millisecond)
	}
	for _, c := range append(worker.ErrorCodes, "bogus") {
		m.DeadLettered(c)
	}
	for _, r := range append(worker.RetryReasons, "bogus") {
		m.Retry(r)
	}
	m.Throttled(true)
	m.ThrottleWait(2 * time.Second)
	m.ThrottleWait(-time.Second)
	m.RateLimitWait(3 * time.Millisecond)
	m.SetRateLimit(42.5)
	m.InFlight(1)
	for _, k := range append(worker.EventKinds, "bogus") {
		m.EventPublished(k)
	}
	m.EventPublishFailed()
	m.CircuitOpen(true)
	m.StateChanged("delivered")
	m.StateChanged("someNewState")
	m.LastSuccess(time.Unix(1700000000, 0))
	for _, op := range append(GraphOperations, "bogus") {
		m.ObserveGraph(op, "202", 40*time.Millisecond)
		m.ObserveGraph(op, "error", time.Second)
	}
	m.SetQueue(12, 3)
}

// TestNewExportsEverySeries checks that every metric of DESIGN section 9 is registered and
// that its known label values are exported before anything happens.
func TestNewExportsEverySeries(t *testing.T) {
	t.Parallel()
	_, reg := setup(t)

	want := map[string]int{
		"reprocessor_messages_received_total":        2,
		"reprocessor_messages_completed_total":       len(worker.Outcomes),
		"reprocessor_dead_lettered_total":            len(worker.ErrorCodes),
		"reprocessor_graph_request_duration_seconds": len(GraphOperations),
		"reprocessor_retries_total":                  len(worker.RetryReasons),
		"reprocessor_throttled":                      1,
		"reprocessor_throttle_wait_seconds_total":    1,
		"reprocessor_rate_limit_wait_seconds":        1,
		"reprocessor_rate_limit_current":             1,
		"reprocessor_concurrency":                    1,
		"reprocessor_in_flight":                      1,
		"reprocessor_queue_wait_seconds":             1,
		"reprocessor_processing_duration_seconds":    len(worker.Outcomes),
		"reprocessor_queue_pending_messages":         1,
		"reprocessor_queue_ack_pending_messages":     1,
		"reprocessor_events_published_total":         len(worker.EventKinds),
		"reprocessor_event_publish_failures_total":   1,
		"reprocessor_duplicate_outcomes_total":       len(worker.Outcomes),
		"reprocessor_conflicting_outcomes_total":     len(worker.Outcomes),
		"reprocessor_circuit_open":                   1,
		"reprocessor_last_success_timestamp_seconds": 1,
		"reprocessor_build_info":                     1,
		"reprocessor_assignment_state_changes_total": len(worker.KnownStates),
		// Labelled by HTTP status, so no series until the first Graph call.
		"reprocessor_graph_requests_total": 0,
	}
	for name, n := range want {
		got, err := testutil.GatherAndCount(reg, name)
		if err != nil {
			t.Fatalf("gather %s: %v", name, err)
		}
		if got != n {
			t.Errorf("%s: %d series, want %d", name, got, n)
		}
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if _, ok := want[f.GetName()]; !ok {
			t.Errorf("unexpected metric %s", f.GetName())
		}
	}

	const preset = `
# HELP reprocessor_messages_completed_total Request messages completed, by outcome: accepted, failed, rejected or coalesced.
# TYPE reprocessor_messages_completed_total counter
reprocessor_messages_completed_total{outcome="accepted"} 0
reprocessor_messages_completed_total{outcome="coalesced"} 0
reprocessor_messages_completed_total{outcome="failed"} 0
reprocessor_messages_completed_total{outcome="rejected"} 0
# HELP reprocessor_messages_received_total Request messages received, by delivery: first or redelivery.
# TYPE reprocessor_messages_received_total counter
reprocessor_messages_received_total{delivery="first"} 0
reprocessor_messages_received_total{delivery="redelivery"} 0
# HELP reprocessor_retries_total Graph calls retried, by reason.
# TYPE reprocessor_retries_total counter
reprocessor_retries_total{reason="network"} 0
reprocessor_retries_total{reason="server_error"} 0
reprocessor_retries_total{reason="throttled"} 0
reprocessor_retries_total{reason="timeout"} 0
reprocessor_retries_total{reason="unauthorized"} 0
# HELP reprocessor_events_published_total CloudEvents published and acknowledged by the stream, by kind.
# TYPE reprocessor_events_published_total counter
reprocessor_events_published_total{kind="accepted"} 0
reprocessor_events_published_total{kind="coalesced"} 0
reprocessor_events_published_total{kind="failed"} 0
reprocessor_events_published_total{kind="rejected"} 0
reprocessor_events_published_total{kind="state_changed"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(preset),
		"reprocessor_messages_completed_total", "reprocessor_messages_received_total",
		"reprocessor_retries_total", "reprocessor_events_published_total"); err != nil {
		t.Error(err)
	}
}

func TestBuildInfo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		build BuildInfo
		want  string
	}{
		{"given", BuildInfo{Version: "1.2.3", Revision: "abc123", GoVersion: "go1.26.8"},
			`reprocessor_build_info{goversion="go1.26.8",revision="abc123",version="1.2.3"} 1`},
		{"empty", BuildInfo{},
			`reprocessor_build_info{goversion="` + goVersion() + `",revision="unknown",version="unknown"} 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			New(reg, tc.build)
			want := `
# HELP reprocessor_build_info Always 1; labelled with the version, revision and Go version of the running binary.
# TYPE reprocessor_build_info gauge
` + tc.want + "\n"
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "reprocessor_build_info"); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestObserverRecords(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	exerciseAll(m)
	m.InFlight(2)
	m.InFlight(-1)
	m.Throttled(false)

	const want = `
# HELP reprocessor_circuit_open 1 while the circuit is open after repeated 403 answers and fetching is paused, else 0.
# TYPE reprocessor_circuit_open gauge
reprocessor_circuit_open 1
# HELP reprocessor_dead_lettered_total Request messages copied to the dead-letter stream, by reason (the error code).
# TYPE reprocessor_dead_lettered_total counter
reprocessor_dead_lettered_total{reason="api_error"} 1
reprocessor_dead_lettered_total{reason="bad_request"} 1
reprocessor_dead_lettered_total{reason="conflict"} 1
reprocessor_dead_lettered_total{reason="forbidden"} 1
reprocessor_dead_lettered_total{reason="invalid_id"} 1
reprocessor_dead_lettered_total{reason="invalid_payload"} 1
reprocessor_dead_lettered_total{reason="not_found"} 1
reprocessor_dead_lettered_total{reason="other"} 1
reprocessor_dead_lettered_total{reason="payload_too_large"} 1
reprocessor_dead_lettered_total{reason="retries_exhausted"} 1
reprocessor_dead_lettered_total{reason="unauthorized"} 1
# HELP reprocessor_event_publish_failures_total CloudEvent publications that failed.
# TYPE reprocessor_event_publish_failures_total counter
reprocessor_event_publish_failures_total 1
# HELP reprocessor_in_flight Request messages being processed.
# TYPE reprocessor_in_flight gauge
reprocessor_in_flight 2
# HELP reprocessor_last_success_timestamp_seconds Unix time in seconds of the last request accepted by Graph.
# TYPE reprocessor_last_success_timestamp_seconds gauge
reprocessor_last_success_timestamp_seconds 1.7e+09
# HELP reprocessor_messages_received_total Request messages received, by delivery: first or redelivery.
# TYPE reprocessor_messages_received_total counter
reprocessor_messages_received_total{delivery="first"} 1
reprocessor_messages_received_total{delivery="redelivery"} 1
# HELP reprocessor_queue_ack_pending_messages Request messages delivered to the consumer and not yet acknowledged (num_ack_pending).
# TYPE reprocessor_queue_ack_pending_messages gauge
reprocessor_queue_ack_pending_messages 3
# HELP reprocessor_queue_pending_messages Request messages in the stream not yet delivered to the consumer (num_pending).
# TYPE reprocessor_queue_pending_messages gauge
reprocessor_queue_pending_messages 12
# HELP reprocessor_throttle_wait_seconds_total Total time in seconds Graph calls spent waiting out a Retry-After.
# TYPE reprocessor_throttle_wait_seconds_total counter
reprocessor_throttle_wait_seconds_total 2
# HELP reprocessor_throttled 1 while Graph calls wait out a Retry-After for the whole process, else 0.
# TYPE reprocessor_throttled gauge
reprocessor_throttled 0
# HELP reprocessor_rate_limit_wait_seconds Time in seconds a Graph call waited for the process-wide rate limiter.
# TYPE reprocessor_rate_limit_wait_seconds histogram
reprocessor_rate_limit_wait_seconds_bucket{le="0.001"} 0
reprocessor_rate_limit_wait_seconds_bucket{le="0.005"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="0.01"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="0.025"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="0.05"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="0.1"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="0.25"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="0.5"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="1"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="2.5"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="5"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="10"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="30"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="60"} 1
reprocessor_rate_limit_wait_seconds_bucket{le="+Inf"} 1
reprocessor_rate_limit_wait_seconds_sum 0.003
reprocessor_rate_limit_wait_seconds_count 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"reprocessor_circuit_open", "reprocessor_dead_lettered_total",
		"reprocessor_event_publish_failures_total", "reprocessor_in_flight",
		"reprocessor_last_success_timestamp_seconds", "reprocessor_messages_received_total",
		"reprocessor_queue_ack_pending_messages", "reprocessor_queue_pending_messages",
		"reprocessor_throttle_wait_seconds_total", "reprocessor_throttled",
		"reprocessor_rate_limit_wait_seconds"); err != nil {
		t.Error(err)
	}

	// A negative queue wait (clock skew) is observed as zero.
	if got := histogramSum(t, reg, "reprocessor_queue_wait_seconds", nil); got != 1.5 {
		t.Errorf("queue wait sum = %v, want 1.5", got)
	}
	if got := histogramCount(t, reg, "reprocessor_processing_duration_seconds", map[string]string{"outcome": "other"}); got != 1 {
		t.Errorf("processing duration count for outcome other = %d, want 1", got)
	}
	for _, name := range []string{"reprocessor_messages_completed_total", "reprocessor_retries_total", "reprocessor_events_published_total"} {
		n, err := testutil.GatherAndCount(reg, name)
		if err != nil {
			t.Fatal(err)
		}
		// Every known value and one "other" series, each at 1.
		var total float64
		for _, mf := range gather(t, reg, name) {
			for _, s := range mf.GetMetric() {
				total += s.GetCounter().GetValue()
			}
		}
		if float64(n) != total {
			t.Errorf("%s: %d series summing to %v, want each at 1", name, n, total)
		}
	}
}

func TestObserveGraphBoundsLabels(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		operation, code         string
		wantOperation, wantCode string
	}{
		{"reprocess", "202", "reprocess", "202"},
		{"get_assignment", "404", "get_assignment", "404"},
		{"list_assignments", "429", "list_assignments", "429"},
		{"reprocess", "100", "reprocess", "100"},
		{"reprocess", "599", "reprocess", "599"},
		{"reprocess", "error", "reprocess", "error"},
		{"reprocess", "600", "reprocess", "other"},
		{"reprocess", "099", "reprocess", "other"},
		{"reprocess", "20", "reprocess", "other"},
		{"reprocess", "2020", "reprocess", "other"},
		{"reprocess", "+20", "reprocess", "other"},
		{"reprocess", "-20", "reprocess", "other"},
		{"reprocess", "2x2", "reprocess", "other"},
		{"reprocess", "", "reprocess", "other"},
		{"reprocess", "Error", "reprocess", "other"},
		{"reprocess", "/users/8d5b", "reprocess", "other"},
		{"users", "200", "other", "200"},
		{"", "200", "other", "200"},
		{"Reprocess", "error", "other", "error"},
	} {
		t.Run(tc.operation+"/"+tc.code, func(t *testing.T) {
			t.Parallel()
			m, reg := setup(t)
			m.ObserveGraph(tc.operation, tc.code, 250*time.Millisecond)

			want := `
# HELP reprocessor_graph_requests_total Graph HTTP calls, by operation and code: the HTTP status, or error when no answer was had.
# TYPE reprocessor_graph_requests_total counter
reprocessor_graph_requests_total{code="` + tc.wantCode + `",operation="` + tc.wantOperation + `"} 1
`
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "reprocessor_graph_requests_total"); err != nil {
				t.Error(err)
			}
			labels := map[string]string{"operation": tc.wantOperation}
			if got := histogramCount(t, reg, "reprocessor_graph_request_duration_seconds", labels); got != 1 {
				t.Errorf("duration count for %v = %d, want 1", labels, got)
			}
		})
	}
}

func TestLintPasses(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	exerciseAll(m)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestNewPanicsWhenRegisteredTwice(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	New(reg, BuildInfo{})
	defer func() {
		if recover() == nil {
			t.Error("second New on one registry did not panic")
		}
	}()
	New(reg, BuildInfo{})
}

func TestRegisterRuntimeCollectors(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if err := RegisterRuntimeCollectors(reg); err != nil {
		t.Fatalf("register: %v", err)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if len(gather(t, reg, name)) == 0 {
			// The process collector exports nothing on systems without procfs.
			if name == "process_start_time_seconds" {
				continue
			}
			t.Errorf("%s not gathered", name)
		}
	}
	if err := RegisterRuntimeCollectors(reg); err == nil {
		t.Error("registering the runtime collectors twice: no error")
	}
}

// BenchmarkObserver measures the Observer calls the worker makes for one accepted message.
func BenchmarkObserver(b *testing.B) {
	m, _ := setup(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			observeOneMessage(m)
		}
	})
}

// BenchmarkObserverSerial is BenchmarkObserver on one goroutine, without contention.
func BenchmarkObserverSerial(b *testing.B) {
	m, _ := setup(b)
	b.ReportAllocs()
	for b.Loop() {
		observeOneMessage(m)
	}
}

func BenchmarkObserveGraph(b *testing.B) {
	m, _ := setup(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveGraph(OperationReprocess, "202", 80*time.Millisecond)
		}
	})
}

func observeOneMessage(m *Metrics) {
	m.MessageReceived(false)
	m.QueueWait(120 * time.Millisecond)
	m.InFlight(1)
	m.RateLimitWait(2 * time.Millisecond)
	m.Retry(worker.RetryThrottled)
	m.ThrottleWait(time.Second)
	m.EventPublished(worker.KindAccepted)
	m.LastSuccess(time.Unix(1700000000, 0))
	m.Completed(worker.KindAccepted, 90*time.Millisecond)
	m.InFlight(-1)
}

func TestLastSuccess(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		t    time.Time
		want float64
	}{
		{"whole seconds", time.Unix(1700000000, 0), 1700000000},
		{"fraction", time.Unix(1700000000, 250_000_000), 1700000000.25},
		{"zero means never", time.Time{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, _ := setup(t)
			m.LastSuccess(tc.t)
			if got := testutil.ToFloat64(m.lastSuccess); got != tc.want {
				t.Errorf("last success = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestObserverConcurrentUse(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	const goroutines, rounds = 4, 50
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range rounds {
				exerciseAll(m)
			}
		})
	}
	wg.Wait()

	const want = `
# HELP reprocessor_retries_total Graph calls retried, by reason.
# TYPE reprocessor_retries_total counter
reprocessor_retries_total{reason="network"} 200
reprocessor_retries_total{reason="other"} 200
reprocessor_retries_total{reason="server_error"} 200
reprocessor_retries_total{reason="throttled"} 200
reprocessor_retries_total{reason="timeout"} 200
reprocessor_retries_total{reason="unauthorized"} 200
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "reprocessor_retries_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.inFlight); got != goroutines*rounds {
		t.Errorf("in flight = %v, want %d", got, goroutines*rounds)
	}
}

func TestStateChanged(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	m.StateChanged("delivered")
	m.StateChanged("delivered")
	m.StateChanged("deliveryFailed")
	m.StateChanged("quantumEntangled") // a state Graph may add: counted as other, never a new series
	want := `
# HELP reprocessor_assignment_state_changes_total Observed changes of an assignment's state, by the new state (other: a state Graph added since).
# TYPE reprocessor_assignment_state_changes_total counter
reprocessor_assignment_state_changes_total{state="delivered"} 2
reprocessor_assignment_state_changes_total{state="delivering"} 0
reprocessor_assignment_state_changes_total{state="deliveryFailed"} 1
reprocessor_assignment_state_changes_total{state="expired"} 0
reprocessor_assignment_state_changes_total{state="notFound"} 0
reprocessor_assignment_state_changes_total{state="other"} 1
reprocessor_assignment_state_changes_total{state="partiallyDelivered"} 0
reprocessor_assignment_state_changes_total{state="unknownFutureValue"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "reprocessor_assignment_state_changes_total"); err != nil {
		t.Fatal(err)
	}
}

func TestReadinessAndConcurrency(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	m.Concurrency(64)
	var failing error
	if err := RegisterReadiness(reg, []Check{{Name: "x", Func: func() error { return failing }}}); err != nil {
		t.Fatal(err)
	}
	want := func(ready int) string {
		return fmt.Sprintf(`
# HELP reprocessor_concurrency Request messages this process may work at once now: Graph's rate times its latency, with headroom, at most REPROCESSOR_CONCURRENCY.
# TYPE reprocessor_concurrency gauge
reprocessor_concurrency 64
# HELP reprocessor_ready 1 while every readiness check of /readyz passes, else 0.
# TYPE reprocessor_ready gauge
reprocessor_ready %d
`, ready)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want(1)), "reprocessor_concurrency", "reprocessor_ready"); err != nil {
		t.Fatal(err)
	}
	failing = errors.New("down")
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want(0)), "reprocessor_concurrency", "reprocessor_ready"); err != nil {
		t.Fatal(err)
	}
}

// Package metrics exposes what the worker does as Prometheus metrics (DESIGN section 9), and
// serves them with the health and readiness endpoints (DESIGN section 8).
//
// Every collector is registered on a registry the caller passes in; nothing touches the
// default registry. [Metrics] implements worker.Observer for what the worker decides, and
// decorates its ports for what passes through them ([Metrics.DecorateSource] and the like);
// it is cheap enough for the worker's hot path: every label child is resolved once, in [New].
package metrics

import (
	"cmp"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/reprocessor/reprocessor/worker"
)

const namespace = "reprocessor"

// Graph operations, the operation label of the Graph request metrics.
const (
	OperationReprocess       = "reprocess"
	OperationGetAssignment   = "get_assignment"
	OperationListAssignments = "list_assignments"
)

// GraphOperations lists every Graph operation: the worker's, then the catalog and
// directory reads of drift scans and resource verification (graph.Op*).
var GraphOperations = []string{OperationReprocess, OperationGetAssignment, OperationListAssignments,
	"list_access_packages", "get_access_package", "list_group_members", "list_group_owners",
	"list_app_role_assigned_to", "get_service_principal", "list_member_of", "list_owned_objects",
	"list_app_role_assignments"}

// LabelOther replaces a label value outside a metric's known set, so that a label never
// takes an unbounded number of values.
const LabelOther = "other"

// Graph request code label values other than an HTTP status.
const codeError = "error"

// Delivery label values.
const (
	deliveryFirst      = "first"
	deliveryRedelivery = "redelivery"
)

// Histogram buckets, in seconds.
var (
	graphDurationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	queueWaitBuckets     = []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600}
	processingBuckets    = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
	rateLimitWaitBuckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
)

// BuildInfo describes the running binary, for reprocessor_build_info.
type BuildInfo struct {
	Version   string // empty means "unknown"
	Revision  string // empty means "unknown"
	GoVersion string // empty means runtime.Version()
}

// Metrics holds the reprocessor's collectors. It implements worker.Observer; all its methods
// are safe for concurrent use.
type Metrics struct {
	received  [2]prometheus.Counter // indexed by redelivery: first, redelivery
	queueWait prometheus.Observer

	completed  *labelled[prometheus.Counter]
	processing *labelled[prometheus.Observer]

	deadLettered *labelled[prometheus.Counter]
	retries      *labelled[prometheus.Counter]

	throttled     prometheus.Gauge
	throttleWait  prometheus.Counter
	rateLimitWait prometheus.Observer
	rateLimit     prometheus.Gauge
	concurrency   prometheus.Gauge
	inFlight      prometheus.Gauge

	eventsPublished      *labelled[prometheus.Counter]
	eventPublishFailures prometheus.Counter
	duplicateOutcomes    *labelled[prometheus.Counter]
	conflictingOutcomes  *labelled[prometheus.Counter]

	circuitOpen prometheus.Gauge
	lastSuccess prometheus.Gauge

	graphRequests *prometheus.CounterVec
	graphDuration *labelled[prometheus.Observer]

	queuePending    prometheus.Gauge
	queueAckPending prometheus.Gauge

	stateChanges *labelled[prometheus.Counter]
}

var _ worker.Observer = (*Metrics)(nil)

// New creates the reprocessor's collectors, registers them on reg and sets
// reprocessor_build_info. Label values known in advance are initialised, so that their series
// are exported at zero before anything happens. It panics if a collector is already registered
// on reg, as [prometheus.Registerer.MustRegister] does: that is a wiring bug.
//
// New registers no Go or process collectors; see [RegisterRuntimeCollectors].
func New(reg prometheus.Registerer, build BuildInfo) *Metrics {
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "messages_received_total",
		Help:      "Request messages received, by delivery: first or redelivery.",
	}, []string{"delivery"})
	queueWait := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "queue_wait_seconds",
		Help:      "Time in seconds from the stream storing a request message to the start of its processing.",
		Buckets:   queueWaitBuckets,
	})
	completed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "messages_completed_total",
		Help:      "Request messages completed, by outcome: accepted, failed, rejected or coalesced.",
	}, []string{"outcome"})
	processing := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "processing_duration_seconds",
		Help:      "Time in seconds from the start of a request's processing to its outcome, by outcome.",
		Buckets:   processingBuckets,
	}, []string{"outcome"})
	deadLettered := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "dead_lettered_total",
		Help:      "Request messages copied to the dead-letter stream, by reason (the error code).",
	}, []string{"reason"})
	retries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "retries_total",
		Help:      "Graph calls retried, by reason.",
	}, []string{"reason"})
	throttled := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "throttled",
		Help:      "1 while Graph calls wait out a Retry-After for the whole process, else 0.",
	})
	throttleWait := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "throttle_wait_seconds_total",
		Help:      "Total time in seconds Graph calls spent waiting out a Retry-After.",
	})
	rateLimitWait := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "rate_limit_wait_seconds",
		Help:      "Time in seconds a Graph call waited for the process-wide rate limiter.",
		Buckets:   rateLimitWaitBuckets,
	})
	rateLimit := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "rate_limit_current",
		Help:      "The process's Graph call rate limit in calls per second, as REPROCESSOR_RATE=auto has adapted it or as fixed; 0 when unlimited.",
	})
	concurrency := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "concurrency",
		Help:      "Request messages this process may work at once now: Graph's rate times its latency, with headroom, at most REPROCESSOR_CONCURRENCY.",
	})
	inFlight := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "in_flight",
		Help:      "Request messages being processed.",
	})
	eventsPublished := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "events_published_total",
		Help:      "CloudEvents published and acknowledged by the stream, by kind.",
	}, []string{"kind"})
	eventPublishFailures := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "event_publish_failures_total",
		Help:      "CloudEvent publications that failed.",
	})
	duplicateOutcomes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "duplicate_outcomes_total",
		Help:      "Terminal events not stored because the stream already held one for the request (an earlier delivery's ack was lost), by the kind dropped.",
	}, []string{"kind"})
	conflictingOutcomes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "conflicting_outcomes_total",
		Help:      "Of those, the ones whose dropped outcome differed from the stored one, which stands, by the kind dropped.",
	}, []string{"kind"})
	circuitOpen := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "circuit_open",
		Help:      "1 while the circuit is open after repeated 403 answers and fetching is paused, else 0.",
	})
	lastSuccess := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "last_success_timestamp_seconds",
		Help:      "Unix time in seconds of the last request accepted by Graph.",
	})
	graphRequests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "graph_requests_total",
		Help:      "Graph HTTP calls, by operation and code: the HTTP status, or error when no answer was had.",
	}, []string{"operation", "code"})
	graphDuration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "graph_request_duration_seconds",
		Help:      "Duration in seconds of Graph HTTP calls, by operation.",
		Buckets:   graphDurationBuckets,
	}, []string{"operation"})
	queuePending := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "queue_pending_messages",
		Help:      "Request messages in the stream not yet delivered to the consumer (num_pending).",
	})
	queueAckPending := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "queue_ack_pending_messages",
		Help:      "Request messages delivered to the consumer and not yet acknowledged (num_ack_pending).",
	})
	stateChanges := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace,
		Name:      "assignment_state_changes_total",
		Help:      "Observed changes of an assignment's state, by the new state (other: a state Graph added since).",
	}, []string{"state"})
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "build_info",
		Help:      "Always 1; labelled with the version, revision and Go version of the running binary.",
	}, []string{"version", "revision", "goversion"})

	reg.MustRegister(
		received, queueWait, completed, processing, deadLettered, retries,
		throttled, throttleWait, rateLimitWait, rateLimit, concurrency, inFlight,
		eventsPublished, eventPublishFailures, duplicateOutcomes, conflictingOutcomes, circuitOpen, lastSuccess,
		graphRequests, graphDuration, queuePending, queueAckPending, stateChanges, buildInfo,
	)

	buildInfo.WithLabelValues(
		cmp.Or(build.Version, "unknown"),
		cmp.Or(build.Revision, "unknown"),
		cmp.Or(build.GoVersion, runtime.Version()),
	).Set(1)

	return &Metrics{
		received: [2]prometheus.Counter{
			received.WithLabelValues(deliveryFirst),
			received.WithLabelValues(deliveryRedelivery),
		},
		queueWait:            queueWait,
		completed:            newLabelled(completed.WithLabelValues, worker.Outcomes),
		processing:           newLabelled(processing.WithLabelValues, worker.Outcomes),
		deadLettered:         newLabelled(deadLettered.WithLabelValues, worker.ErrorCodes),
		retries:              newLabelled(retries.WithLabelValues, worker.RetryReasons),
		throttled:            throttled,
		throttleWait:         throttleWait,
		rateLimitWait:        rateLimitWait,
		concurrency:          concurrency,
		rateLimit:            rateLimit,
		inFlight:             inFlight,
		eventsPublished:      newLabelled(eventsPublished.WithLabelValues, worker.EventKinds),
		eventPublishFailures: eventPublishFailures,
		duplicateOutcomes:    newLabelled(duplicateOutcomes.WithLabelValues, worker.Outcomes),
		conflictingOutcomes:  newLabelled(conflictingOutcomes.WithLabelValues, worker.Outcomes),
		circuitOpen:          circuitOpen,
		lastSuccess:          lastSuccess,
		graphRequests:        graphRequests,
		graphDuration:        newLabelled(graphDuration.WithLabelValues, GraphOperations),
		stateChanges:         newLabelled(stateChanges.WithLabelValues, worker.KnownStates),
		queuePending:         queuePending,
		queueAckPending:      queueAckPending,
	}
}

// RegisterRuntimeCollectors registers the standard Go runtime and process collectors on reg,
// for a registry that serves a whole process.
func RegisterRuntimeCollectors(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register runtime collectors: %w", err)
		}
	}
	return nil
}

// MessageReceived counts a delivered request message.
func (m *Metrics) MessageReceived(redelivery bool) {
	if redelivery {
		m.received[1].Inc()
		return
	}
	m.received[0].Inc()
}

// QueueWait records the time from the stream storing a message to the start of its work.
func (m *Metrics) QueueWait(d time.Duration) { m.queueWait.Observe(seconds(d)) }

// Completed counts a request's outcome and records how long its processing took; an
// accepted one is the last success.
func (m *Metrics) Completed(outcome string, d time.Duration) {
	m.completed.get(outcome).Inc()
	m.processing.get(outcome).Observe(seconds(d))
	if outcome == worker.KindAccepted {
		m.LastSuccess(time.Now())
	}
}

// DeadLettered counts a message copied to the dead-letter stream with error code code.
func (m *Metrics) DeadLettered(code string) { m.deadLettered.get(code).Inc() }

// Retry counts a Graph call retried for reason.
func (m *Metrics) Retry(reason string) { m.retries.get(reason).Inc() }

// Throttled records whether the process is waiting out a Retry-After.
func (m *Metrics) Throttled(on bool) { m.throttled.Set(flag(on)) }

// ThrottleWait adds d to the time spent waiting out Retry-After.
func (m *Metrics) ThrottleWait(d time.Duration) {
	if d > 0 {
		m.throttleWait.Add(d.Seconds())
	}
}

// RateLimitWait records the time a Graph call waited for the rate limiter.
func (m *Metrics) RateLimitWait(d time.Duration) { m.rateLimitWait.Observe(seconds(d)) }

// SetRateLimit sets the current rate limit in calls per second; 0 means unlimited.
func (m *Metrics) SetRateLimit(callsPerSecond float64) { m.rateLimit.Set(max(callsPerSecond, 0)) }

// Concurrency records how many requests may be worked at once now (the worker's adaptive
// limit, at most REPROCESSOR_CONCURRENCY).
func (m *Metrics) Concurrency(n int) { m.concurrency.Set(float64(max(n, 0))) }

// InFlight adds delta to the number of messages being processed.
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(float64(delta)) }

// EventPublished counts an event of kind published.
func (m *Metrics) EventPublished(kind string) { m.eventsPublished.get(kind).Inc() }

// EventPublishFailed counts an event publication that failed.
func (m *Metrics) EventPublishFailed() { m.eventPublishFailures.Inc() }

// EventDuplicate counts a terminal event the stream already held one for; conflict when
// the dropped one had another outcome than the stored one.
func (m *Metrics) EventDuplicate(kind string, conflict bool) {
	m.duplicateOutcomes.get(kind).Inc()
	if conflict {
		m.conflictingOutcomes.get(kind).Inc()
	}
}

// CircuitOpen records whether the 403 circuit is open.
func (m *Metrics) CircuitOpen(open bool) { m.circuitOpen.Set(flag(open)) }

// StateChanged counts an observed change of an assignment's state to state.
func (m *Metrics) StateChanged(state string) { m.stateChanges.get(state).Inc() }

// LastSuccess records the time of the last request accepted by Graph; the zero time
// records 0, "never".
func (m *Metrics) LastSuccess(t time.Time) {
	if t.IsZero() {
		m.lastSuccess.Set(0)
		return
	}
	m.lastSuccess.Set(float64(t.Unix()) + float64(t.Nanosecond())/1e9)
}

// ObserveGraph counts one Graph HTTP call and records its duration. The graph client calls it
// for every call. operation is one of [GraphOperations]; code is the HTTP status as three
// digits ("202"), or "error" when no answer was had. Any other operation or code is counted as
// [LabelOther], so that a bad caller cannot blow up the number of series.
func (m *Metrics) ObserveGraph(operation, code string, d time.Duration) {
	operation = m.graphDuration.bound(operation)
	m.graphRequests.WithLabelValues(operation, graphCode(code)).Inc()
	m.graphDuration.get(operation).Observe(seconds(d))
}

// SetQueue records the request consumer's pending and ack-pending message counts.
func (m *Metrics) SetQueue(pending, ackPending uint64) {
	m.queuePending.Set(float64(pending))
	m.queueAckPending.Set(float64(ackPending))
}

// graphCode returns code if it is an HTTP status from 100 to 599 or "error", else LabelOther.
func graphCode(code string) string {
	if code == codeError {
		return code
	}
	if len(code) != 3 || code[0] < '1' || code[0] > '5' || !isDigit(code[1]) || !isDigit(code[2]) {
		return LabelOther
	}
	return code
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// labelled holds the children of a one-label vector, resolved once for each known label
// value, and a child for LabelOther created on first use.
type labelled[T any] struct {
	known map[string]T
	other func() T
}

func newLabelled[T any](with func(...string) T, values []string) *labelled[T] {
	l := &labelled[T]{
		known: make(map[string]T, len(values)),
		other: sync.OnceValue(func() T { return with(LabelOther) }),
	}
	for _, v := range values {
		l.known[v] = with(v)
	}
	return l
}

// get returns the child for value, or the LabelOther child for an unknown value.
func (l *labelled[T]) get(value string) T {
	if c, ok := l.known[value]; ok {
		return c
	}
	return l.other()
}

// bound returns value if it is known, else LabelOther.
func (l *labelled[T]) bound(value string) string {
	if _, ok := l.known[value]; ok {
		return value
	}
	return LabelOther
}

// seconds converts d to seconds for a histogram; a negative duration, from clock skew
// between the stream and this host, counts as zero.
func seconds(d time.Duration) float64 { return max(d, 0).Seconds() }

func flag(on bool) float64 {
	if on {
		return 1
	}
	return 0
}

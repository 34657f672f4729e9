package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Drift holds the scheduled drift scanner's collectors (reprocessor_drift_*).
type Drift struct {
	scans        *prometheus.CounterVec
	drifted      prometheus.Gauge
	enqueued     prometheus.Counter
	findings     prometheus.Gauge
	lastScan     prometheus.Gauge
	lastSuccess  prometheus.Gauge
	scanDuration prometheus.Histogram
	calls        *labelled[prometheus.Counter]
}

// NewDrift registers the drift scanner's collectors on reg; it panics on a conflict, as
// New does.
func NewDrift(reg prometheus.Registerer) *Drift {
	scans := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "drift_scans_total",
		Help: "Drift scans finished, by result: ok or error."}, []string{"result"})
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "drift_graph_calls_total",
		Help: "Graph calls made by drift scans, by kind (the operation)."}, []string{"kind"})
	d := &Drift{
		scans: scans,
		drifted: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "drift_drifted_assignments",
			Help: "Delivered assignments whose target lacked a resource role of its package, at the last finished scan."}),
		enqueued: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "drift_enqueued_total",
			Help: "Drifted assignments enqueued for reprocessing."}),
		findings: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "drift_findings",
			Help: "Unexpected findings (a resource or app role that no longer exists, a role not understood) at the last finished scan."}),
		lastScan: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "drift_last_scan_timestamp_seconds",
			Help: "Unix time the last drift scan finished, whatever its result."}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "drift_last_success_timestamp_seconds",
			Help: "Unix time the last drift scan finished without error."}),
		scanDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "drift_scan_duration_seconds",
			Help: "Time in seconds a drift scan took.", Buckets: prometheus.ExponentialBuckets(1, 2, 14)}),
		calls: newLabelled(calls.WithLabelValues, GraphOperations),
	}
	reg.MustRegister(scans, calls, d.drifted, d.enqueued, d.findings, d.lastScan, d.lastSuccess, d.scanDuration)
	scans.WithLabelValues("ok")
	scans.WithLabelValues("error")
	return d
}

// ScanFinished records a scan: whether it finished without error, what it found (only for
// a scan without error) and the calls it made by kind.
func (d *Drift) ScanFinished(ok bool, drifted, findings int, took time.Duration, calls map[string]int64) {
	now := float64(time.Now().UnixNano()) / 1e9
	d.lastScan.Set(now)
	d.scanDuration.Observe(seconds(took))
	for kind, n := range calls {
		d.calls.get(kind).Add(float64(n))
	}
	if !ok {
		d.scans.WithLabelValues("error").Inc()
		return
	}
	d.scans.WithLabelValues("ok").Inc()
	d.lastSuccess.Set(now)
	d.drifted.Set(float64(drifted))
	d.findings.Set(float64(findings))
}

// Enqueued counts drifted assignments published for reprocessing.
func (d *Drift) Enqueued(n int) { d.enqueued.Add(float64(n)) }

package metrics_test

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/worker"
)

// A process builds one registry, registers the reprocessor's metrics and the runtime
// collectors on it, hands the Metrics to the worker and the graph client, and serves the
// handler on its public listener.
func Example() {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: "1.0.0", Revision: "abc123"})
	if err := metrics.RegisterRuntimeCollectors(reg); err != nil {
		panic(err)
	}

	var observer worker.Observer = m // what the worker reports to
	observer.Completed(worker.KindAccepted, 90*time.Millisecond)
	m.ObserveGraph(metrics.OperationReprocess, "202", 80*time.Millisecond) // graph.Config.Observe

	natsConnected := errors.New("not connected")
	h := metrics.Handler(reg, []metrics.Check{
		{Name: "nats", Func: func() error { return natsConnected }},
		{Name: "circuit", Func: func() error { return nil }},
	}, nil)

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	fmt.Print(rec.Code, " ", string(body))

	natsConnected = nil
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	body, _ = io.ReadAll(rec.Result().Body)
	fmt.Print(rec.Code, " ", string(body))
	// Output:
	// 503 nats: not connected
	// 200 ok
}

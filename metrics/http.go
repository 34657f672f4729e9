package metrics

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check is one readiness condition, such as "NATS connected" or "circuit closed".
type Check struct {
	Name string
	// Func returns nil when the condition holds. It is called on every /readyz request, so it
	// must be cheap and must not block.
	Func func() error
}

// Handler serves the public endpoints:
//
//   - GET /metrics: the metrics gathered from g, in the format the scraper asks for;
//     gathering errors are logged and the metrics that could be gathered are served.
//   - GET /healthz: 200 "ok" while the process serves.
//   - GET /readyz: 200 "ok" when every check in ready passes, else 503 with one line
//     "name: error" for each failing check.
//
// Any other path is 404; another method on these paths is 405. A nil logger discards.
// RegisterReadiness registers reprocessor_ready, 1 while every check passes, else 0: the
// readiness of /readyz as a metric, evaluated at each scrape.
func RegisterReadiness(reg prometheus.Registerer, ready []Check) error {
	ready = append([]Check(nil), ready...)
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "ready",
		Help:      "1 while every readiness check of /readyz passes, else 0.",
	}, func() float64 {
		for _, c := range ready {
			if c.Func() != nil {
				return 0
			}
		}
		return 1
	}))
}

// Handler panics if a check has no Name or no Func: that is a wiring bug.
func Handler(g prometheus.Gatherer, ready []Check, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ready = append([]Check(nil), ready...)
	for i, c := range ready {
		if c.Name == "" || c.Func == nil {
			panic(fmt.Sprintf("metrics: readiness check %d (%q) needs a Name and a Func", i, c.Name))
		}
	}

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      promLogger{logger},
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		var failing strings.Builder
		for _, c := range ready {
			if err := c.Func(); err != nil {
				fmt.Fprintf(&failing, "%s: %s\n", c.Name, oneLine(err.Error()))
			}
		}
		if failing.Len() > 0 {
			writeText(w, http.StatusServiceUnavailable, failing.String())
			return
		}
		writeText(w, http.StatusOK, "ok\n")
	})
	return mux
}

func writeText(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// oneLine keeps a check's error on one line of the /readyz body.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

// promLogger logs promhttp's errors through slog.
type promLogger struct{ logger *slog.Logger }

func (l promLogger) Println(v ...any) {
	l.logger.Error("serve metrics", "err", strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

package metrics

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func serve(t *testing.T, h http.Handler, method, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Result()
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

func pass() error { return nil }

func TestHandler(t *testing.T) {
	t.Parallel()
	natsDown := Check{Name: "nats", Func: func() error { return errors.New("not connected") }}
	circuitOpen := Check{Name: "circuit", Func: func() error { return errors.New("open after 20 forbidden\nanswers") }}
	token := Check{Name: "graph_token", Func: pass}

	for _, tc := range []struct {
		name       string
		method     string
		path       string
		checks     []Check
		wantStatus int
		wantBody   string
	}{
		{"healthz", "GET", "/healthz", nil, 200, "ok\n"},
		{"healthz while not ready", "GET", "/healthz", []Check{natsDown}, 200, "ok\n"},
		{"healthz head", "HEAD", "/healthz", nil, 200, "ok\n"}, // net/http drops the body
		{"readyz without checks", "GET", "/readyz", nil, 200, "ok\n"},
		{"readyz passing", "GET", "/readyz", []Check{token}, 200, "ok\n"},
		{"readyz one failing", "GET", "/readyz", []Check{natsDown, token}, 503, "nats: not connected\n"},
		{"readyz all failing", "GET", "/readyz", []Check{natsDown, token, circuitOpen}, 503,
			"nats: not connected\ncircuit: open after 20 forbidden answers\n"},
		{"unknown path", "GET", "/", nil, 404, "404 page not found\n"},
		{"pprof not served", "GET", "/debug/pprof/", nil, 404, "404 page not found\n"},
		{"subpath", "GET", "/healthz/x", nil, 404, "404 page not found\n"},
		{"wrong method", "POST", "/readyz", nil, 405, "Method Not Allowed\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := Handler(prometheus.NewRegistry(), tc.checks, nil)
			resp := serve(t, h, tc.method, tc.path)
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if got := body(t, resp); got != tc.wantBody {
				t.Errorf("body %q, want %q", got, tc.wantBody)
			}
			if tc.wantStatus < 300 {
				if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
					t.Errorf("Content-Type %q", ct)
				}
			}
		})
	}
}

func TestHandlerReadyzFollowsChecks(t *testing.T) {
	t.Parallel()
	var down error = errors.New("consumer not bound")
	h := Handler(prometheus.NewRegistry(), []Check{{Name: "consumer", Func: func() error { return down }}}, nil)
	if resp := serve(t, h, "GET", "/readyz"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d before the consumer is bound, want 503", resp.StatusCode)
	}
	down = nil
	if resp := serve(t, h, "GET", "/readyz"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d after the consumer is bound, want 200", resp.StatusCode)
	}
}

func TestHandlerServesMetrics(t *testing.T) {
	t.Parallel()
	m, reg := setup(t)
	exerciseAll(m)
	resp := serve(t, Handler(reg, nil, nil), "GET", "/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	b := body(t, resp)
	for _, want := range []string{
		`reprocessor_build_info{goversion="go1.26.8",revision="abc123",version="1.2.3"} 1`,
		`reprocessor_messages_received_total{delivery="redelivery"} 1`,
		`reprocessor_graph_requests_total{code="202",operation="reprocess"} 1`,
	} {
		if !strings.Contains(b, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// failingGatherer gathers one family and an error, as a registry does when one collector fails.
type failingGatherer struct{}

func (failingGatherer) Gather() ([]*dto.MetricFamily, error) {
	name, help, v := "reprocessor_in_flight", "help", 1.0
	typ := dto.MetricType_GAUGE
	return []*dto.MetricFamily{{
		Name: &name, Help: &help, Type: &typ,
		Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: &v}}},
	}}, errors.New("collector exploded")
}

func TestHandlerLogsGatherErrors(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	resp := serve(t, Handler(failingGatherer{}, nil, logger), "GET", "/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200 with what could be gathered", resp.StatusCode)
	}
	if b := body(t, resp); !strings.Contains(b, "reprocessor_in_flight 1") {
		t.Errorf("body lacks the gathered family:\n%s", b)
	}
	if !strings.Contains(logs.String(), "collector exploded") {
		t.Errorf("gather error not logged; logs:\n%s", logs.String())
	}
}

func TestPprofHandler(t *testing.T) {
	t.Parallel()
	h := PprofHandler()
	for path, want := range map[string]int{
		"/debug/pprof/":          200,
		"/debug/pprof/goroutine": 200,
		"/debug/pprof/cmdline":   200,
		"/metrics":               404,
	} {
		if resp := serve(t, h, "GET", path); resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// TestPromtoolCheckMetrics pipes the /metrics exposition, after every method has been called
// and with the runtime collectors, through `promtool check metrics`.
func TestPromtoolCheckMetrics(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH (Debian: apt-get install prometheus); skipping promtool check metrics")
	}
	m, reg := setup(t)
	if err := RegisterRuntimeCollectors(reg); err != nil {
		t.Fatal(err)
	}
	exerciseAll(m)
	resp := serve(t, Handler(reg, nil, nil), "GET", "/metrics")
	exposition := body(t, resp)

	cmd := exec.CommandContext(t.Context(), promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestHandlerPanicsOnIncompleteCheck(t *testing.T) {
	t.Parallel()
	for _, c := range []Check{{Name: "nats"}, {Func: pass}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Handler accepted check %+v", c)
				}
			}()
			Handler(prometheus.NewRegistry(), []Check{c}, nil)
		}()
	}
}

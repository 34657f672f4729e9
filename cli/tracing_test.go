package cli

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/reprocessor/reprocessor/graph/graphtest"
)

// otlpReceiver is an OTLP/HTTP traces endpoint in this process: it decodes what the
// exporter sends as a collector would.
type otlpReceiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var in coltrace.ExportTraceServiceRequest
		if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" || proto.Unmarshal(body, &in) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range in.ResourceSpans {
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					r.services = append(r.services, a.GetValue().GetStringValue())
				}
			}
			for _, ss := range rs.ScopeSpans {
				r.spans = append(r.spans, ss.Spans...)
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *otlpReceiver) find(traceID string, name string) []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range r.spans {
		if hex.EncodeToString(s.TraceId) == traceID && s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// A traceparent on the request continues into the worker's span, its Graph call and its
// waits, exported over OTLP; the events carry the trace on, as a NATS header and as the
// CloudEvents traceparent attribute.
func TestTracingContinuesTheProducersTrace(t *testing.T) {
	rcv := newOTLPReceiver(t)
	sys := newSystem(t, graphtest.Options{})
	sys.startWorker(env{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.srv.URL, "OTEL_SERVICE_NAME": "reprocessor-test",
		"OTEL_BSP_SCHEDULE_DELAY": "50", "REPROCESSOR_VERIFY": "true", "REPROCESSOR_VERIFY_DELAY": "50ms"})
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	events := make(chan *nats.Msg, 16)
	sub, err := sys.nc.ChanSubscribe("entitlement.reprocess.events.>", events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	id := ids(1, 81)[0]
	msg := nats.NewMsg("entitlement.reprocess.requests")
	msg.Data = []byte(id)
	msg.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	if _, err := sys.js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	deadline := time.After(20 * time.Second)
	for len(kinds) < 2 {
		select {
		case m := <-events:
			var ev struct {
				Type, TraceParent string
			}
			_ = json.Unmarshal(m.Data, &ev)
			var attr struct {
				TraceParent string `json:"traceparent"`
			}
			_ = json.Unmarshal(m.Data, &attr)
			kinds = append(kinds, ev.Type)
			for what, tp := range map[string]string{"NATS header": m.Header.Get("traceparent"), "CloudEvents attribute": attr.TraceParent} {
				if !strings.HasPrefix(tp, "00-"+traceID+"-") || strings.Contains(tp, parentID) {
					t.Errorf("%s event: %s traceparent %q: want the producer's trace with the worker's span", ev.Type, what, tp)
				}
			}
		case <-deadline:
			t.Fatalf("events seen: %v", kinds)
		}
	}
	var request, call []*tracepb.Span
	waitUntil(t, "the spans", 20*time.Second, func() bool {
		request, call = rcv.find(traceID, "reprocess request"), rcv.find(traceID, "graph reprocess")
		return len(request) == 1 && len(call) == 1 && len(rcv.find(traceID, "check assignment state")) > 0
	})
	if got := hex.EncodeToString(request[0].ParentSpanId); got != parentID {
		t.Errorf("the request span's parent is %s, want the producer's %s", got, parentID)
	}
	if string(call[0].ParentSpanId) != string(request[0].SpanId) {
		t.Error("the Graph call's span is not a child of the request's")
	}
	if len(rcv.find(traceID, "wait for the rate limit and any Retry-After")) == 0 {
		t.Error("no span for the rate limit wait")
	}
	var status int64
	for _, a := range call[0].Attributes {
		if a.Key == "http.response.status_code" {
			status = a.GetValue().GetIntValue()
		}
	}
	if status != 202 {
		t.Errorf("graph reprocess span: status %d, want 202", status)
	}
	rcv.mu.Lock()
	services := rcv.services
	rcv.mu.Unlock()
	if len(services) == 0 || services[0] != "reprocessor-test" {
		t.Errorf("service.name %v, want OTEL_SERVICE_NAME", services)
	}
}

package worker

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (DESIGN section 6): a span per request message, continuing the producer's trace
// when the message carries a W3C traceparent header, with child spans for the Graph calls
// and for the waits on the rate limit, a Retry-After and a retry's backoff. Events carry
// the request span's traceparent, as a NATS header and as the CloudEvents extension
// attribute, so that consumers continue the trace. The worker uses the OpenTelemetry API
// only; the SDK is set up by the tracing package (a no-op tracer when tracing is off).

var propagator = propagation.TraceContext{}

// headerCarrier presents a message's headers to the propagator.
type headerCarrier map[string][]string

func (h headerCarrier) Get(key string) string {
	for k, v := range h {
		if len(v) > 0 && equalFold(k, key) {
			return v[0]
		}
	}
	return ""
}
func (h headerCarrier) Set(key, value string) { h[key] = []string{value} }
func (h headerCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// parentFrom returns ctx with the remote span context of a traceparent (header or string)
// as its parent; an absent or malformed one leaves ctx as it is.
func parentFrom(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" || len(traceparent) > 128 {
		return ctx
	}
	return propagator.Extract(ctx, headerCarrier{"traceparent": {traceparent}})
}

// traceParent is the W3C traceparent of ctx's span, "" when it has none.
func traceParent(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	h := headerCarrier{}
	propagator.Inject(ctx, h)
	return h.Get("traceparent")
}

// startRequestSpan starts the span of one delivery of a request message. With tracing off
// it builds nothing: the span is the producer's remote one (or none), which is what a
// no-op tracer's Start returns too, so events still carry the producer's traceparent. Its
// attributes, built for nothing, cost about 1% of the worker's CPU at full speed.
func (w *Worker) startRequestSpan(ctx, work context.Context, d Delivery) (context.Context, context.Context, trace.Span) {
	var parent context.Context = context.Background()
	if tp := headerCarrier(d.Header).Get("traceparent"); tp != "" {
		parent = parentFrom(parent, tp)
	}
	if w.traceOff {
		span := trace.SpanFromContext(parent)
		if !span.SpanContext().IsValid() {
			return ctx, work, span // no trace to carry: the contexts stay as they are
		}
		return trace.ContextWithSpan(ctx, span), trace.ContextWithSpan(work, span), span
	}
	_, span := w.cfg.Tracer.Start(parent, "reprocess request", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", d.Subject),
			attribute.String("messaging.message.id", d.Stream+"-"+strconv.FormatUint(d.StreamSeq, 10)),
			attribute.Int64("messaging.message.delivery_count", int64(d.NumDelivered)),
		))
	return trace.ContextWithSpan(ctx, span), trace.ContextWithSpan(work, span), span
}

// graphSpan starts the client span of one Graph call of operation op.
func (w *Worker) graphSpan(ctx context.Context, op, id string) (context.Context, trace.Span) {
	if w.traceOff {
		return ctx, trace.SpanFromContext(ctx)
	}
	return w.cfg.Tracer.Start(ctx, "graph "+op, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("reprocessor.assignment_id", id)))
}

// endGraphSpan records Graph's answer on a Graph call's span and ends it.
func endGraphSpan(span trace.Span, resp Response, err error) {
	if !span.IsRecording() {
		span.End()
		return
	}
	if resp.Status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", resp.Status))
	}
	if resp.RequestID != "" {
		span.SetAttributes(attribute.String("graph.request_id", resp.RequestID))
	}
	if resp.ClientRequestID != "" {
		span.SetAttributes(attribute.String("graph.client_request_id", resp.ClientRequestID))
	}
	if resp.HasRetryAfter {
		span.SetAttributes(attribute.Float64("http.response.header.retry_after_seconds", resp.RetryAfter.Seconds()))
	}
	switch {
	case err != nil:
		span.SetStatus(codes.Error, err.Error())
	case resp.Status >= 400:
		span.SetStatus(codes.Error, strconv.Itoa(resp.Status))
	}
	span.End()
}

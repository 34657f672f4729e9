// Package tracing sets up OpenTelemetry tracing from the standard OTEL_* variables: off
// unless an OTLP endpoint (or OTEL_TRACES_EXPORTER=otlp) is configured, exported over
// OTLP/HTTP with protobuf, W3C trace context propagation. The worker and the queue use the
// OpenTelemetry API only; this package is the one that knows the SDK.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Settings is what the OTEL_* variables say.
type Settings struct {
	Enabled     bool
	Endpoint    string // the traces URL, e.g. http://collector:4318/v1/traces
	Headers     map[string]string
	ServiceName string
	Attributes  []attribute.KeyValue // OTEL_RESOURCE_ATTRIBUTES
	Sampler     sdktrace.Sampler
	SamplerName string
	BatchDelay  time.Duration
}

// Read reads the OTEL_* variables through getenv (OpenTelemetry's names and defaults):
// OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (otlp or none), OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf),
// OTEL_EXPORTER_OTLP_HEADERS / _TRACES_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
// OTEL_TRACES_SAMPLER (+ _ARG) and OTEL_BSP_SCHEDULE_DELAY.
func Read(getenv func(string) string, defaultService string) (Settings, error) {
	s := Settings{ServiceName: defaultService, BatchDelay: 5 * time.Second, SamplerName: "parentbased_always_on"}
	exporter := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")))
	base, traces := getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	switch {
	case strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true"), exporter == "none":
		return s, nil
	case exporter != "" && exporter != "otlp":
		return s, fmt.Errorf("OTEL_TRACES_EXPORTER %q: only otlp (or none) is supported", exporter)
	case exporter == "" && base == "" && traces == "":
		return s, nil // off unless configured
	}
	s.Enabled = true
	proto := cmp(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf")
	if proto != "http/protobuf" {
		return s, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: only http/protobuf is supported (point it at the collector's port 4318)", proto)
	}
	switch {
	case traces != "":
		s.Endpoint = traces
	case base != "":
		s.Endpoint = strings.TrimRight(base, "/") + "/v1/traces"
	default:
		s.Endpoint = "http://localhost:4318/v1/traces"
	}
	if u, err := url.Parse(s.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return s, fmt.Errorf("OTLP traces endpoint %q: must be an http or https URL", s.Endpoint)
	}
	var err error
	if s.Headers, err = keyValues(cmp(getenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS"), getenv("OTEL_EXPORTER_OTLP_HEADERS"), "")); err != nil {
		return s, fmt.Errorf("OTEL_EXPORTER_OTLP_HEADERS: %w", err)
	}
	attrs, err := keyValues(getenv("OTEL_RESOURCE_ATTRIBUTES"))
	if err != nil {
		return s, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	for k, v := range attrs {
		if k == "service.name" {
			s.ServiceName = v
			continue
		}
		s.Attributes = append(s.Attributes, attribute.String(k, v))
	}
	if n := getenv("OTEL_SERVICE_NAME"); n != "" {
		s.ServiceName = n
	}
	if s.Sampler, s.SamplerName, err = sampler(getenv("OTEL_TRACES_SAMPLER"), getenv("OTEL_TRACES_SAMPLER_ARG")); err != nil {
		return s, err
	}
	if v := getenv("OTEL_BSP_SCHEDULE_DELAY"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 1 {
			return s, fmt.Errorf("OTEL_BSP_SCHEDULE_DELAY %q: milliseconds, at least 1", v)
		}
		s.BatchDelay = time.Duration(ms) * time.Millisecond
	}
	return s, nil
}

func cmp(vs ...string) string {
	for _, v := range vs {
		if v = strings.TrimSpace(v); v != "" {
			return strings.ToLower(v)
		}
	}
	return ""
}

// keyValues parses "k1=v1,k2=v2" (values URL-decoded, as the OpenTelemetry spec says).
func keyValues(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", part)
		}
		dv, err := url.QueryUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		out[k] = dv
	}
	return out, nil
}

func sampler(name, arg string) (sdktrace.Sampler, string, error) {
	ratio := 1.0
	if arg != "" {
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return nil, "", fmt.Errorf("OTEL_TRACES_SAMPLER_ARG %q: a ratio from 0 to 1", arg)
		}
		ratio = r
	}
	switch name = cmp(name, "parentbased_always_on"); name {
	case "always_on":
		return sdktrace.AlwaysSample(), name, nil
	case "always_off":
		return sdktrace.NeverSample(), name, nil
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(ratio), name, nil
	case "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), name, nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), name, nil
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), name, nil
	}
	return nil, "", fmt.Errorf("OTEL_TRACES_SAMPLER %q: valid values are always_on, always_off, traceidratio and their parentbased_ forms", name)
}

// Describe says what tracing does, for the startup log and check-config; no header value
// (they may hold an API key) is shown.
func (s Settings) Describe() string {
	if !s.Enabled {
		return "off (no OTEL_EXPORTER_OTLP_ENDPOINT)"
	}
	keys := make([]string, 0, len(s.Headers))
	for k := range s.Headers {
		keys = append(keys, k)
	}
	return fmt.Sprintf("OTLP http/protobuf to %s as service %q, sampler %s, headers %v", s.Endpoint, s.ServiceName, s.SamplerName, keys)
}

// Start returns the tracer provider s asks for (a no-op one when tracing is off) and a
// function that flushes and stops it.
func Start(s Settings, version, instance string) (trace.TracerProvider, func(context.Context) error, error) {
	if !s.Enabled {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(s.Endpoint), otlptracehttp.WithHeaders(s.Headers))
	if err != nil {
		return nil, nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	attrs := append([]attribute.KeyValue{
		attribute.String("service.name", s.ServiceName),
		attribute.String("service.version", version),
		attribute.String("service.instance.id", instance),
	}, s.Attributes...)
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attrs...))
	if err != nil && !errors.Is(err, resource.ErrSchemaURLConflict) {
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(s.BatchDelay)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(s.Sampler),
	)
	return tp, tp.Shutdown, nil
}

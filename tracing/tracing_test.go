package tracing

import (
	"context"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		env      map[string]string
		enabled  bool
		endpoint string
		service  string
		err      string
	}{
		{env: map[string]string{}, enabled: false},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, enabled: true, endpoint: "http://collector:4318/v1/traces", service: "reprocessor"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/x", "OTEL_SERVICE_NAME": "rp"}, enabled: true, endpoint: "https://c.example/x", service: "rp"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"}, enabled: true, endpoint: "http://localhost:4318/v1/traces", service: "from-attrs"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, enabled: false},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, enabled: false},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, err: "only http/protobuf"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: "only otlp"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318"}, err: "must be an http or https URL"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "sometimes"}, err: "OTEL_TRACES_SAMPLER"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_BSP_SCHEDULE_DELAY": "soon"}, err: "OTEL_BSP_SCHEDULE_DELAY"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, err: "key=value"},
	} {
		s, err := Read(func(k string) string { return tc.env[k] }, "reprocessor")
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err %v, want %q", tc.env, err, tc.err)
			}
			continue
		case err != nil:
			t.Errorf("%v: %v", tc.env, err)
			continue
		}
		if s.Enabled != tc.enabled || (tc.enabled && (s.Endpoint != tc.endpoint || s.ServiceName != tc.service)) {
			t.Errorf("%v: %+v", tc.env, s)
		}
	}
}

// The headers (an API key, often) never show in what is logged.
func TestDescribeHidesHeaderValues(t *testing.T) {
	s, err := Read(func(k string) string {
		return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr3t%21"}[k]
	}, "reprocessor")
	if err != nil {
		t.Fatal(err)
	}
	if s.Headers["api-key"] != "s3cr3t!" {
		t.Errorf("headers %v: values are URL-decoded", s.Headers)
	}
	if d := s.Describe(); strings.Contains(d, "s3cr3t") || !strings.Contains(d, "api-key") {
		t.Errorf("Describe() = %q", d)
	}
	tp, stop, err := Start(s, "v1", "i")
	if err != nil || tp == nil {
		t.Fatal(err)
	}
	_ = stop(context.Background())
}

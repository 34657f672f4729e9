package metrics

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func goVersion() string { return runtime.Version() }

// gather returns the families named name gathered from g.
func gather(t testing.TB, g prometheus.Gatherer, name string) []*dto.MetricFamily {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []*dto.MetricFamily
	for _, f := range families {
		if f.GetName() == name {
			out = append(out, f)
		}
	}
	return out
}

// histogram returns the histogram named name whose labels include labels.
func histogram(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) *dto.Histogram {
	t.Helper()
	for _, f := range gather(t, g, name) {
	series:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			return m.GetHistogram()
		}
	}
	t.Fatalf("no %s series with labels %v", name, labels)
	return nil
}

func histogramSum(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	return histogram(t, g, name, labels).GetSampleSum()
}

func histogramCount(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) uint64 {
	t.Helper()
	return histogram(t, g, name, labels).GetSampleCount()
}

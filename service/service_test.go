package service

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStackStopsInReverse: the parts stop in the reverse of their start, a goroutine's stop
// waits for it to return, and stopping twice does nothing more.
func TestStackStopsInReverse(t *testing.T) {
	t.Parallel()
	var st stack
	var order []string
	st.push(func() { order = append(order, "http") })
	st.push(func() { order = append(order, "nats") })
	returned := false
	early := st.goRun(func(ctx context.Context) {
		<-ctx.Done()
		order = append(order, "poller")
		returned = true
	})
	st.push(func() { order = append(order, "rate control") })
	early() // a part stopped before the rest, as the NATS watch is when the worker returns
	if !returned {
		t.Fatal("the goroutine's stop returned before the goroutine did")
	}
	st.stop()
	st.stop()
	want := []string{"poller", "rate control", "nats", "http"}
	if !slices.Equal(order, want) {
		t.Errorf("stopped %v, want %v", order, want)
	}
}

// TestReadinessWhileStarting: before each part exists its check says so, rather than ok.
func TestReadinessWhileStarting(t *testing.T) {
	t.Parallel()
	var r readiness
	failing := map[string]string{}
	for _, c := range r.checks() {
		if err := c.Func(); err != nil {
			failing[c.Name] = err.Error()
		}
	}
	for _, name := range []string{"nats", "consumer", "graph_token", "worker"} {
		if failing[name] == "" {
			t.Errorf("check %s passes before its part started", name)
		}
	}
	if _, ok := failing["acks"]; ok {
		t.Errorf("acks check fails with no refusal: %s", failing["acks"])
	}
	r.ackRefused(errors.New("permissions violation"))
	for _, c := range r.checks() {
		if c.Name == "acks" {
			if err := c.Func(); err == nil || !strings.Contains(err.Error(), "refused an ack") {
				t.Errorf("acks check after a refusal: %v", err)
			}
		}
	}
}

package graphtest_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/graph/graphtest"
)

// TestLifecycles checks each simulated lifecycle through real GET calls.
func TestLifecycles(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := start(t, graphtest.Options{Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }})
	tok := validToken(t, s)
	const (
		plain     = "10000000-0000-4000-8000-000000000001"
		failing   = "10000000-0000-4000-8000-000000000002"
		stuck     = "10000000-0000-4000-8000-000000000003"
		deleted   = "10000000-0000-4000-8000-000000000004"
		strange   = "10000000-0000-4000-8000-000000000005"
		untouched = "10000000-0000-4000-8000-000000000006"
	)
	s.SetDefaultLifecycle(&graphtest.Lifecycle{Delivering: 200 * time.Millisecond})
	s.SetLifecycle(failing, graphtest.Lifecycle{Delivering: 200 * time.Millisecond, Final: "deliveryFailed"})
	s.SetLifecycle(stuck, graphtest.Lifecycle{Stuck: true})
	s.SetLifecycle(deleted, graphtest.Lifecycle{Delivering: 200 * time.Millisecond, Deleted: true})
	s.SetLifecycle(strange, graphtest.Lifecycle{Delivering: 200 * time.Millisecond, Final: "quantumEntangled"})

	get := func(id, version string) (int, string) {
		key := "state"
		if version == "beta" {
			key = "assignmentState"
		}
		a := call(t, s, http.MethodGet, assignmentPath(version, id), tok)
		state, _ := a.body[key].(string)
		return a.status, state
	}
	for _, id := range []string{plain, failing, stuck, deleted, strange} {
		if code, state := get(id, "v1.0"); code != 200 || state != "delivered" {
			t.Fatalf("%s before reprocess: %d %s", id, code, state)
		}
		if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id), tok); a.status != http.StatusAccepted {
			t.Fatalf("reprocess %s: %d", id, a.status)
		}
		if code, state := get(id, "v1.0"); code != 200 || state != "delivering" {
			t.Fatalf("%s right after reprocess: %d %s", id, code, state)
		}
	}
	if _, state := get(failing, "beta"); state != "Delivering" {
		t.Fatalf("beta state %q, want Delivering", state)
	}
	mu.Lock()
	clock = clock.Add(300 * time.Millisecond) // past Delivering
	mu.Unlock()
	want := map[string]struct {
		code  int
		state string
	}{
		plain: {200, "delivered"}, failing: {200, "deliveryFailed"}, stuck: {200, "delivering"},
		deleted: {404, ""}, strange: {200, "quantumEntangled"}, untouched: {200, "delivered"},
	}
	for id, w := range want {
		if code, state := get(id, "v1.0"); code != w.code || state != w.state {
			t.Errorf("%s: %d %q, want %d %q", id, code, state, w.code, w.state)
		}
	}
	if _, state := get(failing, "beta"); state != "DeliveryFailed" {
		t.Errorf("beta state %q, want DeliveryFailed", state)
	}
}

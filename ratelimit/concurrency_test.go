package ratelimit

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrencyTable: the limit is rate × busy time × 2, within the floor and the most.
func TestConcurrencyTable(t *testing.T) {
	t.Parallel()
	l := NewConcurrency(ConcurrencyConfig{Max: 2048, Rate: func() float64 { return 0 }})
	for _, c := range []struct {
		rate, busy float64
		want       int
	}{
		{200, 0.2, 80},      // 100-300 ms at 200/s: 40 in flight, with headroom
		{20, 0.05, 16},      // a slow rate, a fast Graph: the floor
		{1000, 1, 2000},     // 1 s at 1000/s
		{2000, 1, 2048},     // more than the most: the most
		{20000, 0.0002, 16}, // zero latency: the floor, the rate bounds the calls
		{0, 0.2, 2048},      // no rate known: the most
	} {
		if got := l.target(c.rate, c.busy); got != c.want {
			t.Errorf("target(%g/s, %gs) = %d, want %d", c.rate, c.busy, got, c.want)
		}
	}
}

type concurrencyGauge struct {
	mu   sync.Mutex
	last int
}

func (g *concurrencyGauge) set(n int) { g.mu.Lock(); g.last = n; g.mu.Unlock() }

// TestConcurrencyFollowsObservations: observed busy times move the limit, at most every
// limitEvery, and each change reaches the Observer; without a rate the limit is the most.
func TestConcurrencyFollowsObservations(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var rate atomic.Value
	rate.Store(200.0)
	gauge := &concurrencyGauge{}
	l := NewConcurrency(ConcurrencyConfig{Max: 2048, Rate: func() float64 { return rate.Load().(float64) }, Now: c.now, OnChange: gauge.set})
	if l.Limit() != 400 || gauge.last != 400 {
		t.Fatalf("starts at %d (gauge %d), want 400: 200/s x an assumed second x 2", l.Limit(), gauge.last)
	}
	for range 200 {
		c.add(limitEvery)
		l.Observe(200 * time.Millisecond)
	}
	if got := l.Limit(); got != 80 || gauge.last != 80 {
		t.Fatalf("limit %d (gauge %d) at 200/s and 200 ms, want 80", got, gauge.last)
	}
	rate.Store(1000.0)
	l.Observe(200 * time.Millisecond) // within limitEvery of the last update: not yet
	if got := l.Limit(); got != 80 {
		t.Fatalf("limit recomputed early: %d", got)
	}
	c.add(limitEvery)
	l.Observe(200 * time.Millisecond)
	if got := l.Limit(); got != 400 {
		t.Fatalf("limit %d at 1000/s and 200 ms, want 400", got)
	}
	unlimited := NewConcurrency(ConcurrencyConfig{Max: 64})
	unlimited.Observe(time.Second)
	if unlimited.Limit() != 64 {
		t.Fatalf("without a rate the limit is %d, want 64", unlimited.Limit())
	}
}

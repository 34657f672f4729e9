package ratelimit

import (
	"context"
	"slices"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestNextSlot(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	g := func(rank int) Grid { return Grid{Start: t0, Rank: rank, Of: 3} }
	const interval = 150 * time.Millisecond // slack: 25 ms
	for _, tc := range []struct {
		name string
		g    Grid
		last time.Time
		now  time.Time
		want time.Time
	}{
		{"the leader's slot", g(0), time.Time{}, at(0), at(0)},
		{"rank 1 a third later", g(1), time.Time{}, at(0), at(50)},
		{"rank 2 two thirds later", g(2), time.Time{}, at(10), at(100)},
		{"slots before the start", g(2), time.Time{}, at(-140), at(-50)},
		{"late by less than the slack: still the slot", g(0), time.Time{}, at(20), at(0)},
		{"late by more: the next one", g(0), time.Time{}, at(30), at(150)},
		{"never one slot twice", g(0), at(0), at(0), at(150)},
		{"a new grid does not put two calls close", Grid{Start: at(10), Of: 3}, at(0), at(50), at(160)},
	} {
		if got := nextSlot(tc.g, interval, tc.last, tc.now); !got.Equal(tc.want) {
			t.Errorf("%s: slot at %s, want %s", tc.name, got.Sub(t0), tc.want.Sub(t0))
		}
	}
}

// Three replicas on one grid, their calls made as soon as their slots allow, call in turn,
// a third of an interval apart: the deployment's calls are evenly spaced, as one stream.
func TestGridSpacesTheReplicasCalls(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var rs []*Adaptive
	for range 3 {
		a, err := New(Config{Ceiling: 1000, Initial: 18, Now: c.now}) // 6/s each of three
		if err != nil {
			t.Fatal(err)
		}
		a.SetReplicas(3)
		rs = append(rs, a)
	}
	start, rate, discovered := rs[0].Lead(3, c.now().Add(time.Hour), true)
	for rank, a := range rs[1:] {
		a.Follow(Grid{Start: start, Rank: rank + 1, Of: 3, Until: c.now().Add(time.Hour)}, rate, discovered)
	}
	type call struct {
		at   time.Time
		rank int
	}
	var calls []call
	for range 3000 { // 3 s, 1 ms at a time
		for rank, a := range rs {
			if wait, gridded := a.takeSlot(); !gridded {
				t.Fatal("no grid")
			} else if wait == 0 {
				calls = append(calls, call{c.now(), rank})
			}
		}
		c.add(time.Millisecond)
	}
	want := time.Duration(float64(time.Second) / rate / 3)
	if len(calls) < 3*17 {
		t.Fatalf("%d calls in 3 s at %v/s each, want about 54", len(calls), rate)
	}
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < want-time.Millisecond || gap > want+time.Millisecond {
			t.Fatalf("calls %d and %d %s apart, want %s", i-1, i, gap, want)
		}
		if calls[i].rank != (calls[i-1].rank+1)%3 {
			t.Fatalf("call %d by rank %d after rank %d: not in turn", i, calls[i].rank, calls[i-1].rank)
		}
	}
}

// On a grid the rate grows at the leader's heartbeat, once per heartbeat in use, not per
// second of successes; a follower takes the leader's rate, moving by a factor of two at most.
func TestGridGrowsAtTheLeadersHeartbeat(t *testing.T) {
	t.Parallel()
	lead, c, _ := setup(t, Config{Ceiling: 1000, Initial: 10, Step: 3})
	lead.SetReplicas(3) // 10 -> 3.33
	lead.Adopt(10)      // discovered
	until := c.now().Add(time.Hour)
	lead.Lead(3, until, true)
	succeed(lead, c, 30, 3*time.Second) // three seconds in use, no heartbeat: no growth
	if got := lead.Rate(); !near(got, 10) {
		t.Fatalf("rate %v after successes between heartbeats, want 10", got)
	}
	lead.Lead(3, until, true)
	if got := lead.Rate(); !near(got, 11) {
		t.Fatalf("rate %v after a heartbeat in use, want 10 + 3/3", got)
	}
	// A tick answering a replica that joined, between heartbeats, re-anchors the grid but
	// neither grows the rate nor cuts short the heartbeat's window.
	succeed(lead, c, 17, 1500*time.Millisecond)
	if _, rate, _ := lead.Lead(3, until, false); !near(rate, 11) {
		t.Fatalf("rate %v after a tick between heartbeats, want 11", rate)
	}
	succeed(lead, c, 17, 1500*time.Millisecond)
	lead.Lead(3, until, true)
	if got := lead.Rate(); !near(got, 12) {
		t.Fatalf("rate %v after a heartbeat in use with a tick within, want 11 + 3/3", got)
	}
	c.add(time.Second) // idle
	lead.Lead(3, until, true)
	if got := lead.Rate(); !near(got, 12) {
		t.Fatalf("rate %v after an idle heartbeat, want 12", got)
	}

	follower, fc, _ := setup(t, Config{Ceiling: 1000, Initial: 10})
	follower.SetReplicas(3)
	g := Grid{Start: fc.now(), Rank: 1, Of: 3, Until: fc.now().Add(time.Hour)}
	follower.Follow(g, 4, true)
	if got := follower.Rate(); !near(got, 4) {
		t.Fatalf("follower at %v, want the leader's 4", got)
	}
	follower.Follow(g, 5000, true)
	if got := follower.Rate(); !near(got, 8) {
		t.Fatalf("follower at %v after a tick of 5000/s, want at most twice its 4", got)
	}
	succeed(follower, fc, 80, 10*time.Second)
	if got := follower.Rate(); !near(got, 8) {
		t.Fatalf("follower grew on its own to %v", got)
	}
	// The grid lapses without heartbeats: the follower paces and grows on its own again.
	fc.add(2 * time.Hour)
	succeed(follower, fc, 16, 2*time.Second)
	if got := follower.Rate(); got <= 8 {
		t.Fatalf("follower at %v after its grid lapsed, want growth", got)
	}
	if _, gridded := follower.takeSlot(); gridded {
		t.Fatal("a lapsed grid still paces")
	}
	follower.Follow(g, 8, true)
	follower.SetReplicas(1)
	if _, gridded := follower.takeSlot(); gridded {
		t.Fatal("a replica alone still paces on the grid")
	}
}

// Wait paces on the grid with the real clock, and gives up when its context ends.
func TestWaitOnTheGrid(t *testing.T) {
	t.Parallel()
	a, err := New(Config{Ceiling: 1000, Initial: 2})
	if err != nil {
		t.Fatal(err)
	}
	a.SetReplicas(2)
	start, rate, disc := a.Lead(2, time.Now().Add(time.Hour), true)
	a.Follow(Grid{Start: start, Rank: 1, Of: 2, Until: time.Now().Add(time.Hour)}, rate, disc) // rank 1 of 2 at 1/s
	if err := a.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := a.Wait(ctx); err == nil {
		t.Fatal("a second call within the interval did not wait for its slot")
	}
}

// Above GridMaxRate for the deployment, the replicas share the leader's rate but pace on
// their own: calls a few milliseconds apart cannot keep to slots.
func TestGridSlotsOnlyUpToGridMaxRate(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 40})
	a.SetReplicas(2)                        // 20/s
	a.Lead(2, c.now().Add(time.Hour), true) // 40/s for the deployment: slotted
	if _, slotted := a.takeSlot(); !slotted {
		t.Fatal("not on the grid at 40 calls/s for the deployment")
	}
	a.Adopt(GridMaxRate) // 200/s for the deployment
	if _, slotted := a.takeSlot(); slotted {
		t.Fatal("on the grid's slots at twice GridMaxRate")
	}
	succeed(a, c, 200, 2*time.Second)
	if got := a.Rate(); !near(got, GridMaxRate) {
		t.Fatalf("rate %v: grew on its own while on a grid", got)
	}
}

// Why the grid: three replicas pacing on their own at 0.8 of a Graph admitting 20 calls/s
// with a burst of 2 (the simulated Graph's bucket), their rates a few percent apart, drift
// in and out of step, and each time their calls fall together one is throttled. On the
// grid their calls are evenly spaced, and none is.
func TestGridAvoidsTheCollisionsOfIndependentPacers(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	throttled := func(calls []time.Time) float64 {
		slices.SortFunc(calls, time.Time.Compare)
		graph := rate.NewLimiter(20, 2)
		var n int
		for _, at := range calls {
			if !graph.AllowN(at, 1) {
				n++
			}
		}
		return float64(n) / float64(len(calls))
	}
	const each = 20 * 0.8 / 3
	var alone []time.Time
	for i, skew := range []float64{-0.02, 0.005, 0.03} { // rates a little apart
		interval := time.Duration(float64(time.Second) / (each * (1 + skew)))
		for at := t0.Add(time.Duration(i) * 7 * time.Millisecond); at.Before(t0.Add(time.Minute)); at = at.Add(interval) {
			alone = append(alone, at)
		}
	}
	var gridded []time.Time
	interval := time.Duration(float64(time.Second) / each)
	for rank := range 3 {
		g := Grid{Start: t0, Rank: rank, Of: 3}
		var last time.Time
		for now := t0; now.Before(t0.Add(time.Minute)); now = now.Add(time.Millisecond) {
			if slot := nextSlot(g, interval, last, now); !slot.After(now) {
				gridded, last = append(gridded, slot), slot
			}
		}
	}
	if got := throttled(alone); got < 0.02 {
		t.Errorf("independent pacers: %.1f%% of calls throttled; the model says several percent", 100*got)
	}
	if got := throttled(gridded); got != 0 {
		t.Errorf("on the grid: %.1f%% of calls throttled, want none", 100*got)
	}
	t.Logf("throttled at 0.8·R: %.1f%% of calls paced alone, %.1f%% on the grid", 100*throttled(alone), 100*throttled(gridded))
}

package ratelimit

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func setup(t *testing.T, cfg Config) (*Adaptive, *clock, *[]float64) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var changes []float64
	cfg.Now = c.now
	cfg.OnChange = func(r float64) { changes = append(changes, r) }
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a, c, &changes
}

// succeed reports n successes spread over d.
func succeed(a *Adaptive, c *clock, n int, d time.Duration) {
	start := c.now()
	for i := 1; i <= n; i++ {
		c.mu.Lock()
		c.t = start.Add(d * time.Duration(i) / time.Duration(n))
		c.mu.Unlock()
		a.Succeeded(0)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSlowStartThenAdditive(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 10, Step: 20})
	succeed(a, c, 5, 500*time.Millisecond) // half a second at the full rate: doubles
	if got := a.Rate(); !near(got, 20) {
		t.Fatalf("after a busy half second: %v, want 20", got)
	}
	succeed(a, c, 10, 500*time.Millisecond)
	if got := a.Rate(); !near(got, 40) {
		t.Fatalf("after two: %v, want 40", got)
	}
	succeed(a, c, 20, 500*time.Millisecond)
	a.Throttled(0, 0, false) // at 80/s, while Graph admitted 40/s over the last second
	if got := a.Rate(); !near(got, 34) {
		t.Fatalf("after a 429: %v, want 34 (the 40/s admitted x0.85)", got)
	}
	succeed(a, c, 34, time.Second)
	if got := a.Rate(); !near(got, 54) {
		t.Fatalf("after a busy second past the slow start: %v, want 54 (+20)", got)
	}
}

func TestCutFromTheRateAdmittedOnlyToEndTheSlowStart(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 400, Decrease: 0.5})
	succeed(a, c, 100, 500*time.Millisecond) // slow start: 800/s, 200/s admitted
	a.Throttled(0, time.Second, true)
	if got := a.Rate(); !near(got, 100) {
		t.Fatalf("rate %v, want 100: half the 200/s admitted, not half of 800", got)
	}

	// Past the slow start a cut starts from the rate: the admitted rate also counts time
	// spent waiting out Retry-After, and cutting from it would sink the sawtooth.
	b, c, _ := setup(t, Config{Ceiling: 1000, Initial: 400, Decrease: 0.5})
	b.Adopt(400)
	succeed(b, c, 200, time.Second)
	succeed(b, c, 100, 500*time.Millisecond)
	b.Throttled(0, time.Second, true)
	if got := b.Rate(); !near(got, 210) {
		t.Fatalf("rate %v, want 210: half of 420 (400 plus a busy second's step)", got)
	}
}

func TestIdleSecondsDoNotRaise(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 100})
	succeed(a, c, 10, 3*time.Second) // 10 calls in 3s: the limit of 100/s is not in use
	if got := a.Rate(); got != 100 {
		t.Fatalf("rate %v after idle seconds, want 100", got)
	}
}

func TestConcurrencyDoesNotInflateTheIncrease(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 100, Step: 5})
	a.Throttled(0, 0, false) // end the slow start: 85; a second of successes starts now
	// 1000 successes within one second (many calls in flight) raise the rate once.
	succeed(a, c, 1000, 999*time.Millisecond)
	c.add(time.Millisecond)
	a.Succeeded(0)
	if got := a.Rate(); !near(got, 90) {
		t.Fatalf("rate %v, want 90: one step per second, not per call", got)
	}
}

func TestBurstOfThrottlesCutsOncePerCooldown(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 200, Decrease: 0.5})
	for range 50 { // the answers to calls that were in flight when the limit was hit
		a.Throttled(0, 2*time.Second, true)
		c.add(10 * time.Millisecond)
	}
	if got := a.Rate(); !near(got, 100) {
		t.Fatalf("rate %v after a burst of 429s within 0.5s, want one cut to 100", got)
	}
	c.add(time.Second)
	a.Throttled(0, 0, false)
	if got := a.Rate(); !near(got, 50) {
		t.Fatalf("rate %v after a 429 past the cooldown, want 50", got)
	}
}

func TestFloorAndCeiling(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 30, Initial: 20, Floor: 2})
	for range 5 {
		succeed(a, c, 100, time.Second)
	}
	if got := a.Rate(); got != 30 {
		t.Fatalf("rate %v, want the ceiling 30", got)
	}
	for range 50 {
		c.add(2 * time.Second)
		a.Throttled(0, 0, false)
	}
	if got := a.Rate(); got != 2 {
		t.Fatalf("rate %v, want the floor 2", got)
	}
}

func TestOnCutOnlyForOwnThrottling(t *testing.T) {
	t.Parallel()
	var cuts []float64
	c := &clock{t: time.Unix(0, 0)}
	a, err := New(Config{Ceiling: 100, Initial: 100, Decrease: 0.5, Now: c.now, OnCut: func(r float64) { cuts = append(cuts, r) }})
	if err != nil {
		t.Fatal(err)
	}
	a.PeerThrottled()
	if got := a.Rate(); got != 50 || len(cuts) != 0 {
		t.Fatalf("peer cut: rate %v, OnCut %v; want 50 and no OnCut", got, cuts)
	}
	a.Throttled(0, 0, false) // within the cooldown of the peer's cut: the same episode
	if len(cuts) != 0 {
		t.Fatalf("OnCut %v within the cooldown", cuts)
	}
	c.add(time.Second)
	a.Throttled(0, 0, false)
	if len(cuts) != 1 || cuts[0] != 25 {
		t.Fatalf("OnCut %v, want [25]", cuts)
	}
}

func TestReplicasConserveTheDeploymentRate(t *testing.T) {
	t.Parallel()
	a, c, changes := setup(t, Config{Ceiling: 1000, Initial: 90, Step: 30})
	a.SetReplicas(3) // two others joined: this one keeps a third
	if got := a.Rate(); !near(got, 30) {
		t.Fatalf("rate %v with 3 replicas, want 30", got)
	}
	a.Throttled(0, 0, false) // 25.5, slow start over
	c.add(2 * time.Second)
	a.windowFrom = c.now()
	succeed(a, c, 26, time.Second)
	if got := a.Rate(); !near(got, 35.5) {
		t.Fatalf("rate %v, want 25.5 + 30/3", got)
	}
	a.SetReplicas(2) // one left: its share comes to the others
	if got := a.Rate(); !near(got, 35.5*3/2) {
		t.Fatalf("rate %v with 2 replicas, want %v", got, 35.5*3/2)
	}
	if last := (*changes)[len(*changes)-1]; !near(last, a.Rate()) {
		t.Fatalf("OnChange last %v, rate %v", last, a.Rate())
	}
}

func TestAdoptEndsSlowStart(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 10, Step: 10})
	a.Adopt(60)
	succeed(a, c, 60, time.Second)
	if got := a.Rate(); !near(got, 70) {
		t.Fatalf("rate %v, want 60 + 10 (no doubling after adopting)", got)
	}
}

func TestWaitPaces(t *testing.T) {
	t.Parallel()
	a, err := New(Config{Ceiling: 1000, Initial: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 100 { // the burst, then a canceled wait fails
		if err := a.Wait(ctx); err != nil {
			return
		}
	}
	t.Fatal("Wait never refused with a canceled context past the burst")
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{},
		{Ceiling: math.Inf(1)},
		{Ceiling: 10, Floor: 20},
		{Ceiling: 10, Decrease: 1.5},
		{Ceiling: 10, Step: -1},
		{Ceiling: 10, Cooldown: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v): no error", cfg)
		}
	}
}

// A raise reaches the callers already waiting: with 20 callers queued at 2 calls/s, a
// raise to 1000/s lets them all through at once, instead of the 10 s they would have
// reserved at the old rate.
func TestRaiseReachesCallersAlreadyWaiting(t *testing.T) {
	t.Parallel()
	a, err := New(Config{Ceiling: 1000, Initial: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := a.Wait(ctx); err != nil { // the one token of the burst
		t.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { _ = a.Wait(ctx) })
	}
	time.Sleep(100 * time.Millisecond)
	a.Adopt(1000)
	wg.Wait()
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("20 waiting callers took %s after a raise to 1000/s; at the old 2/s they need 10s", took)
	}
}

// A caller waiting for its turn gives up when its context ends.
func TestWaitingForTurnHonoursContext(t *testing.T) {
	t.Parallel()
	a, err := New(Config{Ceiling: 1000, Initial: 0.5, Floor: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(context.Background()); err != nil { // the burst: the next token is 2 s away
		t.Fatal(err)
	}
	holder, cancelHolder := context.WithCancel(context.Background())
	held := make(chan error, 1)
	go func() { held <- a.Wait(holder) }() // takes the turn and waits for the token
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := a.Wait(ctx); err == nil {
		t.Fatal("Wait returned nil with its context done before its turn")
	}
	cancelHolder()
	if err := <-held; err == nil {
		t.Fatal("the caller holding the turn was not released by its context")
	}
}

// TestSlowGraphCutsOncePerRoundTrip: with calls taking a second, the 429s answering the
// calls in flight at a cut arrive for about a second after it: they do not cut again
// until one and a half latencies have passed.
func TestSlowGraphCutsOncePerRoundTrip(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 1000, Initial: 200, Decrease: 0.5})
	a.Succeeded(time.Second)
	a.Throttled(time.Second, 0, false)
	if got := a.Rate(); !near(got, 100) {
		t.Fatalf("rate %v, want a cut to 100", got)
	}
	c.add(1200 * time.Millisecond) // past the 1 s cooldown, within 1.5 latencies
	a.Throttled(time.Second, 0, false)
	if got := a.Rate(); !near(got, 100) {
		t.Fatalf("rate %v: cut again by an answer to a call made before the first cut", got)
	}
	c.add(400 * time.Millisecond)
	a.Throttled(time.Second, 0, false)
	if got := a.Rate(); !near(got, 50) {
		t.Fatalf("rate %v after 1.6 latencies, want a second cut to 50", got)
	}
}

// At a latency of 1 s the slow start grows once per 1.25 s at most, alone or as the leader
// of a grid (a doubling at exactly one round trip raced the 429s of the one before it and
// overshot to four times the limit), and by half rather than doubling.
func TestSlowStartWaitsForTheAnswersOfItsLastDoubling(t *testing.T) {
	t.Parallel()
	succeedTaking := func(a *Adaptive, c *clock, n int, d, took time.Duration) {
		start := c.now()
		for i := 1; i <= n; i++ {
			c.mu.Lock()
			c.t = start.Add(d * time.Duration(i) / time.Duration(n))
			c.mu.Unlock()
			a.Succeeded(took)
		}
	}
	alone, c, _ := setup(t, Config{Ceiling: 1000, Initial: 10})
	succeedTaking(alone, c, 10, time.Second, time.Second)
	if got := alone.Rate(); !near(got, 10) {
		t.Fatalf("alone, doubled to %v one round trip after the start, want 10 until 1.25 s", got)
	}
	succeedTaking(alone, c, 3, 250*time.Millisecond, time.Second)
	if got := alone.Rate(); !near(got, 15) {
		t.Fatalf("alone, %v after 1.25 s of successes, want 15 (grown by half: a slow Graph)", got)
	}

	lead, lc, _ := setup(t, Config{Ceiling: 1000, Initial: 10})
	lead.SetReplicas(2) // 5 each
	until := lc.now().Add(time.Hour)
	lead.Lead(2, until, true)
	succeedTaking(lead, lc, 5, time.Second, time.Second)
	lead.Lead(2, until, true)
	if got := lead.Rate(); !near(got, 7.5) {
		t.Fatalf("leader at %v after its first heartbeat in use, want 5 grown by half", got)
	}
	succeedTaking(lead, lc, 10, time.Second, time.Second)
	lead.Lead(2, until, true)
	if got := lead.Rate(); !near(got, 7.5) {
		t.Fatalf("leader grew to %v one heartbeat (one round trip) after growing, want 7.5 until 1.25 s", got)
	}
	succeedTaking(lead, lc, 10, time.Second, time.Second)
	lead.Lead(2, until, true)
	if got := lead.Rate(); !near(got, 11.25) {
		t.Fatalf("leader at %v two heartbeats after growing, want 11.25", got)
	}

	// Below 500 ms of latency the slow start doubles.
	fast, fc, _ := setup(t, Config{Ceiling: 1000, Initial: 10})
	succeedTaking(fast, fc, 5, 500*time.Millisecond, 400*time.Millisecond)
	if got := fast.Rate(); !near(got, 20) {
		t.Fatalf("at 400 ms of latency the slow start went to %v, want 10 doubled", got)
	}
}

// Past the slow start, the default growth slows to a fifth within 5% of the rate the last
// cut started from, and is fast again beyond: the rate lingers below the limit it found
// instead of crossing it every few seconds.
func TestGrowthLingersNearTheLastLimit(t *testing.T) {
	t.Parallel()
	a, c, _ := setup(t, Config{Ceiling: 10000, Initial: 1000})
	a.Throttled(0, 0, false) // ends the slow start, no estimate of the limit: 850
	succeed(a, c, 850, time.Second)
	if got := a.Rate(); !near(got, 850*1.05) {
		t.Fatalf("rate %v after a second of success, want +5%%", got)
	}
	c.add(2 * time.Second)
	a.Throttled(0, 0, false) // a cut from 892.5: the limit was there
	if got := a.Rate(); !near(got, 892.5*0.85) {
		t.Fatalf("rate %v after the cut, want 0.85 × 892.5", got)
	}
	var steps []float64
	for range 12 {
		before := a.Rate()
		succeed(a, c, int(before), time.Second)
		steps = append(steps, a.Rate()/before-1)
	}
	// 758.6 grows 5% a second to 878.2 (≥ 0.95 × 892.5), then 1% while within 5% of it
	// (to 941.5, past 1.05 × 892.5), then 5% again.
	want := []float64{0.05, 0.05, 0.05, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.05, 0.05}
	for i := range want {
		if math.Abs(steps[i]-want[i]) > 1e-9 {
			t.Fatalf("growth per second %.4f, want %v", steps, want)
		}
	}
}

package ratelimit

import (
	"log/slog"
	"math"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Concurrency sizes how many requests are worked at once from what Graph sustains. By
// Little's law the calls in flight are the rate times the time each call holds its slot, so
// the limit is the rate limiter's current rate times the observed busy time of a request
// (its Graph calls and the storing of what it produced, not its waits for the rate
// limiter, a Retry-After or a backoff), with headroom, and never below a floor or above the
// configured maximum. Without a rate (REPROCESSOR_RATE=0) nothing bounds the calls but the
// maximum, which is then the limit. It is TCP's bandwidth-delay product, as BBR and
// Netflix's concurrency-limits size a window: a slow Graph gets more calls in flight, a
// fast one fewer, and the rate limiter, not the slot count, sets the pace.
// It satisfies the worker's ConcurrencyLimit and is safe for concurrent use.
type Concurrency struct {
	max, floor int
	rate       func() float64 // the limiter's calls per second; nil: unlimited
	now        func() time.Time
	onChange   func(n int)
	log        *slog.Logger

	cur atomic.Int64

	mu     sync.Mutex
	busy   float64 // smoothed busy seconds per request; 0 until the first
	next   time.Time
	logged int
}

const (
	// limitHeadroom multiplies rate × busy time: the limiter can then be saturated while
	// latency varies, and the slow start (which doubles the rate while it is in use) is
	// never held back by the slots.
	limitHeadroom = 2
	// limitFloor is the least limit: room for a few calls while the busy time is unknown
	// or tiny, which costs nothing when the rate is what bounds the calls.
	limitFloor = 16
	// limitEvery is how often the limit is recomputed from the latest estimate.
	limitEvery = 100 * time.Millisecond
	// initialBusy is the busy time assumed before the first is observed.
	initialBusy = time.Second
	// busySmoothing weighs each new busy time into the estimate.
	busySmoothing = 1.0 / 16
)

// ConcurrencyConfig configures a Concurrency.
type ConcurrencyConfig struct {
	Max      int              // the most requests at once (REPROCESSOR_CONCURRENCY); at least 1
	Rate     func() float64   // the rate limiter's current calls per second; nil: unlimited, the limit is Max
	Now      func() time.Time // default time.Now
	OnChange func(n int)      // optional: every new limit (for a gauge); must be quick
	Logger   *slog.Logger     // optional: a line when the limit moves by more than a fifth
}

// NewConcurrency returns a Concurrency at its starting limit.
func NewConcurrency(cfg ConcurrencyConfig) *Concurrency {
	maxN := max(cfg.Max, 1)
	l := &Concurrency{max: maxN, floor: min(limitFloor, maxN), rate: cfg.Rate, now: cfg.Now, onChange: cfg.OnChange, log: cfg.Logger}
	if l.now == nil {
		l.now = time.Now
	}
	if l.onChange == nil {
		l.onChange = func(int) {}
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	rate := cfg.Rate
	start := maxN
	if rate != nil {
		// Until a request has been timed, assume a call takes a second: slow for Graph,
		// so that a slow Graph is not held to the floor while the first calls are out.
		start = l.target(rate(), initialBusy.Seconds())
	}
	l.cur.Store(int64(start))
	l.logged = start
	l.onChange(start)
	return l
}

// Limit is the current limit.
func (l *Concurrency) Limit() int { return int(l.cur.Load()) }

// Observe takes the busy time of one request that called Graph.
func (l *Concurrency) Observe(busy time.Duration) {
	if l.rate == nil {
		return
	}
	l.mu.Lock()
	s := max(busy, 0).Seconds()
	if l.busy == 0 {
		l.busy = s
	} else {
		l.busy += (s - l.busy) * busySmoothing
	}
	now := l.now()
	if now.Before(l.next) {
		l.mu.Unlock()
		return
	}
	l.next = now.Add(limitEvery)
	n := l.target(l.rate(), l.busy)
	old := int(l.cur.Swap(int64(n)))
	logIt := math.Abs(float64(n-l.logged)) > float64(l.logged)/5
	from, est := l.logged, l.busy
	if logIt {
		l.logged = n
	}
	l.mu.Unlock()
	if n != old {
		l.onChange(n)
	}
	if logIt {
		l.log.Info("concurrency changed", "from", from, "to", n, "rate", math.Round(l.rate()*100)/100, "busy_ms", math.Round(est*1e4)/10)
	}
}

// target is the limit for rate calls per second at busy seconds each.
func (l *Concurrency) target(rate, busy float64) int {
	if !(rate > 0) || math.IsInf(rate, 0) {
		return l.max
	}
	want := math.Ceil(rate * busy * limitHeadroom)
	if want > float64(l.max) {
		return l.max
	}
	return max(l.floor, int(want))
}

// perSlotMemory is what one request in flight may hold at most: a Graph error body (64 KiB),
// its event and dead letter, a goroutine's stack, with room to spare.
const perSlotMemory = 256 << 10

// MemoryBound is the most requests in flight the process's memory limit (GOMEMLIMIT, as
// Kubernetes users set it from the container's limit) leaves room for, with half the limit
// kept for everything else; without a limit, no bound.
func MemoryBound() int {
	limit := debug.SetMemoryLimit(-1)
	if limit <= 0 || limit == math.MaxInt64 {
		return math.MaxInt
	}
	return max(limitFloor, int(limit/2/perSlotMemory))
}

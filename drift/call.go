package drift

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/worker"
)

// Limiter paces calls: a *rate.Limiter or a *ratelimit.Adaptive.
type Limiter interface {
	Wait(ctx context.Context) error
}

// Feedback is what an adaptive limiter learns from the answers (*ratelimit.Adaptive).
type Feedback interface {
	Succeeded(took time.Duration)
	Throttled(took, retryAfter time.Duration, has bool)
}

// Budget is one throttling budget of Graph: entitlement management's, or the directory's
// (resource units per app and tenant). A Retry-After heard on one call pauses every call
// of the budget, as the worker's gate does.
type Budget struct {
	Limiter Limiter // nil: unlimited
	mu      sync.Mutex
	until   time.Time
}

// errNotFound is a 404: the object read does not exist (any more).
var errNotFound = errors.New("not found")

// maxPause caps a Retry-After, as the worker does (DESIGN section 4).
const maxPause = time.Hour

// caller makes the scan's calls: paced by their budget, retried after Retry-After or the
// backoff, counted by operation.
type caller struct {
	entitlement, directory *Budget
	backoff                worker.Backoff
	attempts               int
	calls                  sync.Map // operation -> *atomic.Int64
	throttled              atomic.Int64
	total                  atomic.Int64
}

func (c *caller) count(op string) {
	n, ok := c.calls.Load(op)
	if !ok {
		n, _ = c.calls.LoadOrStore(op, new(atomic.Int64))
	}
	n.(*atomic.Int64).Add(1)
	c.total.Add(1)
}

// Calls returns the calls made, by operation.
func (c *caller) Calls() map[string]int64 {
	out := map[string]int64{}
	c.calls.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

func (c *caller) budget(op string) *Budget {
	for _, d := range graph.DirectoryOps {
		if d == op {
			return c.directory
		}
	}
	return c.entitlement
}

// do calls fn until Graph answers 200 (nil), 404 (errNotFound) or something that is
// not worth retrying (an error naming the answer), as graph.Retry decides. Each attempt
// waits for the operation's budget, is counted, and tells an adaptive limiter what Graph
// answered; a Retry-After pauses the whole budget.
func (c *caller) do(ctx context.Context, op string, fn func() (graph.Result, error)) error {
	b := c.budget(op)
	fb, _ := b.Limiter.(Feedback)
	res, err := graph.Retry(ctx, c.attempts, c.backoff, func() (graph.Result, error) {
		if err := b.wait(ctx); err != nil {
			return graph.Result{}, err
		}
		start := time.Now()
		res, err := fn()
		took := time.Since(start)
		c.count(op)
		if err != nil {
			return res, err
		}
		switch {
		case res.Status == http.StatusOK && fb != nil:
			fb.Succeeded(took)
		case res.Status == http.StatusTooManyRequests:
			c.throttled.Add(1)
			if fb != nil {
				fb.Throttled(took, res.RetryAfter, res.HasRetryAfter)
			}
		}
		if worker.Retryable(res.Status) && res.HasRetryAfter && res.RetryAfter > 0 {
			b.pause(min(res.RetryAfter, maxPause))
		}
		return res, nil
	})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return fmt.Errorf("%s: %w", op, err)
	case res.Status == http.StatusOK:
		return nil
	case res.Status == http.StatusNotFound:
		return errNotFound
	default:
		return fmt.Errorf("%s: graph answered %d%s (request-id %s)", op, res.Status, res.Detail(), res.RequestID)
	}
}

func (b *Budget) pause(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if until := time.Now().Add(d); until.After(b.until) {
		b.until = until
	}
}

func (b *Budget) wait(ctx context.Context) error {
	b.mu.Lock()
	d := time.Until(b.until)
	b.mu.Unlock()
	if d > 0 {
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
	if b.Limiter != nil {
		return b.Limiter.Wait(ctx)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

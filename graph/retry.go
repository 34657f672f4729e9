package graph

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/reprocessor/reprocessor/worker"
)

// Retry makes call until its answer is final, at most attempts times (at least once), and
// returns that answer. The readers of Graph beside the worker (enqueue's listing, the
// drift scan) use it, so that they retry exactly what the worker retries:
//   - a call that had no answer (ErrNetwork, ErrTimeout, or ErrDecode with no status) and
//     a status worker.Retryable says is worth calling again are retried, after the answer's
//     Retry-After or else the backoff;
//   - any other answer is final: it is returned with call's error, nil for an HTTP answer
//     whatever its status, so the caller reads res.Status;
//   - when the attempts run out, the error says how many were made and wraps the last
//     failure; when ctx ends, it is ctx's error.
//
// call does what each attempt needs around the request itself: waiting for its budget,
// counting it, telling a limiter what Graph answered.
func Retry(ctx context.Context, attempts int, backoff worker.Backoff, call func() (Result, error)) (Result, error) {
	for attempt := 1; ; attempt++ {
		res, err := call()
		switch {
		case ctx.Err() != nil:
			return res, ctx.Err()
		case err != nil && !noAnswer(res, err):
			return res, err
		case err == nil && !worker.Retryable(res.Status):
			return res, nil
		case err == nil:
			err = fmt.Errorf("graph answered %d", res.Status)
		}
		if attempt >= attempts {
			return res, fmt.Errorf("after %d attempts: %w", attempt, err)
		}
		delay := backoff.Delay(attempt, worker.Response{Status: res.Status, RetryAfter: res.RetryAfter, HasRetryAfter: res.HasRetryAfter}, rand.Float64)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, ctx.Err()
		case <-t.C:
		}
	}
}

// noAnswer reports whether err says the call had no usable answer from Graph at all.
func noAnswer(res Result, err error) bool {
	return errors.Is(err, ErrNetwork) || errors.Is(err, ErrTimeout) || errors.Is(err, ErrDecode) && res.Status == 0
}

// Detail is ": " and Graph's error body, cut to 1 KiB, or "" when the answer had none: the
// tail of an error message about a final answer.
func (r Result) Detail() string {
	if r.Error == nil {
		return ""
	}
	d := ": " + r.Error.Error()
	if len(d) > worker.MaxFieldBytes {
		d = strings.ToValidUTF8(d[:worker.MaxFieldBytes], "") + worker.TruncatedMarker
	}
	return d
}

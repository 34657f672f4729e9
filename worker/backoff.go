package worker

import (
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Backoff computes retry delays: exponential with full jitter, capped, and overridden by a
// Retry-After when Graph sent one. It is a pure function of its inputs.
type Backoff struct {
	Initial time.Duration // the delay before the first retry, before jitter
	Max     time.Duration // the cap, before jitter
}

// Delay returns the wait before retry number attempt (1 for the first retry). rnd returns a
// value in [0, 1). A positive Retry-After wins over the computed delay and is honoured
// exactly, up to MaxPause. A Retry-After of 0 (or a date in the past) counts as missing,
// never as an immediate retry; and a throttled answer (429, 503, 504) without a positive
// Retry-After waits at least the first delay, so that a Graph answering "retry now" at once
// is not hammered.
func (b Backoff) Delay(attempt int, resp Response, rnd func() float64) time.Duration {
	if resp.HasRetryAfter && resp.RetryAfter > 0 {
		return min(resp.RetryAfter, MaxPause)
	}
	d := time.Duration(rnd() * float64(b.ceiling(attempt)))
	if throttling(resp.Status) {
		d = max(d, b.Initial)
	}
	return d
}

// throttling reports whether status asks the caller to slow down.
func throttling(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

// ceiling is the exponential delay for attempt without jitter, from backoff/v4's
// ExponentialBackOff with its own randomisation turned off (full jitter is applied above).
func (b Backoff) ceiling(attempt int) time.Duration {
	exp := &backoff.ExponentialBackOff{
		InitialInterval:     b.Initial,
		RandomizationFactor: 0,
		Multiplier:          2,
		MaxInterval:         b.Max,
		MaxElapsedTime:      0,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	exp.Reset()
	d := exp.NextBackOff()
	for i := 1; i < attempt && d < b.Max; i++ {
		d = exp.NextBackOff()
	}
	return min(d, b.Max)
}

package worker

import (
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
// value in [0, 1). A Retry-After wins over the computed delay and is honoured exactly.
func (b Backoff) Delay(attempt int, resp Response, rnd func() float64) time.Duration {
	if resp.HasRetryAfter {
		return resp.RetryAfter
	}
	return time.Duration(rnd() * float64(b.ceiling(attempt)))
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

package worker

import (
	"fmt"
	"testing"
	"time"
)

// TestClassify covers every row of the outcomes table (DESIGN section 4).
func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		err    error
		want   verdict
		code   string
		reason string
	}{
		{202, nil, verdictAccepted, "", ""},
		{200, nil, verdictAccepted, "", ""},
		{400, nil, verdictPermanent, CodeBadRequest, ""},
		{404, nil, verdictPermanent, CodeNotFound, ""},
		{409, nil, verdictPermanent, CodeConflict, ""},
		{410, nil, verdictPermanent, CodeAPIError, ""},
		{422, nil, verdictPermanent, CodeAPIError, ""},
		{301, nil, verdictPermanent, CodeAPIError, ""},
		{401, nil, verdictForbidden, CodeUnauthorized, ""},
		{403, nil, verdictForbidden, CodeForbidden, ""},
		{429, nil, verdictThrottled, "", RetryThrottled},
		{503, nil, verdictThrottled, "", RetryThrottled},
		{504, nil, verdictThrottled, "", RetryThrottled},
		{500, nil, verdictRetry, "", RetryServerError},
		{502, nil, verdictRetry, "", RetryServerError},
		{408, nil, verdictRetry, "", RetryTimeout},
		{0, fmt.Errorf("dial: %w", ErrNetwork), verdictRetry, "", RetryNetwork},
		{0, fmt.Errorf("call: %w", ErrTimeout), verdictRetry, "", RetryTimeout},
		{0, fmt.Errorf("token: %w", ErrCredential), verdictCredential, "", RetryUnauthorized},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %v", tt.status, tt.err), func(t *testing.T) {
			got := classify(Response{Status: tt.status, ErrorCode: "UnknownError"}, tt.err)
			if got.verdict != tt.want || got.code != tt.code || got.reason != tt.reason {
				t.Fatalf("classify = %+v, want verdict %d code %q reason %q", got, tt.want, tt.code, tt.reason)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	t.Parallel()
	b := Backoff{Initial: time.Second, Max: 10 * time.Second}
	one := func() float64 { return 0.999999999 }
	half := func() float64 { return 0.5 }
	tests := []struct {
		attempt int
		resp    Response
		rnd     func() float64
		want    time.Duration
	}{
		{1, Response{}, one, time.Second},
		{2, Response{}, one, 2 * time.Second},
		{3, Response{}, one, 4 * time.Second},
		{4, Response{}, one, 8 * time.Second},
		{5, Response{}, one, 10 * time.Second},
		{50, Response{}, one, 10 * time.Second},
		{3, Response{}, half, 2 * time.Second},
		{3, Response{}, func() float64 { return 0 }, 0},
		{1, Response{HasRetryAfter: true, RetryAfter: 1500 * time.Millisecond}, one, 1500 * time.Millisecond},
		{9, Response{HasRetryAfter: true, RetryAfter: 2128 * time.Millisecond}, half, 2128 * time.Millisecond},
		// Retry-After 0 (or a past date) counts as missing: the computed delay applies.
		{1, Response{HasRetryAfter: true, RetryAfter: 0}, one, time.Second},
		{3, Response{HasRetryAfter: true, RetryAfter: 0}, half, 2 * time.Second},
		// A throttled answer without a positive Retry-After waits at least the first delay.
		{1, Response{Status: 429, HasRetryAfter: true, RetryAfter: 0}, func() float64 { return 0 }, time.Second},
		{1, Response{Status: 503}, func() float64 { return 0 }, time.Second},
		{1, Response{Status: 500}, func() float64 { return 0 }, 0},
		// A positive Retry-After shorter than the first delay is honoured exactly.
		{1, Response{Status: 429, HasRetryAfter: true, RetryAfter: 300 * time.Millisecond}, one, 300 * time.Millisecond},
		// Every wait is capped at an hour.
		{1, Response{Status: 429, HasRetryAfter: true, RetryAfter: 10 * 365 * 24 * time.Hour}, one, MaxPause},
	}
	for _, tt := range tests {
		got := b.Delay(tt.attempt, tt.resp, tt.rnd)
		if got.Round(time.Millisecond) != tt.want {
			t.Errorf("Delay(%d, %+v) = %s, want %s", tt.attempt, tt.resp, got, tt.want)
		}
	}
}

func TestCoalescer(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	c := newCoalescer(time.Minute)
	const a = "0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12"
	if got := c.claim(a, msgKey{seq: 1}, now); got != claimProceed {
		t.Fatalf("first claim = %d", got)
	}
	if got := c.claim(a, msgKey{seq: 2}, now); got != claimCoalesce {
		t.Fatalf("duplicate in flight = %d", got)
	}
	if got := c.claim(a, msgKey{seq: 1}, now); got != claimSameInFlight {
		t.Fatalf("same message twice = %d", got)
	}
	c.release(a, msgKey{seq: 1}, true, now)
	if got := c.claim(a, msgKey{seq: 3}, now.Add(30*time.Second)); got != claimCoalesce {
		t.Fatalf("duplicate just accepted = %d", got)
	}
	if got := c.claim(a, msgKey{seq: 1}, now.Add(30*time.Second)); got != claimSameAccepted {
		t.Fatalf("redelivery of the accepted message = %d", got)
	}
	if got := c.claim(a, msgKey{seq: 4}, now.Add(2*time.Minute)); got != claimProceed {
		t.Fatalf("after the window = %d", got)
	}
	c.release(a, msgKey{seq: 4}, false, now.Add(2*time.Minute))
	if got := c.claim(a, msgKey{seq: 5}, now.Add(2*time.Minute)); got != claimProceed {
		t.Fatalf("after a failure = %d", got)
	}
}

// TestRetryable holds the exported question to the same table as classify.
func TestRetryable(t *testing.T) {
	t.Parallel()
	for s, want := range map[int]bool{
		200: false, 202: false, 302: false, 400: false, 401: false, 403: false, 404: false, 409: false,
		408: true, 429: true, 500: true, 502: true, 503: true, 504: true,
	} {
		if got := Retryable(s); got != want {
			t.Errorf("Retryable(%d) = %v, want %v", s, got, want)
		}
	}
}

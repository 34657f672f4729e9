package graph

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/worker"
)

type answer struct {
	res Result
	err error
}

func TestRetry(t *testing.T) {
	t.Parallel()
	ok := answer{res: Result{Status: 200}}
	tests := []struct {
		name      string
		answers   []answer
		calls     int
		status    int
		errIs     error  // the error returned wraps it
		errSubstr string // and says this
	}{
		{"a 200 is final", []answer{ok}, 1, 200, nil, ""},
		{"a 404 is final, with no error", []answer{{res: Result{Status: 404}}}, 1, 404, nil, ""},
		{"a 400 is final", []answer{{res: Result{Status: 400}}, ok}, 1, 400, nil, ""},
		{"a 503 is retried", []answer{{res: Result{Status: 503}}, ok}, 2, 200, nil, ""},
		{"a 429 is retried", []answer{{res: Result{Status: 429}}, {res: Result{Status: 429}}, ok}, 3, 200, nil, ""},
		{"a transport error is retried", []answer{{err: fmt.Errorf("%w: reset", ErrNetwork)}, ok}, 2, 200, nil, ""},
		{"a timeout is retried", []answer{{err: fmt.Errorf("%w: slow", ErrTimeout)}, ok}, 2, 200, nil, ""},
		{"an unreadable answer is retried", []answer{{err: fmt.Errorf("%w: cut", ErrDecode)}, ok}, 2, 200, nil, ""},
		{"a 200 that cannot be decoded is final", []answer{{res: Result{Status: 200}, err: ErrDecode}, ok}, 1, 200, ErrDecode, ""},
		{"no token is final", []answer{{err: ErrToken}, ok}, 1, 0, ErrToken, ""},
		{"the attempts run out", []answer{{res: Result{Status: 503}}, {res: Result{Status: 502}}, {res: Result{Status: 504}}, ok}, 3, 504, nil, "after 3 attempts: graph answered 504"},
		{"the last failure is wrapped", []answer{{err: ErrNetwork}, {err: ErrNetwork}, {err: ErrNetwork}, ok}, 3, 0, ErrNetwork, "after 3 attempts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := 0
			res, err := Retry(context.Background(), 3, worker.Backoff{Initial: time.Millisecond, Max: time.Millisecond}, func() (Result, error) {
				a := tt.answers[n]
				n++
				return a.res, a.err
			})
			if n != tt.calls || res.Status != tt.status {
				t.Errorf("%d calls, status %d; want %d calls, status %d", n, res.Status, tt.calls, tt.status)
			}
			switch {
			case tt.errIs == nil && tt.errSubstr == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tt.errIs != nil && !errors.Is(err, tt.errIs):
				t.Errorf("error %v, want one wrapping %v", err, tt.errIs)
			case tt.errSubstr != "" && (err == nil || !strings.Contains(err.Error(), tt.errSubstr)):
				t.Errorf("error %v, want one saying %q", err, tt.errSubstr)
			}
		})
	}
}

func TestRetryWaitsForRetryAfterAndHonoursTheContext(t *testing.T) {
	t.Parallel()
	b := worker.Backoff{Initial: time.Hour, Max: time.Hour}
	n := 0
	start := time.Now()
	res, err := Retry(context.Background(), 5, b, func() (Result, error) {
		n++
		if n == 1 {
			return Result{Status: 429, RetryAfter: 50 * time.Millisecond, HasRetryAfter: true}, nil
		}
		return Result{Status: 200}, nil
	})
	if took := time.Since(start); err != nil || res.Status != 200 || took < 50*time.Millisecond {
		t.Fatalf("status %d, error %v after %v: want 200 after the Retry-After of 50ms", res.Status, err, took)
	}

	// Without Retry-After the backoff (an hour here) applies; the context ends the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = Retry(ctx, 5, b, func() (Result, error) { return Result{Status: 503}, nil })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Fatalf("error %v after %v: want the context's, at once", err, time.Since(start))
	}
}

func TestResultDetail(t *testing.T) {
	t.Parallel()
	if d := (Result{}).Detail(); d != "" {
		t.Errorf("no body: %q", d)
	}
	if d := (Result{Error: &APIError{Code: "BadRequest", Message: "no"}}).Detail(); d != ": graph error BadRequest: no" {
		t.Errorf("body: %q", d)
	}
	long := Result{Error: &APIError{Message: strings.Repeat("é", 2000)}}.Detail()
	if !strings.HasSuffix(long, worker.TruncatedMarker) || len(long) > worker.MaxFieldBytes+len(worker.TruncatedMarker) || !strings.HasPrefix(long, ": graph error: é") {
		t.Errorf("long body cut to %d bytes: %q…", len(long), long[:40])
	}
}

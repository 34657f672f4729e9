package worker

import (
	"errors"
	"fmt"
	"net/http"
)

// verdict is what one Graph answer means for the request, the closed set every answer is
// classified into. decide (decide.go) maps each verdict to what is done with a request and
// with a state check, in one table.
type verdict int

const (
	verdictAccepted   verdict = iota // 2xx: done
	verdictPermanent                 // 400, 404, 409, other 4xx: failed, dead-lettered
	verdictForbidden                 // 403, or 401 after the client refreshed its token: failed, counts toward the circuit
	verdictThrottled                 // 429, 503, 504: Retry-After for the whole process, retry
	verdictRetry                     // other 5xx, 408, network error, timeout: backoff, retry
	verdictCredential                // no token: hold the message until one is obtained
)

// classification is a classified Graph answer.
type classification struct {
	verdict verdict
	code    string // the error code for failed events (permanent and forbidden verdicts)
	reason  string // the retry reason (throttled and retry verdicts)
	detail  string
}

// classify sorts one Graph answer into a verdict.
func classify(resp Response, err error) classification {
	if err != nil {
		switch {
		case errors.Is(err, ErrCredential):
			return classification{verdict: verdictCredential, reason: RetryUnauthorized, detail: err.Error()}
		case errors.Is(err, ErrTimeout):
			return classification{verdict: verdictRetry, reason: RetryTimeout, detail: err.Error()}
		default:
			return classification{verdict: verdictRetry, reason: RetryNetwork, detail: err.Error()}
		}
	}
	s := resp.Status
	if s >= 200 && s < 300 {
		return classification{verdict: verdictAccepted}
	}
	detail := graphDetail(resp) // only for errors: it costs a Sprintf per call
	switch {
	case throttling(s):
		return classification{verdict: verdictThrottled, reason: RetryThrottled, detail: detail}
	case s == http.StatusRequestTimeout:
		return classification{verdict: verdictRetry, reason: RetryTimeout, detail: detail}
	case s >= 300 && s < 400:
		// A redirect is never followed: the bearer token goes to the configured Graph host
		// and nowhere else, and no 202 was given.
		return classification{verdict: verdictPermanent, code: CodeAPIError, detail: detail + " (redirects are not followed)"}
	case s >= 500:
		return classification{verdict: verdictRetry, reason: RetryServerError, detail: detail}
	case s == http.StatusUnauthorized:
		return classification{verdict: verdictForbidden, code: CodeUnauthorized, detail: detail}
	case s == http.StatusForbidden:
		return classification{verdict: verdictForbidden, code: CodeForbidden, detail: detail}
	case s == http.StatusBadRequest:
		return classification{verdict: verdictPermanent, code: CodeBadRequest, detail: detail}
	case s == http.StatusNotFound:
		return classification{verdict: verdictPermanent, code: CodeNotFound, detail: detail}
	case s == http.StatusConflict:
		return classification{verdict: verdictPermanent, code: CodeConflict, detail: detail}
	default:
		return classification{verdict: verdictPermanent, code: CodeAPIError, detail: detail}
	}
}

// Retryable reports whether a Graph answer with HTTP status s is worth calling again, as
// the worker decides for its own calls: throttling (429, 503, 504, after their Retry-After),
// 408 and the other 5xx. Other readers of Graph (enqueue's listing) use it so that they
// retry exactly what the worker retries.
func Retryable(s int) bool {
	v := classify(Response{Status: s}, nil).verdict
	return v == verdictThrottled || v == verdictRetry
}

// graphDetail describes a Graph error answer for events and dead letters, at most
// MaxFieldBytes long.
func graphDetail(resp Response) string {
	return cutField(describe(resp), MaxFieldBytes)
}

func describe(resp Response) string {
	text := fmt.Sprintf("Graph answered %d %s", resp.Status, http.StatusText(resp.Status))
	if resp.ErrorCode != "" {
		text += ": " + resp.ErrorCode
	}
	if resp.ErrorMessage != "" {
		text += ": " + resp.ErrorMessage
	}
	return text
}

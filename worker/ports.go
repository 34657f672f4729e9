package worker

import (
	"context"
	"errors"
	"time"
)

// This file declares what the worker consumes. Adapters live in queue/, graph/ and
// metrics/; service wires them in.

// Delivery describes one delivery of a request message.
type Delivery struct {
	Subject      string
	Data         []byte
	Header       map[string][]string
	Stream       string
	StreamSeq    uint64
	NumDelivered uint64    // 1 on the first delivery
	Timestamp    time.Time // when the stream stored the message
}

// Message is one delivered request that the worker settles exactly once.
type Message interface {
	Delivery() Delivery
	// Ack acknowledges the message; it is not redelivered.
	Ack() error
	// NakWithDelay hands the message back for redelivery after delay.
	NakWithDelay(delay time.Duration) error
	// InProgress resets the message's ack deadline.
	InProgress() error
}

// Source delivers request messages.
type Source interface {
	// Fetch asks for up to max messages and calls handle for each one as it arrives.
	// It returns when the batch is complete or has expired, or when ctx is done.
	Fetch(ctx context.Context, max int, handle func(Message)) error
}

// EventPublisher publishes CloudEvents and waits for the stream's acknowledgement.
type EventPublisher interface {
	// PublishEvent publishes e with Nats-Msg-Id set to its id. When the stream already
	// held an event with that id (within its dedupe window), it stored nothing new and
	// Stored says so, with the stored event when it could be read back. An error wrapping
	// ErrUnstorable means no retry can help (the event does not fit the server's limits
	// even cut down).
	PublishEvent(ctx context.Context, e *Event) (Stored, error)
}

// Stored says what a stream holds under the id of a message just published.
type Stored struct {
	// Duplicate: a message with the same id was already stored; this one was dropped.
	Duplicate bool
	// Event is the event stored earlier, when Duplicate and it could be read back; nil
	// otherwise.
	Event *Event
}

// ErrUnstorable is wrapped by a publisher's error that no retry can mend: the message does
// not fit the server's limits even after what can be cut was cut.
var ErrUnstorable = errors.New("message cannot be stored")

// DeadLetterer copies a message, byte for byte with its headers, to the dead-letter stream,
// adding the Reprocess-* headers, and waits for the stream's acknowledgement. What does not
// fit the server's limits is cut (and the copy says so); an error wrapping ErrUnstorable
// means even that did not fit. Stored.Duplicate says the stream already held the copy (the
// delivery was dead-lettered before); Stored.Event is always nil.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, d Delivery, dl DeadLetter) (Stored, error)
}

// DeadLetter says why a message was dead-lettered.
type DeadLetter struct {
	Code     string // the error code, e.g. "not_found"
	Detail   string // a human-readable detail
	Attempts int    // Graph calls made for the message
}

// Graph calls Microsoft Graph.
type Graph interface {
	// Reprocess calls the reprocess action for a validated, lower-case assignment id.
	// A non-nil error means no HTTP answer was had: it wraps ErrCredential, ErrTimeout or
	// ErrNetwork. Otherwise Response holds Graph's answer, whatever its status.
	Reprocess(ctx context.Context, assignmentID string) (Response, error)
}

// Response is Graph's answer to one call.
type Response struct {
	Status          int
	RequestID       string // Graph's request-id header
	ClientRequestID string // the client-request-id sent
	RetryAfter      time.Duration
	HasRetryAfter   bool
	ErrorCode       string // Graph's error.code, if any
	ErrorMessage    string // Graph's error.message, if any
	AuthRetries     int    // times a 401 made the client refresh its token and retry
}

// Errors a Graph adapter wraps when no HTTP answer was had.
var (
	// ErrCredential: no token could be obtained (wrong secret, authority down). The worker
	// holds the message, stops fetching and reports not ready until a token is obtained.
	ErrCredential = errors.New("graph credential unavailable")
	// ErrTimeout: the call did not complete within its timeout.
	ErrTimeout = errors.New("graph call timed out")
	// ErrNetwork: the call failed in transport.
	ErrNetwork = errors.New("graph call failed in transport")
)

// Limiter paces Graph calls process-wide (golang.org/x/time/rate.Limiter satisfies it).
type Limiter interface {
	Wait(ctx context.Context) error
}

// RateFeedback is told every Graph answer, for a Limiter that adapts its rate to them (an
// additive-increase, multiplicative-decrease limiter).
type RateFeedback interface {
	// Succeeded reports an answer that was not throttling (any status but 429, 503, 504),
	// which took as long as took.
	Succeeded(took time.Duration)
	// Throttled reports a 429, 503 or 504 that took as long as took, with its Retry-After if
	// it had one.
	Throttled(took, retryAfter time.Duration, hasRetryAfter bool)
}

// MaxPause caps every wait the worker obeys: a Retry-After, or a pause heard from another
// replica of the deployment, asking for longer is taken as asking for this long.
const MaxPause = time.Hour

// Observer receives, for metrics, what the worker decides and passes through no port: what
// goes through a port (messages received, events and dead letters stored, rate-limit waits)
// is observed by decorating the adapter instead (metrics.Metrics.DecorateSource and the
// like). Implementations must be safe for concurrent use and cheap.
type Observer interface {
	Completed(outcome string, d time.Duration) // a request settled, d after its work began
	Retry(reason string)                       // a Graph call is retried
	StateChanged(state string)                 // an observed state change, to the new state
	InFlight(delta int)                        // requests being worked
	Throttled(on bool)                         // the process waits out a Retry-After
	ThrottleWait(d time.Duration)              // time spent waiting one out
	CircuitOpen(open bool)                     // the 403 circuit opened or closed
}

// ConcurrencyLimit sizes how many requests are worked at once, at most Config.Concurrency
// (ratelimit.Concurrency sizes it from the rate and Graph's latency).
type ConcurrencyLimit interface {
	// Limit is how many requests may be worked at once now.
	Limit() int
	// Observe takes the busy time of a request that called Graph: its calls and the storing
	// of what it produced, not its waits for the rate, a Retry-After, the circuit or a backoff.
	Observe(busy time.Duration)
}

// Package queue adapts NATS JetStream to the worker: it creates or binds the request,
// event and dead-letter streams and the durable pull consumer, fetches request messages,
// publishes events and dead letters, connects to NATS with the NATS CLI's variables, runs
// an embedded JetStream server for single-machine use, and shares throttling and the
// discovered Graph rate between the replicas of a deployment (Control).
package queue

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults applied by Config's zero values.
const (
	DefaultPrefix         = "entitlement.reprocess"
	DefaultRequestsStream = "REPROCESS_REQUESTS"
	DefaultEventsStream   = "REPROCESS_EVENTS"
	DefaultDLQStream      = "REPROCESS_DLQ"
	DefaultDurable        = "reprocessor"
	DefaultVerifyStream   = "REPROCESS_VERIFY"
	DefaultVerifyDurable  = "reprocessor-verify"
	// DefaultVerifyMaxAckPending is high because every assignment being tracked waits
	// between checks as a message handed back with a delay, which counts as ack pending.
	DefaultVerifyMaxAckPending = 100_000
	DefaultEventsMaxAge        = 7 * 24 * time.Hour
	DefaultDLQMaxAge           = 30 * 24 * time.Hour
	DefaultReplicas            = 1
	DefaultAckWait             = 30 * time.Second
	DefaultMaxAckPending       = 1000
	DefaultFetchMaxWait        = 5 * time.Second
	DefaultDuplicateWindow     = 10 * time.Minute
)

// Config names the streams and the consumer and sets their limits. The zero value of each
// field means its default.
type Config struct {
	// Prefix is the subject prefix: requests go to "<prefix>.requests", events to
	// "<prefix>.events.<kind>", dead letters to "<prefix>.dlq".
	Prefix         string
	RequestsStream string
	EventsStream   string
	DLQStream      string
	// Durable is the name of the durable pull consumer on the requests stream.
	Durable string
	// VerifyStream is the work queue of state checks ("<prefix>.verify"), VerifyDurable
	// its durable pull consumer, VerifyMaxAckPending that consumer's limit.
	VerifyStream        string
	VerifyDurable       string
	VerifyMaxAckPending int
	EventsMaxAge        time.Duration
	DLQMaxAge           time.Duration
	// Replicas is the replica count of the three streams (1 on a single server).
	Replicas int
	// AckWait is how long a delivered message may stay unacknowledged (without
	// InProgress) before the server delivers it again.
	AckWait time.Duration
	// MaxAckPending bounds the messages delivered and not yet acknowledged. Messages held
	// with NakWithDelay count against it until they are delivered again, so it must be well
	// above the worker's concurrency (several times it), or delayed retries stall delivery.
	// Default 1000.
	MaxAckPending int
	// FetchMaxWait is how long one pull waits for messages.
	FetchMaxWait time.Duration
	// NoCreate makes Setup only bind to existing streams and consumer, for accounts that
	// may not manage JetStream assets.
	NoCreate bool
	// DuplicateWindow is the dedupe window of the events and dead-letter streams: a
	// publish repeating a Nats-Msg-Id seen within it is dropped.
	DuplicateWindow time.Duration
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	c.Prefix = cmp.Or(c.Prefix, DefaultPrefix)
	c.RequestsStream = cmp.Or(c.RequestsStream, DefaultRequestsStream)
	c.EventsStream = cmp.Or(c.EventsStream, DefaultEventsStream)
	c.DLQStream = cmp.Or(c.DLQStream, DefaultDLQStream)
	c.Durable = cmp.Or(c.Durable, DefaultDurable)
	c.VerifyStream = cmp.Or(c.VerifyStream, DefaultVerifyStream)
	c.VerifyDurable = cmp.Or(c.VerifyDurable, DefaultVerifyDurable)
	c.VerifyMaxAckPending = cmp.Or(c.VerifyMaxAckPending, DefaultVerifyMaxAckPending)
	c.EventsMaxAge = cmp.Or(c.EventsMaxAge, DefaultEventsMaxAge)
	c.DLQMaxAge = cmp.Or(c.DLQMaxAge, DefaultDLQMaxAge)
	c.Replicas = cmp.Or(c.Replicas, DefaultReplicas)
	c.AckWait = cmp.Or(c.AckWait, DefaultAckWait)
	c.MaxAckPending = cmp.Or(c.MaxAckPending, DefaultMaxAckPending)
	c.FetchMaxWait = cmp.Or(c.FetchMaxWait, DefaultFetchMaxWait)
	if c.DuplicateWindow == 0 {
		// Short-lived streams get a window that fits inside them.
		c.DuplicateWindow = min(DefaultDuplicateWindow, c.EventsMaxAge, c.DLQMaxAge)
	}
	return c
}

// ErrInvalidConfig is wrapped by every error Setup returns for a bad Config: retrying
// cannot help.
var ErrInvalidConfig = errors.New("invalid queue config")

// validate reports the first invalid field of a defaulted config, by name, wrapping
// ErrInvalidConfig.
func (c Config) validate() error {
	if field, err := c.check(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidConfig, field, err)
	}
	return nil
}

// check returns the first invalid field of a defaulted config and what is wrong with it.
func (c Config) check() (field string, err error) {
	if err := validSubject(c.Prefix); err != nil {
		return "Prefix", fmt.Errorf("%q: %w", c.Prefix, err)
	}
	if err := CheckReservedPrefix(c.Prefix); err != nil {
		return "Prefix", fmt.Errorf("%q: %w", c.Prefix, err)
	}
	for _, n := range []struct{ field, value string }{
		{"RequestsStream", c.RequestsStream},
		{"EventsStream", c.EventsStream},
		{"DLQStream", c.DLQStream},
		{"Durable", c.Durable},
		{"VerifyStream", c.VerifyStream},
		{"VerifyDurable", c.VerifyDurable},
	} {
		if err := validName(n.value); err != nil {
			return n.field, fmt.Errorf("%q: %w", n.value, err)
		}
	}
	names := map[string]bool{c.RequestsStream: true, c.EventsStream: true, c.DLQStream: true, c.VerifyStream: true}
	if len(names) != 4 {
		return "RequestsStream, EventsStream, DLQStream, VerifyStream", errors.New("the four streams must differ")
	}
	if c.Durable == c.VerifyDurable {
		return "VerifyDurable", errors.New("must differ from Durable")
	}
	switch {
	case c.EventsMaxAge < 0:
		return "EventsMaxAge", errors.New("must not be negative")
	case c.DLQMaxAge < 0:
		return "DLQMaxAge", errors.New("must not be negative")
	case c.Replicas < 1 || c.Replicas > 5:
		return "Replicas", fmt.Errorf("%d: must be 1 to 5", c.Replicas)
	case c.AckWait < time.Second:
		return "AckWait", fmt.Errorf("%s: must be at least 1s", c.AckWait)
	case c.VerifyMaxAckPending < 1:
		return "VerifyMaxAckPending", fmt.Errorf("%d: must be positive", c.VerifyMaxAckPending)
	case c.MaxAckPending < 1:
		return "MaxAckPending", fmt.Errorf("%d: must be positive", c.MaxAckPending)
	case c.FetchMaxWait < 100*time.Millisecond:
		return "FetchMaxWait", fmt.Errorf("%s: must be at least 100ms", c.FetchMaxWait)
	case c.DuplicateWindow < 0:
		return "DuplicateWindow", errors.New("must not be negative")
	case c.DuplicateWindow > c.EventsMaxAge:
		return "DuplicateWindow", fmt.Errorf("%s exceeds EventsMaxAge %s", c.DuplicateWindow, c.EventsMaxAge)
	case c.DuplicateWindow > c.DLQMaxAge:
		return "DuplicateWindow", fmt.Errorf("%s exceeds DLQMaxAge %s", c.DuplicateWindow, c.DLQMaxAge)
	}
	return "", nil
}

// Subjects returns the requests subject, the events subject prefix (an event of kind k
// goes to eventsPrefix + "." + k) and the dead-letter subject, with defaults applied.
func (c Config) Subjects() (requests, eventsPrefix, dlq string) {
	p := cmp.Or(c.Prefix, DefaultPrefix)
	return p + ".requests", p + ".events", p + ".dlq"
}

// CheckReservedPrefix refuses a subject prefix inside a namespace the server or the clients
// own: "$..." (the JetStream API "$JS.API", "$SYS", "$KV", ...) and "_INBOX" (replies),
// where the worker's subjects would collide with the system's.
func CheckReservedPrefix(prefix string) error {
	first, _, _ := strings.Cut(prefix, ".")
	switch {
	case strings.HasPrefix(first, "$"):
		return fmt.Errorf("must not start with $ (a namespace of the NATS server: $JS, $SYS, $KV, ...)")
	case strings.EqualFold(first, "_INBOX"):
		return fmt.Errorf("must not start with _INBOX (the namespace of replies)")
	}
	return nil
}

// validSubject reports whether s is a literal subject: dot-separated, non-empty tokens
// without wildcards or white space.
func validSubject(s string) error {
	if s == "" {
		return errors.New("empty subject")
	}
	for tok := range strings.SplitSeq(s, ".") {
		if err := validToken(tok); err != nil {
			return err
		}
	}
	return nil
}

// validToken reports whether tok is one literal subject token.
func validToken(tok string) error {
	if tok == "" {
		return errors.New("empty subject token")
	}
	if strings.ContainsAny(tok, "*> \t\r\n.") {
		return fmt.Errorf("subject token %q holds a wildcard, a dot or white space", tok)
	}
	return nil
}

// validName reports whether s may name a stream or a consumer.
func validName(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	if strings.ContainsAny(s, ".*>/\\ \t\r\n") {
		return errors.New("a name must not hold '.', '*', '>', slashes or white space")
	}
	return nil
}

// VerifySubject returns the subject of state checks, "<prefix>.verify".
func (c Config) VerifySubject() string { return cmp.Or(c.Prefix, DefaultPrefix) + ".verify" }

package worker

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config tunes the worker. The zero value of each field means its default.
type Config struct {
	Source           string        // the CloudEvent source: the deployment, e.g. "urn:reprocessor:entitlement.reprocess"
	Instance         string        // the replica, in the events' "instance" extension attribute
	Tracer           trace.Tracer  // spans of requests, Graph calls and waits; default a no-op one
	Concurrency      int           // the most messages worked at once (Deps.Concurrency may hold fewer); default 2048
	MaxDeliver       int           // deliveries before a retryable failure ends retries_exhausted; default 5
	DeliveryBudget   time.Duration // time one delivery may spend retrying in process before it is nak'd; default 1m
	Backoff          Backoff       // retry delays; default 1s doubling to 1m, full jitter
	CoalesceWindow   time.Duration // how long an accepted id coalesces duplicates; default 1m, negative turns it off
	CircuitThreshold int           // consecutive 403s (or 401s after a refresh) that open the circuit; default 20
	CircuitCooldown  time.Duration // how long the circuit stays open before a probe; default 30s
	Heartbeat        time.Duration // how often a long-running message is marked in progress; default 10s
	ShutdownTimeout  time.Duration // how long in-flight work may take to finish at shutdown; default 30s
	ShutdownNakDelay time.Duration // redelivery delay of what shutdown hands back; default 1s
	PublishBudget    time.Duration // how long storing an event, dead letter or check is retried before the message is handed back; default 30s
	Verify           VerifyConfig  // state tracking after accepted
	Logger           *slog.Logger
	Now              func() time.Time // default time.Now
	Rand             func() float64   // [0,1); default math/rand/v2
}

// Defaults returns the value each zero field of a Config stands for: the one place the
// worker's defaults are written (the configuration's defaults read them from here).
func Defaults() Config {
	return Config{
		Source:           "reprocessor/local",
		Concurrency:      2048,
		MaxDeliver:       5,
		DeliveryBudget:   time.Minute,
		Backoff:          Backoff{Initial: time.Second, Max: time.Minute},
		CoalesceWindow:   time.Minute,
		CircuitThreshold: 20,
		CircuitCooldown:  30 * time.Second,
		Heartbeat:        10 * time.Second,
		ShutdownTimeout:  30 * time.Second,
		ShutdownNakDelay: time.Second,
		PublishBudget:    30 * time.Second,
		Verify: VerifyConfig{
			Concurrency: 4,
			FirstDelay:  5 * time.Second,
			MaxDelay:    time.Minute,
			Deadline:    10 * time.Minute,
		},
	}
}

func (c Config) withDefaults() Config {
	d := Defaults()
	c.Source = cmp.Or(c.Source, d.Source)
	if c.Tracer == nil {
		c.Tracer = noop.NewTracerProvider().Tracer("")
	}
	c.Concurrency = cmp.Or(c.Concurrency, d.Concurrency)
	c.MaxDeliver = cmp.Or(c.MaxDeliver, d.MaxDeliver)
	c.DeliveryBudget = cmp.Or(c.DeliveryBudget, d.DeliveryBudget)
	c.Backoff.Initial = cmp.Or(c.Backoff.Initial, d.Backoff.Initial)
	c.Backoff.Max = cmp.Or(c.Backoff.Max, d.Backoff.Max)
	c.CoalesceWindow = cmp.Or(c.CoalesceWindow, d.CoalesceWindow)
	c.CircuitThreshold = cmp.Or(c.CircuitThreshold, d.CircuitThreshold)
	c.CircuitCooldown = cmp.Or(c.CircuitCooldown, d.CircuitCooldown)
	c.Heartbeat = cmp.Or(c.Heartbeat, d.Heartbeat)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, d.ShutdownTimeout)
	c.ShutdownNakDelay = cmp.Or(c.ShutdownNakDelay, d.ShutdownNakDelay)
	c.PublishBudget = cmp.Or(c.PublishBudget, d.PublishBudget)
	c.Verify = c.Verify.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency must be at least 1, got %d", c.Concurrency))
	}
	if c.MaxDeliver < 1 {
		errs = append(errs, fmt.Errorf("max deliver must be at least 1, got %d", c.MaxDeliver))
	}
	if c.CircuitThreshold < 1 {
		errs = append(errs, fmt.Errorf("circuit threshold must be at least 1, got %d", c.CircuitThreshold))
	}
	if c.Backoff.Max < c.Backoff.Initial {
		errs = append(errs, fmt.Errorf("backoff max %s is below backoff initial %s", c.Backoff.Max, c.Backoff.Initial))
	}
	return errors.Join(errs...)
}

// Deps are the adapters the worker drives.
type Deps struct {
	Source      Source
	Graph       Graph
	Events      EventPublisher
	DeadLetters DeadLetterer
	Limiter     Limiter          // nil: no rate limit
	Feedback    RateFeedback     // optional: told every Graph answer (an adaptive limiter)
	Concurrency ConcurrencyLimit // optional: how many requests at once, below Config.Concurrency; nil: always Config.Concurrency
	Observer    Observer         // nil: nothing observed
	Hold        func() error     // optional: while it returns an error, nothing is fetched (e.g. no Graph token yet)
	Gate        *Gate            // optional: the process's throttle gate, shared with replica control; default a gate of its own

	// State tracking, required when Config.Verify.Enabled.
	Checks    Source          // the verify work queue
	Scheduler CheckScheduler  // puts checks on it
	States    StateReader     // reads assignments
	Resources ResourceChecker // with Verify.Resources: checks a delivered assignment's resources
}

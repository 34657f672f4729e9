package config

import (
	"log/slog"
	"time"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// Source is the CloudEvents source of this process's events.
func (c Config) Source() string { return c.EventSource }

// Queue returns the configuration of the streams and consumers.
func (c Config) Queue() queue.Config {
	return queue.Config{
		Prefix:        c.SubjectPrefix,
		EventsMaxAge:  c.EventsMaxAge,
		DLQMaxAge:     c.DLQMaxAge,
		Replicas:      c.StreamReplicas,
		AckWait:       c.AckWait,
		MaxAckPending: c.EffectiveMaxAckPending(),
		NoCreate:      c.NoCreate,
	}
}

// Worker returns the worker's configuration, logging to log.
func (c Config) Worker(log *slog.Logger) worker.Config {
	coalesce := c.CoalesceWindow
	if coalesce == 0 {
		coalesce = -1 // worker: negative turns the window off, zero means its default
	}
	return worker.Config{
		Source:           c.Source(),
		Instance:         c.Instance,
		Concurrency:      c.Concurrency,
		MaxDeliver:       c.MaxDeliver,
		DeliveryBudget:   c.DeliveryBudget,
		Backoff:          c.Backoff(),
		CoalesceWindow:   coalesce,
		CircuitThreshold: c.CircuitThreshold,
		CircuitCooldown:  c.CircuitCooldown,
		Heartbeat:        max(c.AckWait/3, 100*time.Millisecond),
		ShutdownTimeout:  c.ShutdownTimeout,
		Logger:           log,
		Verify: worker.VerifyConfig{
			Enabled:     c.Verify,
			Concurrency: c.VerifyConcurrency,
			FirstDelay:  c.VerifyDelay,
			Deadline:    c.VerifyDeadline,
			Precheck:    c.Precheck,
			Resources:   c.VerifyResources,
		},
	}
}

// Backoff returns the retry backoff.
func (c Config) Backoff() worker.Backoff {
	return worker.Backoff{Initial: c.BackoffInitial, Max: c.BackoffMax}
}

// Graph returns where Graph is, for graph.Open; the caller adds its HTTP client, observer,
// logger and token callback.
func (c Config) Graph() graph.SessionConfig {
	return graph.SessionConfig{Cloud: c.Cloud, GraphURL: c.GraphURL, APIVersion: c.GraphAPIVersion, Timeout: c.GraphTimeout, Login: c.Credential}
}

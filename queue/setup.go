package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotProvisioned is returned by Setup with NoCreate when a stream or the consumer does
// not exist.
var ErrNotProvisioned = errors.New("jetstream assets not provisioned")

// Queue is the JetStream side of the worker: it fetches request messages from the durable
// pull consumer and publishes events and dead letters. It is safe for concurrent use.
type Queue struct {
	cfg      Config
	js       jetstream.JetStream
	nc       *nats.Conn
	acked    *AckedPublisher // events and state checks
	consumer jetstream.Consumer
	checks   jetstream.Consumer
	logger   *slog.Logger

	requestsSubject string
	eventsPrefix    string
	dlqSubject      string
	verifySubject   string
}

// Setup creates or updates the requests, events and dead-letter streams and the durable
// pull consumer, then binds to the consumer. It is idempotent: fields it manages are
// compared with what the server holds and only a difference is written, and fields it does
// not manage (limits an operator set, placement, metadata) are kept. A nil logger discards. With cfg.NoCreate it
// only binds, and fails with ErrNotProvisioned naming whatever is missing.
func Setup(ctx context.Context, js jetstream.JetStream, cfg Config, logger *slog.Logger) (*Queue, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	q := &Queue{cfg: cfg, js: js, nc: js.Conn(), acked: NewAckedPublisher(js.Conn(), PublishAckTimeout), logger: logger}
	q.requestsSubject, q.eventsPrefix, q.dlqSubject = cfg.Subjects()
	q.verifySubject = cfg.VerifySubject()

	streams := q.streamConfigs()
	consumer, checks := q.consumerConfig(), q.verifyConsumerConfig()
	if cfg.NoCreate {
		if err := q.bind(ctx, streams, consumer, checks); err != nil {
			return nil, err
		}
		return q, nil
	}
	for _, sc := range streams {
		if err := ensureStream(ctx, js, sc, logger); err != nil {
			return nil, err
		}
	}
	c, err := ensureConsumer(ctx, js, cfg.RequestsStream, consumer, logger)
	if err != nil {
		return nil, err
	}
	q.consumer = c
	if q.checks, err = ensureConsumer(ctx, js, cfg.VerifyStream, checks, logger); err != nil {
		return nil, err
	}
	return q, nil
}

// streamConfigs returns the four streams as Setup wants them.
func (q *Queue) streamConfigs() []jetstream.StreamConfig {
	c := q.cfg
	return []jetstream.StreamConfig{
		{
			Name:        c.RequestsStream,
			Description: "reprocessor: access package assignment ids to reprocess",
			Subjects:    []string{q.requestsSubject},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
		},
		{
			Name:        c.EventsStream,
			Description: "reprocessor: CloudEvents for every outcome and state change",
			Subjects:    []string{q.eventsPrefix + ".>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      c.EventsMaxAge,
			Duplicates:  c.DuplicateWindow,
		},
		{
			Name:        c.DLQStream,
			Description: "reprocessor: request messages that did not succeed, with Reprocess-* headers",
			Subjects:    []string{q.dlqSubject},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      c.DLQMaxAge,
			Duplicates:  c.DuplicateWindow,
		},
		{
			Name:        c.VerifyStream,
			Description: "reprocessor: state checks of accepted requests",
			Subjects:    []string{q.verifySubject},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			Duplicates:  c.DuplicateWindow,
		},
	}
}

// verifyConsumerConfig returns the durable pull consumer of state checks.
func (q *Queue) verifyConsumerConfig() jetstream.ConsumerConfig {
	return q.pullConsumer(q.cfg.VerifyDurable, "reprocessor: state checks", q.cfg.VerifyMaxAckPending, q.verifySubject)
}

// consumerConfig returns the durable pull consumer of requests as Setup wants it.
func (q *Queue) consumerConfig() jetstream.ConsumerConfig {
	return q.pullConsumer(q.cfg.Durable, "reprocessor: request worker", q.cfg.MaxAckPending, q.requestsSubject)
}

// pullConsumer is a durable pull consumer with explicit acks. MaxDeliver is unlimited: the
// worker counts deliveries itself and dead-letters past its own limit, so the server never
// drops a message silently.
func (q *Queue) pullConsumer(durable, description string, maxAckPending int, subject string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   description,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       q.cfg.AckWait,
		MaxAckPending: maxAckPending,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: subject,
	}
}

// mergeStream lays the fields Setup manages over an existing stream config.
func mergeStream(existing, want jetstream.StreamConfig) jetstream.StreamConfig {
	merged := existing
	merged.Subjects = want.Subjects
	merged.Retention = want.Retention
	merged.Storage = want.Storage
	merged.Replicas = want.Replicas
	if want.Description != "" && existing.Description == "" {
		merged.Description = want.Description
	}
	if want.Retention == jetstream.LimitsPolicy {
		merged.MaxAge = want.MaxAge
	}
	if want.Duplicates != 0 {
		merged.Duplicates = want.Duplicates
	}
	return merged
}

// mergeConsumer lays the fields Setup manages over an existing consumer config.
func mergeConsumer(existing, want jetstream.ConsumerConfig) jetstream.ConsumerConfig {
	merged := existing
	merged.Durable = want.Durable
	merged.AckPolicy = want.AckPolicy
	merged.AckWait = want.AckWait
	merged.MaxAckPending = want.MaxAckPending
	merged.MaxDeliver = want.MaxDeliver
	merged.DeliverPolicy = want.DeliverPolicy
	merged.FilterSubject = want.FilterSubject
	merged.FilterSubjects = nil
	if existing.Description == "" {
		merged.Description = want.Description
	}
	return merged
}

// ensureStream creates want, or updates the existing stream where a managed field differs.
func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, logger *slog.Logger) error {
	// Two rounds: another worker may create the stream between our lookup and our create.
	for range 2 {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = js.CreateStream(ctx, want)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				continue
			}
			if err != nil {
				return fmt.Errorf("create stream %s: %w", want.Name, err)
			}
			logger.Info("stream created", "stream", want.Name, "subjects", want.Subjects)
			return nil
		}
		if err != nil {
			return fmt.Errorf("look up stream %s: %w", want.Name, err)
		}
		existing := s.CachedInfo().Config
		merged := mergeStream(existing, want)
		changed := changedFields(existing, merged)
		if len(changed) == 0 {
			logger.Debug("stream up to date", "stream", want.Name)
			return nil
		}
		if existing.Retention != want.Retention {
			return fmt.Errorf("update stream %s: it has retention %s, want %s, which cannot be changed in place",
				want.Name, existing.Retention, want.Retention)
		}
		if _, err := js.UpdateStream(ctx, merged); err != nil {
			return fmt.Errorf("update stream %s (%s): %w", want.Name, strings.Join(changed, ", "), err)
		}
		logger.Info("stream updated", "stream", want.Name, "fields", changed)
		return nil
	}
	return fmt.Errorf("create stream %s: it keeps appearing with another config", want.Name)
}

// ensureConsumer creates want on stream, or updates it where a managed field differs.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig, logger *slog.Logger) (jetstream.Consumer, error) {
	for range 2 {
		c, err := js.Consumer(ctx, stream, want.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			c, err = js.CreateConsumer(ctx, stream, want)
			if errors.Is(err, jetstream.ErrConsumerExists) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("create consumer %s on stream %s: %w", want.Durable, stream, err)
			}
			logger.Info("consumer created", "stream", stream, "consumer", want.Durable)
			return c, nil
		}
		if err != nil {
			return nil, fmt.Errorf("look up consumer %s on stream %s: %w", want.Durable, stream, err)
		}
		existing := c.CachedInfo().Config
		if existing.DeliverSubject != "" {
			return nil, fmt.Errorf("consumer %s on stream %s is a push consumer; want a pull consumer", want.Durable, stream)
		}
		merged := mergeConsumer(existing, want)
		changed := changedFields(existing, merged)
		if len(changed) == 0 {
			logger.Debug("consumer up to date", "stream", stream, "consumer", want.Durable)
			return c, nil
		}
		c, err = js.UpdateConsumer(ctx, stream, merged)
		if err != nil {
			return nil, fmt.Errorf("update consumer %s on stream %s (%s): %w", want.Durable, stream, strings.Join(changed, ", "), err)
		}
		logger.Info("consumer updated", "stream", stream, "consumer", want.Durable, "fields", changed)
		return c, nil
	}
	return nil, fmt.Errorf("create consumer %s on stream %s: it keeps appearing with another config", want.Durable, stream)
}

// bind looks the streams and the consumer up without changing them. It fails naming every
// missing one, and logs managed fields that differ from the config.
func (q *Queue) bind(ctx context.Context, streams []jetstream.StreamConfig, want, checks jetstream.ConsumerConfig) error {
	var missing []string
	for _, sc := range streams {
		s, err := q.js.Stream(ctx, sc.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			missing = append(missing, "stream "+sc.Name)
			continue
		}
		if err != nil {
			return fmt.Errorf("look up stream %s: %w", sc.Name, err)
		}
		existing := s.CachedInfo().Config
		if diff := changedFields(existing, mergeStream(existing, sc)); len(diff) > 0 {
			q.logger.Warn("stream differs from the config; not changed (no-create)", "stream", sc.Name, "fields", diff)
		}
	}
	bindConsumer := func(stream string, want jetstream.ConsumerConfig) (jetstream.Consumer, error) {
		c, err := q.js.Consumer(ctx, stream, want.Durable)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
			missing = append(missing, fmt.Sprintf("consumer %s on stream %s", want.Durable, stream))
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("look up consumer %s on stream %s: %w", want.Durable, stream, err)
		}
		existing := c.CachedInfo().Config
		if existing.DeliverSubject != "" {
			return nil, fmt.Errorf("consumer %s on stream %s is a push consumer; want a pull consumer", want.Durable, stream)
		}
		if diff := changedFields(existing, mergeConsumer(existing, want)); len(diff) > 0 {
			q.logger.Warn("consumer differs from the config; not changed (no-create)", "consumer", want.Durable, "fields", diff)
		}
		return c, nil
	}
	c, err := bindConsumer(q.cfg.RequestsStream, want)
	if err != nil {
		return err
	}
	v, err := bindConsumer(q.cfg.VerifyStream, checks)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w (creation is turned off): missing %s", ErrNotProvisioned, strings.Join(missing, ", "))
	}
	q.consumer, q.checks = c, v
	return nil
}

// changedFields names the fields of two structs of the same type that differ.
func changedFields[T any](a, b T) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var names []string
	for i := range va.NumField() {
		if !va.Type().Field(i).IsExported() {
			continue
		}
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			names = append(names, va.Type().Field(i).Name)
		}
	}
	return names
}

// Pending reports the consumer's messages not yet delivered and those delivered and not
// yet acknowledged.
func (q *Queue) Pending(ctx context.Context) (pending, ackPending uint64, err error) {
	info, err := q.consumer.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("consumer %s info: %w", q.cfg.Durable, err)
	}
	return info.NumPending, uint64(max(info.NumAckPending, 0)), nil
}

// Health looks up every stream and consumer the worker uses and reports the requests
// consumer's counts. When any is missing (an operator deleted it while the worker runs)
// the error wraps ErrNotProvisioned and names all that are missing; other errors (NATS
// unreachable) are returned as they are.
func (q *Queue) Health(ctx context.Context) (pending, ackPending uint64, err error) {
	var missing []string
	for _, sc := range q.streamConfigs() {
		_, err := q.js.Stream(ctx, sc.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			missing = append(missing, "stream "+sc.Name)
		case err != nil:
			return 0, 0, fmt.Errorf("look up stream %s: %w", sc.Name, err)
		}
	}
	for _, c := range []struct{ stream, durable string }{{q.cfg.RequestsStream, q.cfg.Durable}, {q.cfg.VerifyStream, q.cfg.VerifyDurable}} {
		info, err := q.js.Consumer(ctx, c.stream, c.durable)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
			missing = append(missing, fmt.Sprintf("consumer %s on stream %s", c.durable, c.stream))
		case err != nil:
			return 0, 0, fmt.Errorf("look up consumer %s on stream %s: %w", c.durable, c.stream, err)
		case c.durable == q.cfg.Durable:
			ci := info.CachedInfo()
			pending, ackPending = ci.NumPending, uint64(max(ci.NumAckPending, 0))
		}
	}
	if len(missing) > 0 {
		return 0, 0, fmt.Errorf("%w: missing %s", ErrNotProvisioned, strings.Join(missing, ", "))
	}
	return pending, ackPending, nil
}

// Repair creates again whatever Setup would create that is missing now (streams and
// consumers deleted while the worker runs), as Setup does: idempotent, and an error with
// NoCreate, where it may create nothing. The consumers are bound by name, so fetching
// resumes on the recreated ones.
func (q *Queue) Repair(ctx context.Context) error {
	if q.cfg.NoCreate {
		return fmt.Errorf("%w (creation is turned off): recreate them, or restart once they exist", ErrNotProvisioned)
	}
	for _, sc := range q.streamConfigs() {
		if err := ensureStream(ctx, q.js, sc, q.logger); err != nil {
			return err
		}
	}
	if _, err := ensureConsumer(ctx, q.js, q.cfg.RequestsStream, q.consumerConfig(), q.logger); err != nil {
		return err
	}
	if _, err := ensureConsumer(ctx, q.js, q.cfg.VerifyStream, q.verifyConsumerConfig(), q.logger); err != nil {
		return err
	}
	return nil
}

// Config returns the config in use, with defaults applied.
func (q *Queue) Config() Config { return q.cfg }

package metrics

import (
	"context"
	"time"

	"github.com/reprocessor/reprocessor/worker"
)

// This file observes the worker's ports from outside, as watermill's components/metrics
// decorates a publisher: each Decorate method wraps an adapter so that what passes through
// it is counted, and the worker itself knows nothing of it. What has no port (outcomes,
// retries, the gauges) is reported through worker.Observer.

// DecorateSource counts every request message src delivers, first deliveries apart from
// redeliveries, and records how long it waited in the stream before it was fetched.
func (m *Metrics) DecorateSource(src worker.Source) worker.Source {
	return observedSource{Source: src, m: m}
}

type observedSource struct {
	worker.Source
	m *Metrics
}

func (s observedSource) Fetch(ctx context.Context, max int, handle func(worker.Message)) error {
	return s.Source.Fetch(ctx, max, func(msg worker.Message) {
		d := msg.Delivery()
		s.m.MessageReceived(d.NumDelivered > 1)
		s.m.QueueWait(time.Since(d.Timestamp))
		handle(msg)
	})
}

// DecorateEvents counts the events p stores, by kind, the publications that fail, and the
// terminal events the stream already held (an earlier delivery's ack was lost), with those
// whose stored outcome differs from the one dropped.
func (m *Metrics) DecorateEvents(p worker.EventPublisher) worker.EventPublisher {
	return observedEvents{EventPublisher: p, m: m}
}

type observedEvents struct {
	worker.EventPublisher
	m *Metrics
}

func (o observedEvents) PublishEvent(ctx context.Context, e *worker.Event) (worker.Stored, error) {
	stored, err := o.EventPublisher.PublishEvent(ctx, e)
	kind := e.Kind()
	switch {
	case err != nil:
		o.m.EventPublishFailed()
	case !stored.Duplicate:
		o.m.EventPublished(kind)
	case kind != worker.KindStateChanged:
		o.m.EventDuplicate(kind, stored.Event != nil && stored.Event.Kind() != kind)
	}
	return stored, err
}

// DecorateDeadLetters counts the dead letters d stores, by their error code; a copy the
// stream already held (a redelivery dead-lettered again) is not counted twice.
func (m *Metrics) DecorateDeadLetters(d worker.DeadLetterer) worker.DeadLetterer {
	return observedDeadLetters{DeadLetterer: d, m: m}
}

type observedDeadLetters struct {
	worker.DeadLetterer
	m *Metrics
}

func (o observedDeadLetters) DeadLetter(ctx context.Context, d worker.Delivery, dl worker.DeadLetter) (worker.Stored, error) {
	stored, err := o.DeadLetterer.DeadLetter(ctx, d, dl)
	if err == nil && !stored.Duplicate {
		o.m.DeadLettered(dl.Code)
	}
	return stored, err
}

// DecorateLimiter records how long each Graph call waited for l; nil (no limit) stays nil.
func (m *Metrics) DecorateLimiter(l worker.Limiter) worker.Limiter {
	if l == nil {
		return nil
	}
	return observedLimiter{Limiter: l, m: m}
}

type observedLimiter struct {
	worker.Limiter
	m *Metrics
}

func (o observedLimiter) Wait(ctx context.Context) error {
	t0 := time.Now()
	err := o.Limiter.Wait(ctx)
	if err == nil {
		o.m.RateLimitWait(time.Since(t0))
	}
	return err
}

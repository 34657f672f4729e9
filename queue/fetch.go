package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/worker"
)

// ErrNotConnected is returned by Fetch while the connection to NATS is down and
// reconnecting, so that the caller backs off instead of pulling into the void. Once the
// connection is closed for good (nc.Close, or repeated authorization failures), Fetch
// returns an error wrapping nats.ErrConnectionClosed instead.
var ErrNotConnected = errors.New("not connected to nats")

// Fetch sends one pull request for up to max messages and calls handle for each message as
// it arrives, in the calling goroutine. It returns when the batch is complete, when the
// pull expires after Config.FetchMaxWait (no messages is not an error), or when ctx is done
// (then it returns ctx.Err(), after handing out the messages that had already arrived:
// each message handed out must be settled by the caller). Other errors (the connection is
// down, no responders, the consumer was deleted, missed heartbeats) are returned for the
// caller to log and back off on.
func (q *Queue) Fetch(ctx context.Context, max int, handle func(worker.Message)) error {
	return q.fetch(ctx, q.consumer, q.cfg.Durable, max, handle)
}

// Checks returns the source of state checks: the verify consumer, fetched like requests.
func (q *Queue) Checks() worker.Source { return checkSource{q} }

type checkSource struct{ q *Queue }

func (c checkSource) Fetch(ctx context.Context, max int, handle func(worker.Message)) error {
	return c.q.fetch(ctx, c.q.checks, c.q.cfg.VerifyDurable, max, handle)
}

func (q *Queue) fetch(ctx context.Context, consumer jetstream.Consumer, durable string, max int, handle func(worker.Message)) error {
	if max < 1 {
		return fmt.Errorf("fetch: max %d: must be positive", max)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if q.nc.IsClosed() {
		return fmt.Errorf("fetch from consumer %s: %w", durable, nats.ErrConnectionClosed)
	}
	if !q.nc.IsConnected() {
		return fmt.Errorf("fetch from consumer %s: %w (%s)", durable, ErrNotConnected, q.nc.Status())
	}
	pullCtx, cancel := context.WithTimeout(ctx, q.cfg.FetchMaxWait)
	defer cancel()
	batch, err := consumer.Fetch(max, jetstream.FetchContext(pullCtx))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("fetch from consumer %s: %w", durable, err)
	}
	for m := range batch.Messages() {
		msg, err := newMessage(m)
		if err != nil {
			// Only a message not delivered by a consumer lacks metadata; left unacked, it
			// comes back after AckWait like any unsettled message.
			q.logger.Warn("message without jetstream metadata; not handled", "subject", m.Subject(), "error", err)
			continue
		}
		handle(msg)
	}
	err = batch.Error()
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		// The pull's own deadline passed before the server's expiry notice came in.
		return nil
	default:
		return fmt.Errorf("fetch from consumer %s: %w", durable, err)
	}
}

// message is a delivered request; its metadata is parsed once, on arrival.
type message struct {
	msg      jetstream.Msg
	delivery worker.Delivery
}

// newMessage wraps m, parsing its metadata. Its data and headers are shared, not copied:
// each delivery has its own, and nothing downstream modifies them (a dead letter copies the
// headers it keeps).
func newMessage(m jetstream.Msg) (*message, error) {
	meta, err := m.Metadata()
	if err != nil {
		return nil, fmt.Errorf("message metadata: %w", err)
	}
	var header map[string][]string
	if h := m.Headers(); len(h) > 0 {
		header = h
	}
	return &message{
		msg: m,
		delivery: worker.Delivery{
			Subject:      m.Subject(),
			Data:         m.Data(),
			Header:       header,
			Stream:       meta.Stream,
			StreamSeq:    meta.Sequence.Stream,
			NumDelivered: meta.NumDelivered,
			Timestamp:    meta.Timestamp,
		},
	}, nil
}

// Delivery describes the delivery. Its Data and Header are shared: do not modify them.
func (m *message) Delivery() worker.Delivery { return m.delivery }

// Ack acknowledges the message; in the work-queue stream that removes it. It does not
// wait for the server to confirm: with outcome-independent event ids a lost ack costs a
// redelivery that stores nothing new, and awaiting every ack (DoubleAck) cost 13-17% of the
// zero-latency throughput (reprocessor bench, interleaved rounds). An ack the account's
// permissions refuse comes back as an asynchronous error instead: see
// ConnConfig.OnAckRefused.
func (m *message) Ack() error { return m.msg.Ack() }

// NakWithDelay asks the server to deliver the message again after delay.
func (m *message) NakWithDelay(delay time.Duration) error { return m.msg.NakWithDelay(delay) }

// InProgress resets the message's ack deadline to a full AckWait.
func (m *message) InProgress() error { return m.msg.InProgress() }

package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AckedPublisher publishes messages to streams and waits for each one's acknowledgement,
// all replies arriving on one wildcard subscription of the connection's inbox. It does what
// jetstream's PublishMsgAsync with an awaited future does, with less CPU per message: no
// timer callback, no future with two channels, and an acknowledgement is checked without
// decoding its JSON unless it reports an error. Every request of the worker publishes an
// event, so this is on its hottest path (`reprocessor bench --rate 0`). Unlike
// PublishMsgAsync it does not resend by itself when no stream answers; the caller's retry
// does. It is safe for concurrent use.
type AckedPublisher struct {
	nc      *nats.Conn
	timeout time.Duration
	writes  combiner // publishes in bursts: see combiner

	mu     sync.Mutex
	prefix string // the reply subjects' prefix, "<inbox>."; empty until the first publish
	next   uint64
	waits  map[uint64]chan PubAck
}

// PubAck is a stream's acknowledgement of a publish.
type PubAck struct {
	// Duplicate: the stream already held a message with the same Nats-Msg-Id within its
	// dedupe window and stored nothing new; Seq is then that message's sequence.
	Duplicate bool
	Seq       uint64
	err       error
}

// NewAckedPublisher returns a publisher on nc whose publishes wait at most timeout for
// their acknowledgement. It subscribes to its replies on the first publish.
func NewAckedPublisher(nc *nats.Conn, timeout time.Duration) *AckedPublisher {
	return &AckedPublisher{nc: nc, timeout: timeout, waits: make(map[uint64]chan PubAck)}
}

// replyChans recycles the channels that carry an acknowledgement to its publisher. A
// channel goes back to the pool only once its one value has been received.
var replyChans = sync.Pool{New: func() any { return make(chan PubAck, 1) }}

// Publish publishes m with a reply subject of its own (it sets m.Reply) and waits for the
// stream's acknowledgement, for at most the timeout, or for ctx. A duplicate within the
// stream's dedupe window is acknowledged like any message; the PubAck says it was one.
func (a *AckedPublisher) Publish(ctx context.Context, m *nats.Msg) (PubAck, error) {
	ch := replyChans.Get().(chan PubAck)
	a.mu.Lock()
	if a.prefix == "" {
		inbox := a.nc.NewInbox()
		if _, err := a.nc.Subscribe(inbox+".*", a.reply); err != nil {
			a.mu.Unlock()
			replyChans.Put(ch)
			return PubAck{}, fmt.Errorf("subscribe to publish acknowledgements: %w", err)
		}
		a.prefix = inbox + "."
	}
	a.next++
	n := a.next
	a.waits[n] = ch
	prefix := a.prefix
	a.mu.Unlock()

	m.Reply = prefix + strconv.FormatUint(n, 36)
	a.writes.do(func() {
		if err := a.nc.PublishMsg(m); err != nil {
			a.refused(n, err) // the connection's error (closed, max payload) comes as the reply
		}
	})
	t := time.NewTimer(a.timeout)
	defer t.Stop()
	select {
	case ack := <-ch:
		replyChans.Put(ch)
		return ack, ack.err
	case <-t.C:
		a.abandon(n, ch)
		return PubAck{}, jetstream.ErrAsyncPublishTimeout
	case <-ctx.Done():
		a.abandon(n, ch)
		return PubAck{}, ctx.Err()
	}
}

// abandon stops waiting for reply n. If the reply is being handed over, it is received
// first, so that the channel is empty when it goes back to the pool.
func (a *AckedPublisher) abandon(n uint64, ch chan PubAck) {
	a.mu.Lock()
	_, waiting := a.waits[n]
	delete(a.waits, n)
	a.mu.Unlock()
	if !waiting {
		<-ch
	}
	replyChans.Put(ch)
}

// refused hands reply n the error the connection gave its publish, if it still waits.
func (a *AckedPublisher) refused(n uint64, err error) {
	a.mu.Lock()
	ch, ok := a.waits[n]
	delete(a.waits, n)
	a.mu.Unlock()
	if ok {
		ch <- PubAck{err: err}
	}
}

// reply hands an acknowledgement to its publisher, if it still waits.
func (a *AckedPublisher) reply(m *nats.Msg) {
	a.mu.Lock()
	n, err := strconv.ParseUint(m.Subject[len(a.prefix):], 36, 64)
	ch, ok := a.waits[n]
	if err != nil || !ok {
		a.mu.Unlock()
		return // late, after its publisher gave up
	}
	delete(a.waits, n)
	a.mu.Unlock()
	ch <- parsePubAck(m)
}

var (
	pubAckPrefix = []byte(`{"stream":"`)
	pubAckErr    = []byte(`"error"`)
	pubAckDup    = []byte(`"duplicate"`)
)

// parsePubAck says what a stream's reply to a publish means: an acknowledgement (a
// duplicate within the dedupe window included, with the stored message's sequence), the
// stream's error, or jetstream.ErrNoStreamResponse when no stream took the subject. A reply
// that starts with the stream's name and has neither an error nor a duplicate field is a
// plain acknowledgement (the server writes the error field first); any other is decoded.
func parsePubAck(m *nats.Msg) PubAck {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return PubAck{err: jetstream.ErrNoStreamResponse}
	}
	if bytes.HasPrefix(m.Data, pubAckPrefix) && !bytes.Contains(m.Data, pubAckErr) && !bytes.Contains(m.Data, pubAckDup) {
		return PubAck{}
	}
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Seq       uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return PubAck{err: fmt.Errorf("%w: %v", jetstream.ErrInvalidJSAck, err)}
	}
	if r.Error != nil {
		return PubAck{err: r.Error}
	}
	if r.Stream == "" {
		return PubAck{err: jetstream.ErrInvalidJSAck}
	}
	return PubAck{Duplicate: r.Duplicate, Seq: r.Seq}
}

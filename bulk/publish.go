package bulk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/ratelimit"
)

// DefaultWindow is the default number of publishes awaiting their acknowledgement.
const DefaultWindow = 4096

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	Subject     string                 // the requests subject
	RunID       string                 // set as correlationId and in every Nats-Msg-Id
	RequestedBy string                 // optional, sent in the payload
	Reason      string                 // optional, sent in the payload
	ReasonFor   func(idlist.ID) string // optional: the reason of one id, instead of Reason
	Runs        RunsConfig             // where acknowledged ids are recorded
	Window      int                    // publishes awaiting acknowledgement; default DefaultWindow
	Rate        float64                // publishes per second; 0 is unlimited
	OnAcked     func(idlist.ID)        // called for every acknowledged id, from one goroutine
}

// Publisher publishes request messages of one run with asynchronous acknowledgements. Each
// message is the JSON {"id", "correlationId", ...} with Nats-Msg-Id "<run id>:<id>", so
// that the requests stream drops a repeat within its duplicate window; each acknowledged id
// is also appended to the run record. Publish and Close are called from one goroutine.
type Publisher struct {
	cfg     PublisherConfig
	js      jetstream.JetStream
	limiter *rate.Limiter
	pending chan inflight
	record  runRecord
	done    chan struct{}

	sent, acked atomic.Int64
	errOnce     sync.Once
	err         error
	failed      chan struct{}
}

type inflight struct {
	id  idlist.ID
	msg *nats.Msg
	f   jetstream.PubAckFuture
}

// NewPublisher starts a publisher. js should be made with jetstream.WithPublishAsyncMaxPending
// at least cfg.Window.
func NewPublisher(js jetstream.JetStream, cfg PublisherConfig) (*Publisher, error) {
	if !ValidRunID(cfg.RunID) {
		return nil, fmt.Errorf("run id %q: must be 1 to 64 letters, digits, '-' or '_'", cfg.RunID)
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	cfg.Runs = cfg.Runs.withDefaults()
	p := &Publisher{
		cfg:     cfg,
		js:      js,
		pending: make(chan inflight, cfg.Window),
		record:  runRecord{js: js, subject: cfg.Runs.subject(cfg.RunID)},
		done:    make(chan struct{}),
		failed:  make(chan struct{}),
	}
	if cfg.Rate > 0 {
		p.limiter = ratelimit.Fixed(cfg.Rate)
	}
	go p.collect()
	return p, nil
}

// request is the JSON payload of a request message.
type request struct {
	ID            string `json:"id"`
	CorrelationID string `json:"correlationId"`
	RequestedBy   string `json:"requestedBy,omitempty"`
	Reason        string `json:"reason,omitempty"`
}

// MsgID returns the Nats-Msg-Id of id's request in run runID.
func MsgID(runID string, id idlist.ID) string { return runID + ":" + id.String() }

// Publish sends the request for id. It blocks while the window is full or the rate says
// wait, and returns ctx's error when ctx ends first, or the error that stopped publishing.
func (p *Publisher) Publish(ctx context.Context, id idlist.ID) error {
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			return err
		}
	}
	select {
	case <-p.failed:
		return p.err
	default:
	}
	s := id.String()
	reason := p.cfg.Reason
	if p.cfg.ReasonFor != nil {
		reason = p.cfg.ReasonFor(id)
	}
	data, err := json.Marshal(request{ID: s, CorrelationID: p.cfg.RunID, RequestedBy: p.cfg.RequestedBy, Reason: reason})
	if err != nil {
		return fmt.Errorf("encode request %s: %w", s, err)
	}
	msg := &nats.Msg{Subject: p.cfg.Subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: {MsgID(p.cfg.RunID, id)}}}
	f, err := p.js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute))
	if err != nil {
		return fmt.Errorf("publish %s: %w", s, err)
	}
	p.sent.Add(1)
	select {
	case p.pending <- inflight{id: id, msg: msg, f: f}:
		return nil
	case <-p.failed:
		return p.err
	}
}

// collect waits for each acknowledgement in order, republishes synchronously what failed
// (the same Nats-Msg-Id makes that safe), and records acknowledged ids.
func (p *Publisher) collect() {
	defer close(p.done)
	ctx := context.Background()
	for in := range p.pending {
		if p.isFailed() {
			continue
		}
		var err error
		select {
		case <-in.f.Ok():
		case err = <-in.f.Err():
		}
		if err != nil {
			err = p.retry(ctx, in)
		}
		if err == nil {
			err = p.record.add(ctx, in.id)
		}
		if err != nil {
			p.fail(err)
			continue
		}
		p.acked.Add(1)
		if p.cfg.OnAcked != nil {
			p.cfg.OnAcked(in.id)
		}
	}
	if !p.isFailed() {
		if err := p.record.flush(ctx); err != nil {
			p.fail(err)
		}
	}
}

func (p *Publisher) retry(ctx context.Context, in inflight) error {
	var err error
	for attempt := range 5 {
		time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = p.js.PublishMsg(cctx, in.msg)
		cancel()
		if err == nil || errors.Is(err, nats.ErrConnectionClosed) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", in.id, err)
	}
	return nil
}

func (p *Publisher) fail(err error) {
	p.errOnce.Do(func() { p.err = err; close(p.failed) })
}

func (p *Publisher) isFailed() bool {
	select {
	case <-p.failed:
		return true
	default:
		return false
	}
}

// Close waits for every publish to be acknowledged (or ctx to end) and writes the last
// run record batch. It returns the error that stopped publishing, if any.
func (p *Publisher) Close(ctx context.Context) error {
	close(p.pending)
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("waiting for acknowledgements: %w", ctx.Err())
	}
	if p.isFailed() {
		return p.err
	}
	return nil
}

// Counts returns the publishes sent and acknowledged so far.
func (p *Publisher) Counts() (sent, acked int64) { return p.sent.Load(), p.acked.Load() }

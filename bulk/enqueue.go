package bulk

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/queue"
)

// EnqueueConfig is one enqueue run.
type EnqueueConfig struct {
	Queue       queue.Config // the worker's streams, created as "reprocessor run" would when missing
	Runs        RunsConfig   // where the run's record is kept
	RunID       string
	RequestedBy string
	Reason      string
	ReasonFor   func(idlist.ID) string // optional: the reason of one id, instead of Reason
	Window      int                    // publishes awaiting acknowledgement at once; default DefaultWindow
	Rate        float64                // publishes per second; 0 unlimited
	DryRun      bool                   // read and count; publish nothing (Open is not called)
	Track       bool                   // keep a row per id, for Follow and the report
	WaitSettled bool                   // with Track: an accepted id is done once its state settles
	Logger      *slog.Logger
	// OnInvalid, if set, is called with each invalid entry as it is read.
	OnInvalid func(idlist.Entry)
}

// Enqueue is one run of reading ids, publishing each distinct one once per run id, and
// following them to their outcomes: what "reprocessor enqueue" drives. Its counters may be
// read (Progress) while it works.
type Enqueue struct {
	cfg     EnqueueConfig
	js      jetstream.JetStream
	seen    *idlist.Set
	prior   PriorRun
	tracker *Tracker
	pub     *Publisher
	started time.Time

	entries, invalid, dupes, skipped, distinct atomic.Int64
	lastLine                                   atomic.Int64
	readBytes, totalBytes                      atomic.Int64
	pages                                      atomic.Int64
}

// NewEnqueue returns a run that has not started.
func NewEnqueue(cfg EnqueueConfig) *Enqueue {
	cfg.Window = cmp.Or(cfg.Window, DefaultWindow)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Enqueue{cfg: cfg, seen: idlist.NewSet(0), prior: PriorRun{Published: idlist.NewSet(0)}, started: time.Now()}
	if cfg.Track {
		e.tracker = NewTracker(cfg.RunID, cfg.WaitSettled)
	}
	return e
}

// Open readies publishing on js: it creates the worker's streams when the requests stream
// does not exist yet, and the run record stream, reads what this run id published before,
// and starts the publisher.
func (e *Enqueue) Open(ctx context.Context, js jetstream.JetStream) error {
	e.js = js
	qc := e.cfg.Queue
	stream := cmp.Or(qc.RequestsStream, queue.DefaultRequestsStream)
	if _, err := js.Stream(ctx, stream); errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := queue.Setup(ctx, js, qc, e.cfg.Logger); err != nil {
			return fmt.Errorf("set up the streams: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("look up stream %s: %w", stream, err)
	}
	if err := EnsureRunsStream(ctx, js, e.cfg.Runs); err != nil {
		return err
	}
	prior, err := LoadRun(ctx, js, e.cfg.Runs, e.cfg.RunID)
	if err != nil {
		return err
	}
	e.prior = prior
	reqSubject, _, _ := qc.Subjects()
	e.pub, err = NewPublisher(js, PublisherConfig{
		Subject: reqSubject, RunID: e.cfg.RunID, RequestedBy: e.cfg.RequestedBy, Reason: e.cfg.Reason, ReasonFor: e.cfg.ReasonFor,
		Runs: e.cfg.Runs, Window: e.cfg.Window, Rate: e.cfg.Rate,
	})
	return err
}

// Resumed is how many ids this run id had published before this run.
func (e *Enqueue) Resumed() int { return e.prior.Published.Len() }

// Tracker is the per-id record, nil unless Track was set.
func (e *Enqueue) Tracker() *Tracker { return e.tracker }

// add takes one entry read from the source: counts it, drops invalid and repeated ids and
// those this run published before, and publishes the rest.
func (e *Enqueue) add(ctx context.Context, en idlist.Entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.entries.Add(1)
	e.lastLine.Store(int64(en.Line))
	if en.Invalid != "" {
		e.invalid.Add(1)
		if e.cfg.OnInvalid != nil {
			e.cfg.OnInvalid(en)
		}
		return nil
	}
	if !e.seen.Add(en.ID) {
		e.dupes.Add(1)
		return nil
	}
	e.distinct.Add(1)
	if e.tracker != nil {
		e.tracker.Add(en.ID, en.Line)
	}
	if e.prior.Published.Has(en.ID) {
		e.skipped.Add(1)
		return nil
	}
	if e.pub == nil {
		return nil
	}
	return e.pub.Publish(ctx, en.ID)
}

// PublishArgs publishes ids given one by one (command-line arguments).
func (e *Enqueue) PublishArgs(ctx context.Context, args []string) error {
	e.totalBytes.Store(int64(len(args)))
	for i, a := range args {
		en := idlist.Entry{Line: i + 1, Raw: a}
		if id, ok := idlist.Parse(strings.TrimSpace(a)); ok {
			en.ID = id
		} else {
			en.Invalid = "not an assignment id (a GUID, 8-4-4-4-12 hexadecimal digits)"
		}
		if err := e.add(ctx, en); err != nil {
			return err
		}
		e.readBytes.Store(int64(i + 1))
	}
	return nil
}

// PublishList publishes the ids of a list in format f; size is its length in bytes, or 0
// when unknown.
func (e *Enqueue) PublishList(ctx context.Context, r io.Reader, size int64, f idlist.Format) error {
	e.totalBytes.Store(size)
	return idlist.Read(countingReader{r, &e.readBytes}, f, func(en idlist.Entry) error { return e.add(ctx, en) })
}

// PublishGraph publishes the assignments l lists.
func (e *Enqueue) PublishGraph(ctx context.Context, l Lister, c ListConfig) error {
	onPage := c.OnPage
	c.OnPage = func(page, n int) {
		e.pages.Add(1)
		if onPage != nil {
			onPage(page, n)
		}
	}
	return ListFromGraph(ctx, l, c, func(id idlist.ID) error { return e.add(ctx, idlist.Entry{ID: id}) })
}

// Close waits, up to a minute, for the publishes in flight to be acknowledged.
func (e *Enqueue) Close(ctx context.Context) error {
	if e.pub == nil {
		return nil
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return e.pub.Close(closeCtx)
}

// Follow reads the events until every tracked id has its outcome (and, with WaitSettled,
// its settled state) or ctx ends, from a minute before the run (or the run it resumes)
// started: the server's clock stamps the events, so allow for skew.
func (e *Enqueue) Follow(ctx context.Context) error {
	since := e.started
	if !e.prior.Started.IsZero() {
		since = e.prior.Started
	}
	qc := e.cfg.Queue
	_, eventsSubject, _ := qc.Subjects()
	return Follow(ctx, e.js, cmp.Or(qc.EventsStream, queue.DefaultEventsStream), eventsSubject, since.Add(-time.Minute), e.tracker)
}

// Progress is a snapshot of a run's counters.
type Progress struct {
	Entries, Invalid, Duplicates, Skipped, Distinct int64
	Sent, Acked                                     int64 // publishes sent and acknowledged
	LastLine                                        int64
	ReadBytes, TotalBytes                           int64 // arguments count as one byte each; TotalBytes 0 when unknown
	Pages                                           int64 // Graph pages listed
	Elapsed                                         time.Duration
}

// Progress returns the counters now.
func (e *Enqueue) Progress() Progress {
	p := Progress{
		Entries: e.entries.Load(), Invalid: e.invalid.Load(), Duplicates: e.dupes.Load(),
		Skipped: e.skipped.Load(), Distinct: e.distinct.Load(), LastLine: e.lastLine.Load(),
		ReadBytes: e.readBytes.Load(), TotalBytes: e.totalBytes.Load(), Pages: e.pages.Load(),
		Elapsed: time.Since(e.started),
	}
	if e.pub != nil {
		p.Sent, p.Acked = e.pub.Counts()
	}
	return p
}

// Done is how many ids are done: acknowledged when publishing, counted in a dry run.
func (p Progress) Done(dryRun bool) int64 {
	if dryRun {
		return p.Distinct
	}
	return p.Acked
}

// countingReader counts the bytes read, for the progress line.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/reprocessor/reprocessor/bulk"
	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/ratelimit"
	"github.com/reprocessor/reprocessor/worker"
)

// Exit codes of enqueue, besides exitOK, exitFailed (NATS, Graph or the input could not be
// used) and exitUsage.
const (
	exitNotAllAccepted = 3   // invalid input lines, or ids that ended failed or rejected (or, with --wait-settled, did not settle delivered)
	exitTimedOut       = 4   // --wait: the timeout passed before every id had its outcome
	exitInterrupted    = 130 // Ctrl-C: publishing stopped; re-run with the same --run-id to finish
)

const enqueueUsage = `usage: reprocessor enqueue [flags] [ID ...]
       reprocessor enqueue [flags] --file FILE|-   (one id a line; --column NAME for CSV, --field NAME for JSON lines)
       reprocessor enqueue [flags] --from-graph [--state delivered] [--access-package ID] [--filter ODATA]

Publishes assignment ids to the requests subject, each as {"id", "correlationId": <run id>}
with Nats-Msg-Id "<run id>:<id>". Every id a run publishes is recorded in the stream
REPROCESS_RUNS, so re-running with the same --run-id publishes nothing twice, however late.
NATS_URL unset means the embedded server of a "reprocessor run" on this machine
(nats://127.0.0.1:4222, REPROCESSOR_EMBEDDED_ADDR); enqueue never starts a server.

Exit status: 0 every id published (with --wait: accepted or coalesced); 1 an error
(NATS, Graph, the input); 2 bad arguments; 3 invalid input lines, or ids that ended failed
or rejected (with --wait-settled: or not settled delivered); 4 --timeout passed;
130 interrupted (re-run with the same --run-id).

Flags of enqueue:
`

// enqueueIO is what enqueue reads and writes; tests replace it.
type enqueueIO struct {
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
	tty       bool         // stderr is a terminal: draw a progress bar
	graphHTTP *http.Client // carries Graph calls (a client trusting a simulated Graph)
	progress  time.Duration
}

func cmdEnqueue(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return enqueueMain(ctx, args, getenv, enqueueIO{stdin: os.Stdin, stdout: stdout, stderr: stderr, tty: isTTY(os.Stderr)})
}

// isTerminal reports whether f is a character device (a terminal).
func isTTY(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// enqueueFlags are enqueue's own flags.
type enqueueFlags struct {
	file, column, field          string
	fromGraph                    bool
	state, accessPackage, filter string
	runID                        string
	rate                         float64
	window                       int
	dryRun, wait, waitSettled    bool
	timeout                      time.Duration
	report                       string
	requestedBy, reason          string
}

// bindWithout registers on fs every config flag but the ones renamed, under their new
// names, and returns the config loader.
func bindWithout(fs *flag.FlagSet, getenv func(string) string, renamed map[string]string) func() (Config, error) {
	scratch := flag.NewFlagSet("config", flag.ContinueOnError)
	load := BindConfig(scratch, getenv)
	scratch.VisitAll(func(f *flag.Flag) {
		name := f.Name
		if n, ok := renamed[name]; ok {
			name = n
		}
		fs.Var(f.Value, name, f.Usage)
	})
	return load
}

func enqueueMain(ctx context.Context, args []string, getenv func(string) string, io enqueueIO) int {
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	fs.SetOutput(io.stderr)
	var f enqueueFlags
	fs.StringVar(&f.file, "file", "", `read ids from this file ("-": standard input)`)
	fs.StringVar(&f.column, "column", "", "the file is CSV with a header row: take ids from this column")
	fs.StringVar(&f.field, "field", "", "the file is JSON lines: take ids from this member")
	fs.BoolVar(&f.fromGraph, "from-graph", false, "list the assignments from Graph (AZURE_* credentials, as for run)")
	fs.StringVar(&f.state, "state", "", "with --from-graph: only assignments in this state, e.g. delivered")
	fs.StringVar(&f.accessPackage, "access-package", "", "with --from-graph: only assignments of this access package id")
	fs.StringVar(&f.filter, "filter", "", "with --from-graph: an OData $filter, and-ed with the above")
	fs.StringVar(&f.runID, "run-id", "", "the run id (default: new, printed); reuse it to resume a run")
	fs.Float64Var(&f.rate, "rate", 0, "publishes per second; 0 is unlimited")
	fs.IntVar(&f.window, "window", bulk.DefaultWindow, "publishes awaiting acknowledgement at once")
	fs.BoolVar(&f.dryRun, "dry-run", false, "read and validate the ids and count them; publish nothing")
	fs.BoolVar(&f.wait, "wait", false, "follow the events until every published id has its outcome")
	fs.BoolVar(&f.waitSettled, "wait-settled", false, "with --wait: also wait for each accepted id's settled state")
	fs.DurationVar(&f.timeout, "timeout", time.Hour, "with --wait: give up waiting after this long (0: never)")
	fs.StringVar(&f.report, "report", "", "write one row per id to this .csv or .json file")
	fs.StringVar(&f.requestedBy, "requested-by", "", "requestedBy sent with every request")
	fs.StringVar(&f.reason, "reason", "", "reason sent with every request")
	load := bindWithout(fs, getenv, map[string]string{"rate": "graph-rate"})
	fs.Usage = func() {
		fmt.Fprint(io.stderr, enqueueUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(io.stderr, "reprocessor enqueue: invalid configuration:\n%v\n", err)
		return exitUsage
	}
	if msg := f.check(fs.Args()); msg != "" {
		fmt.Fprintf(io.stderr, "reprocessor enqueue: %s\n", msg)
		return exitUsage
	}
	log, err := NewLogger(io.stderr, cfg.LogLevel, cfg.LogFormat, cfg.Secrets())
	if err != nil {
		fmt.Fprintf(io.stderr, "reprocessor enqueue: %v\n", err)
		return exitUsage
	}
	if f.runID == "" {
		f.runID = newRunID()
	}
	e := &enqueuer{cfg: cfg, f: f, io: io, log: log, getenv: getenv, args: fs.Args()}
	return e.run(ctx)
}

// check returns what is wrong with the flags and arguments, or "".
func (f *enqueueFlags) check(args []string) string {
	sources := 0
	if f.file != "" {
		sources++
	}
	if f.fromGraph {
		sources++
	}
	if len(args) == 1 && args[0] == "-" {
		f.file, args = "-", nil
	}
	if len(args) > 0 {
		sources++
	}
	switch {
	case sources == 0:
		return "give ids as arguments, --file FILE (\"-\" for standard input) or --from-graph"
	case sources > 1:
		return "give ids one way only: arguments, --file or --from-graph"
	case f.column != "" && f.field != "":
		return "--column (CSV) and --field (JSON lines) exclude each other"
	case (f.column != "" || f.field != "") && f.file == "":
		return "--column and --field apply to --file"
	case !f.fromGraph && (f.state != "" || f.accessPackage != "" || f.filter != ""):
		return "--state, --access-package and --filter apply to --from-graph"
	case f.runID != "" && !bulk.ValidRunID(f.runID):
		return fmt.Sprintf("--run-id %q: use 1 to 64 letters, digits, '-' or '_'", f.runID)
	case f.rate < 0 || f.window < 1:
		return "--rate must be 0 or more and --window at least 1"
	case f.waitSettled && !f.wait:
		f.wait = true
	case f.report != "" && reportFormat(f.report) == "":
		return fmt.Sprintf("--report %q: the file name must end in .csv or .json", f.report)
	case f.dryRun && (f.wait || f.report != ""):
		return "--dry-run publishes nothing: --wait and --report do not apply"
	}
	return ""
}

func reportFormat(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv":
		return "csv"
	case ".json":
		return "json"
	}
	return ""
}

func newRunID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "run-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// enqueuer is one enqueue command.
type enqueuer struct {
	cfg    Config
	f      enqueueFlags
	io     enqueueIO
	log    *slog.Logger
	getenv func(string) string
	args   []string

	seen    *idlist.Set
	prior   bulk.PriorRun
	tracker *bulk.Tracker
	pub     *bulk.Publisher

	// counters, read by the progress line
	entries, invalid, dupes, skipped, distinct atomic.Int64
	lastLine                                   atomic.Int64
	readBytes, totalBytes                      atomic.Int64
	pages                                      atomic.Int64
}

func (e *enqueuer) run(ctx context.Context) int {
	e.seen = idlist.NewSet(0)
	e.prior = bulk.PriorRun{Published: idlist.NewSet(0)}
	out := e.io.stdout
	reqSubject, eventsSubject, _ := queue.Config{Prefix: e.cfg.SubjectPrefix}.Subjects()
	runs := bulk.RunsConfig{Prefix: e.cfg.SubjectPrefix, Replicas: e.cfg.StreamReplicas, NoCreate: e.cfg.NoCreate}

	var js jetstream.JetStream
	if !e.f.dryRun {
		nc, err := e.connect(ctx)
		if err != nil {
			fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", err)
			return exitFailed
		}
		defer func() { _ = drain(nc, 10*time.Second) }()
		js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(e.f.window), jetstream.WithPublishAsyncTimeout(30*time.Second))
		if err == nil {
			err = e.ensureStreams(ctx, js, runs)
		}
		if err == nil {
			e.prior, err = bulk.LoadRun(ctx, js, runs, e.f.runID)
		}
		if err != nil {
			fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", err)
			return exitFailed
		}
	}
	if e.prior.Published.Len() > 0 {
		fmt.Fprintf(out, "run id: %s (resumed: %d ids already published by this run are skipped)\n", e.f.runID, e.prior.Published.Len())
	} else if !e.f.dryRun {
		fmt.Fprintf(out, "run id: %s (re-run with --run-id %s to resume without publishing any id twice)\n", e.f.runID, e.f.runID)
	}
	if e.f.wait || e.f.report != "" {
		e.tracker = bulk.NewTracker(e.f.runID, e.f.waitSettled)
	}
	started := time.Now()
	if !e.f.dryRun {
		var err error
		e.pub, err = bulk.NewPublisher(js, bulk.PublisherConfig{
			Subject: reqSubject, RunID: e.f.runID, RequestedBy: e.f.requestedBy, Reason: e.f.reason,
			Runs: runs, Window: e.f.window, Rate: e.f.rate,
		})
		if err != nil {
			fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", err)
			return exitFailed
		}
	}

	stopProgress := e.startProgress(started)
	srcErr := e.readSource(ctx)
	var closeErr error
	if e.pub != nil {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		closeErr = e.pub.Close(closeCtx)
		cancel()
	}
	stopProgress()
	interrupted := ctx.Err() != nil
	if srcErr != nil && !interrupted {
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", srcErr)
	}
	if closeErr != nil {
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", closeErr)
	}
	var sent, acked int64
	if e.pub != nil {
		sent, acked = e.pub.Counts()
	}
	fmt.Fprintf(out, "read %d entries: %d distinct ids, %d duplicates, %d invalid", e.entries.Load(), e.distinct.Load(), e.dupes.Load(), e.invalid.Load())
	if n := e.skipped.Load(); n > 0 {
		fmt.Fprintf(out, ", %d already published by this run", n)
	}
	if e.f.dryRun {
		fmt.Fprintf(out, "; dry run: nothing published\n")
	} else {
		fmt.Fprintf(out, "; published %d (acknowledged %d) in %s\n", sent, acked, time.Since(started).Round(time.Millisecond))
	}
	switch {
	case interrupted:
		where := ""
		if l := e.lastLine.Load(); l > 0 && !e.f.fromGraph {
			where = fmt.Sprintf(" (input read to line %d)", l)
		}
		fmt.Fprintf(out, "interrupted after publishing %d ids%s: re-run with --run-id %s to publish the rest; nothing is published twice\n", acked, where, e.f.runID)
		e.writeReport(bulk.OutcomePublished)
		return exitInterrupted
	case srcErr != nil || closeErr != nil:
		e.writeReport(bulk.OutcomePublished)
		return exitFailed
	}

	code := exitOK
	if e.invalid.Load() > 0 {
		code = exitNotAllAccepted
	}
	if e.f.wait && e.tracker.Len() > 0 {
		since := started
		if !e.prior.Started.IsZero() {
			since = e.prior.Started
		}
		since = since.Add(-time.Minute) // the server's clock stamps the events: allow for skew
		waitCode := e.follow(ctx, js, eventsSubject, since)
		if waitCode != exitOK {
			code = waitCode
		}
		if ctx.Err() != nil {
			code = exitInterrupted
		}
	}
	pending := bulk.OutcomePublished
	if e.f.wait {
		pending = bulk.OutcomePending
	}
	if e.tracker != nil && e.f.wait {
		s := bulk.Summarize(e.tracker.Rows(pending))
		fmt.Fprintf(out, "outcomes: %s\n", bulk.Line(s.Outcomes))
		fmt.Fprintf(out, "error codes: %s\n", bulk.Line(s.ErrorCodes))
		fmt.Fprintf(out, "final states: %s\n", bulk.Line(s.States))
		if code == exitOK && (s.Outcomes[worker.KindFailed] > 0 || s.Outcomes[worker.KindRejected] > 0) {
			code = exitNotAllAccepted
		}
		if code == exitOK && e.f.waitSettled {
			for st, n := range s.States {
				if n > 0 && st != worker.StateDelivered {
					code = exitNotAllAccepted
				}
			}
		}
	}
	if !e.writeReport(pending) && code == exitOK {
		code = exitFailed
	}
	return code
}

// connect connects to NATS_URL, or to the embedded server of a local "reprocessor run".
func (e *enqueuer) connect(ctx context.Context) (*nats.Conn, error) {
	cc := queue.ConnConfigFromEnv(e.getenv)
	cc.URL = e.cfg.NATSURL
	if cc.URL == "" {
		cc.URL = "nats://" + e.cfg.EmbeddedAddr
	}
	cc.Name = "reprocessor-enqueue/" + e.cfg.Instance
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	if e.cfg.LogLevel == "debug" {
		quiet = e.log
	}
	nc, err := queue.Connect(cctx, cc, quiet)
	if err != nil {
		hint := ""
		if e.cfg.NATSURL == "" {
			hint = " (NATS_URL is not set: is \"reprocessor run\" running on this machine?)"
		}
		return nil, fmt.Errorf("connect to NATS %s: %w%s", cc.Redacted(), err, hint)
	}
	return nc, nil
}

// ensureStreams creates the worker's streams (as "run" does) when the requests stream does
// not exist yet, and the run record stream.
func (e *enqueuer) ensureStreams(ctx context.Context, js jetstream.JetStream, runs bulk.RunsConfig) error {
	stream := cmp.Or(queueConfig(e.cfg).RequestsStream, queue.DefaultRequestsStream)
	if _, err := js.Stream(ctx, stream); errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := queue.Setup(ctx, js, queueConfig(e.cfg), e.log); err != nil {
			return fmt.Errorf("set up the streams: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("look up stream %s: %w", stream, err)
	}
	return bulk.EnsureRunsStream(ctx, js, runs)
}

// maxInvalidShown bounds the invalid lines printed one by one.
const maxInvalidShown = 100

// readSource reads the ids from the arguments, the file or Graph and publishes each new one.
func (e *enqueuer) readSource(ctx context.Context) error {
	handle := func(en idlist.Entry) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		e.entries.Add(1)
		e.lastLine.Store(int64(en.Line))
		if en.Invalid != "" {
			if n := e.invalid.Add(1); n <= maxInvalidShown {
				where := fmt.Sprintf("line %d", en.Line)
				if len(e.args) > 0 {
					where = fmt.Sprintf("argument %d", en.Line)
				}
				fmt.Fprintf(e.io.stderr, "%s: %s: %q\n", where, en.Invalid, en.Raw)
			} else if n == maxInvalidShown+1 {
				fmt.Fprintf(e.io.stderr, "more invalid lines: counted, not shown\n")
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
	switch {
	case len(e.args) > 0:
		e.totalBytes.Store(int64(len(e.args)))
		for i, a := range e.args {
			en := idlist.Entry{Line: i + 1, Raw: a}
			if id, ok := idlist.Parse(strings.TrimSpace(a)); ok {
				en.ID = id
			} else {
				en.Invalid = "not an assignment id (a GUID, 8-4-4-4-12 hexadecimal digits)"
			}
			if err := handle(en); err != nil {
				return err
			}
			e.readBytes.Store(int64(i + 1))
		}
		return nil
	case e.f.fromGraph:
		return e.listGraph(ctx, func(id idlist.ID) error { return handle(idlist.Entry{ID: id}) })
	}
	var r io.Reader = e.io.stdin
	if e.f.file != "-" {
		fh, err := os.Open(e.f.file)
		if err != nil {
			return fmt.Errorf("open ids: %w", err)
		}
		defer fh.Close()
		if fi, err := fh.Stat(); err == nil && fi.Mode().IsRegular() {
			e.totalBytes.Store(fi.Size())
		}
		r = fh
	}
	return idlist.Read(countingReader{r, &e.readBytes}, idlist.Format{Column: e.f.column, Field: e.f.field}, handle)
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

// listGraph lists the assignments from Graph with the worker's credential, rate limit
// (REPROCESSOR_RATE, --graph-rate) and backoff.
func (e *enqueuer) listGraph(ctx context.Context, fn func(idlist.ID) error) error {
	m := metrics.New(prometheus.NewRegistry(), buildInfo())
	cred, client, err := newGraph(e.cfg, e.getenv, e.io.graphHTTP, m, e.log, nil)
	if err != nil {
		return err
	}
	credCtx, stopCred := context.WithCancel(ctx)
	credDone := make(chan struct{})
	go func() { defer close(credDone); cred.Run(credCtx) }()
	defer func() { stopCred(); <-credDone; cred.Close() }()
	var limiter bulk.Limiter
	switch {
	case e.cfg.RateAuto:
		// Listing makes one call per page of up to 999 assignments, so it never needs more
		// than the auto rate's starting point; Retry-After is honoured on top.
		limiter = rate.NewLimiter(rate.Limit(e.cfg.RateInitial), 1)
	case e.cfg.Rate > 0:
		limiter = ratelimit.Fixed(e.cfg.Rate)
	}
	return bulk.ListFromGraph(ctx, client, bulk.ListConfig{
		Query:   graph.ListQuery{State: e.f.state, AccessPackageID: e.f.accessPackage, Filter: e.f.filter, Top: 999},
		Limiter: limiter,
		Backoff: worker.Backoff{Initial: e.cfg.BackoffInitial, Max: e.cfg.BackoffMax},
		OnPage:  func(int, int) { e.pages.Add(1) },
	}, fn)
}

// startProgress shows progress until the returned function is called: a bar redrawn on a
// terminal, else a line every few seconds.
func (e *enqueuer) startProgress(started time.Time) func() {
	return e.every(func() { e.showProgress(started) })
}

// every calls show on a ticker (quickly on a terminal, every few seconds otherwise) until
// the returned function is called, which clears the terminal's progress line.
func (e *enqueuer) every(show func()) func() {
	interval := e.io.progress
	if interval == 0 {
		interval = 5 * time.Second
		if e.io.tty {
			interval = 250 * time.Millisecond
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				if e.io.tty {
					fmt.Fprint(e.io.stderr, "\r\033[K")
				}
				return
			case <-t.C:
				show()
			}
		}
	}()
	return func() { close(stop); <-done }
}

func (e *enqueuer) showProgress(started time.Time) {
	var acked int64
	if e.pub != nil {
		_, acked = e.pub.Counts()
	}
	done := acked
	if e.pub == nil {
		done = e.distinct.Load()
	}
	elapsed := time.Since(started)
	perSec := float64(done) / max(elapsed.Seconds(), 0.001)
	read, total := e.readBytes.Load(), e.totalBytes.Load()
	var frac float64 = -1
	if total > 0 {
		frac = min(1, float64(read)/float64(total))
	}
	where := ""
	switch {
	case e.f.fromGraph:
		where = fmt.Sprintf("%d pages listed", e.pages.Load())
	case frac >= 0:
		where = fmt.Sprintf("%.0f%% of input read", 100*frac)
	default:
		where = fmt.Sprintf("line %d", e.lastLine.Load())
	}
	eta := ""
	if frac > 0 && frac < 1 {
		eta = " · ETA " + (time.Duration(float64(elapsed)/frac) - elapsed).Round(time.Second).String()
	}
	msg := fmt.Sprintf("published %d of %d distinct ids (%d invalid, %d duplicates) · %s · %.0f ids/s%s",
		done, e.distinct.Load()-e.skipped.Load(), e.invalid.Load(), e.dupes.Load(), where, perSec, eta)
	if e.io.tty {
		const width = 24
		filled := 0
		if frac >= 0 {
			filled = int(frac * width)
		}
		fmt.Fprintf(e.io.stderr, "\r\033[K[%s%s] %s", strings.Repeat("#", filled), strings.Repeat(".", width-filled), msg)
		return
	}
	fmt.Fprintln(e.io.stderr, msg)
}

// follow waits for the outcome of every tracked id, showing live counts; it returns an exit
// code.
func (e *enqueuer) follow(ctx context.Context, js jetstream.JetStream, eventsSubject string, since time.Time) int {
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if e.f.timeout > 0 {
		wctx, cancel = context.WithTimeout(ctx, e.f.timeout)
	}
	defer cancel()
	stopShowing := e.every(func() {
		counts, remaining := e.tracker.Counts()
		line := fmt.Sprintf("waiting: %s; %d to go", bulk.Line(counts), remaining)
		if e.io.tty {
			fmt.Fprintf(e.io.stderr, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(e.io.stderr, line)
		}
	})
	stream := cmp.Or(queueConfig(e.cfg).EventsStream, queue.DefaultEventsStream)
	err := bulk.Follow(wctx, js, stream, eventsSubject, since, e.tracker)
	stopShowing()
	switch {
	case err == nil:
		return exitOK
	case ctx.Err() != nil:
		return exitInterrupted
	case errors.Is(err, context.DeadlineExceeded):
		_, remaining := e.tracker.Counts()
		fmt.Fprintf(e.io.stdout, "timed out after %s: %d ids have no outcome yet (pending in the report)\n", e.f.timeout, remaining)
		return exitTimedOut
	default:
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", err)
		return exitFailed
	}
}

// writeReport writes the report when one was asked for; it reports false on failure.
func (e *enqueuer) writeReport(pending string) bool {
	if e.f.report == "" || e.tracker == nil {
		return true
	}
	fh, err := os.Create(e.f.report)
	if err == nil {
		err = bulk.WriteReport(fh, reportFormat(e.f.report), e.tracker.Rows(pending))
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: report: %v\n", err)
		return false
	}
	fmt.Fprintf(e.io.stdout, "report: %s (%d rows)\n", e.f.report, e.tracker.Len())
	return true
}

package cli

import (
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

	"github.com/reprocessor/reprocessor/bulk"
	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/ratelimit"
	"github.com/reprocessor/reprocessor/version"
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
or rejected (with --wait-settled: or not settled delivered, or their resources not
restored); 4 --timeout passed;
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

// parseBulkCommand parses the flags of a command that takes the configuration's flags
// (REPROCESSOR_RATE as --graph-rate) beside its own (enqueue, drift): it loads the
// configuration, checks the command's own flags and arguments with check, and makes the
// logger. When ok is false the command ends with code (its usage, or exitOK for --help).
func parseBulkCommand(name, usage string, fs *flag.FlagSet, args []string, getenv func(string) string, stderr io.Writer,
	check func(args []string) string) (cfg config.Config, log *slog.Logger, code int, ok bool) {
	load := bindWithout(fs, getenv, map[string]string{"rate": "graph-rate"})
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, nil, exitOK, false
		}
		return cfg, nil, exitUsage, false
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor %s: invalid configuration:\n%v\n", name, err)
		return cfg, nil, exitUsage, false
	}
	if msg := check(fs.Args()); msg != "" {
		fmt.Fprintf(stderr, "reprocessor %s: %s\n", name, msg)
		return cfg, nil, exitUsage, false
	}
	if log, err = logging.New(stderr, cfg.LogLevel, cfg.LogFormat, cfg.Secrets()); err != nil {
		fmt.Fprintf(stderr, "reprocessor %s: %v\n", name, err)
		return cfg, nil, exitUsage, false
	}
	return cfg, log, exitOK, true
}

// bindWithout registers on fs every config flag but the ones renamed, under their new
// names, and returns the config loader.
func bindWithout(fs *flag.FlagSet, getenv func(string) string, renamed map[string]string) func() (config.Config, error) {
	scratch := flag.NewFlagSet("config", flag.ContinueOnError)
	load := config.Bind(scratch, getenv)
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
	cfg, log, code, ok := parseBulkCommand("enqueue", enqueueUsage, fs, args, getenv, io.stderr, f.check)
	if !ok {
		return code
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

// enqueuer is one enqueue command: the run, and what is shown of it.
type enqueuer struct {
	cfg    config.Config
	f      enqueueFlags
	io     enqueueIO
	log    *slog.Logger
	getenv func(string) string
	args   []string
	job    *bulk.Enqueue
	// reasonFor, if set, gives each id its own reason (drift: what it lacked).
	reasonFor func(idlist.ID) string
}

// maxInvalidShown bounds the invalid lines printed one by one.
const maxInvalidShown = 100

func (e *enqueuer) run(ctx context.Context) int {
	out := e.io.stdout
	var shown atomic.Int64
	e.job = bulk.NewEnqueue(bulk.EnqueueConfig{
		Queue:       e.cfg.Queue(),
		Runs:        bulk.RunsConfig{Prefix: e.cfg.SubjectPrefix, Replicas: e.cfg.StreamReplicas, NoCreate: e.cfg.NoCreate},
		RunID:       e.f.runID,
		RequestedBy: e.f.requestedBy,
		Reason:      e.f.reason,
		ReasonFor:   e.reasonFor,
		Window:      e.f.window,
		Rate:        e.f.rate,
		DryRun:      e.f.dryRun,
		Track:       e.f.wait || e.f.report != "",
		WaitSettled: e.f.waitSettled,
		Logger:      e.log,
		OnInvalid: func(en idlist.Entry) {
			if n := shown.Add(1); n <= maxInvalidShown {
				where := fmt.Sprintf("line %d", en.Line)
				if len(e.args) > 0 {
					where = fmt.Sprintf("argument %d", en.Line)
				}
				fmt.Fprintf(e.io.stderr, "%s: %s: %q\n", where, en.Invalid, en.Raw)
			} else if n == maxInvalidShown+1 {
				fmt.Fprintf(e.io.stderr, "more invalid lines: counted, not shown\n")
			}
		},
	})
	r := e.job
	if !e.f.dryRun {
		nc, err := e.connect(ctx)
		if err != nil {
			fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", err)
			return exitFailed
		}
		defer func() { _ = queue.Drain(nc, 10*time.Second) }()
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(e.f.window), jetstream.WithPublishAsyncTimeout(30*time.Second))
		if err == nil {
			err = r.Open(ctx, js)
		}
		if err != nil {
			fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", err)
			return exitFailed
		}
		if n := r.Resumed(); n > 0 {
			fmt.Fprintf(out, "run id: %s (resumed: %d ids already published by this run are skipped)\n", e.f.runID, n)
		} else {
			fmt.Fprintf(out, "run id: %s (re-run with --run-id %s to resume without publishing any id twice)\n", e.f.runID, e.f.runID)
		}
	}

	stopProgress := e.every(e.showProgress)
	srcErr := e.readSource(ctx)
	closeErr := r.Close(ctx)
	stopProgress()
	interrupted := ctx.Err() != nil
	if srcErr != nil && !interrupted {
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", srcErr)
	}
	if closeErr != nil {
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", closeErr)
	}
	p := r.Progress()
	fmt.Fprintf(out, "read %d entries: %d distinct ids, %d duplicates, %d invalid", p.Entries, p.Distinct, p.Duplicates, p.Invalid)
	if p.Skipped > 0 {
		fmt.Fprintf(out, ", %d already published by this run", p.Skipped)
	}
	if e.f.dryRun {
		fmt.Fprintf(out, "; dry run: nothing published\n")
	} else {
		fmt.Fprintf(out, "; published %d (acknowledged %d) in %s\n", p.Sent, p.Acked, p.Elapsed.Round(time.Millisecond))
	}
	switch {
	case interrupted:
		where := ""
		if p.LastLine > 0 && !e.f.fromGraph {
			where = fmt.Sprintf(" (input read to line %d)", p.LastLine)
		}
		fmt.Fprintf(out, "interrupted after publishing %d ids%s: re-run with --run-id %s to publish the rest; nothing is published twice\n", p.Acked, where, e.f.runID)
		e.writeReport(bulk.OutcomePublished)
		return exitInterrupted
	case srcErr != nil || closeErr != nil:
		e.writeReport(bulk.OutcomePublished)
		return exitFailed
	}

	code := exitOK
	if p.Invalid > 0 {
		code = exitNotAllAccepted
	}
	tracker := r.Tracker()
	if e.f.wait && tracker.Len() > 0 {
		if waitCode := e.follow(ctx); waitCode != exitOK {
			code = waitCode
		}
		if ctx.Err() != nil {
			code = exitInterrupted
		}
	}
	pending := bulk.OutcomePublished
	if e.f.wait {
		pending = bulk.OutcomePending
		s := bulk.Summarize(tracker.Rows(pending))
		fmt.Fprintf(out, "outcomes: %s\n", bulk.Line(s.Outcomes))
		fmt.Fprintf(out, "error codes: %s\n", bulk.Line(s.ErrorCodes))
		fmt.Fprintf(out, "final states: %s\n", bulk.Line(s.States))
		if len(s.Resources) > 0 {
			fmt.Fprintf(out, "resources: %s\n", bulk.Line(s.Resources))
		}
		if code == exitOK && (s.Outcomes[worker.KindFailed] > 0 || s.Outcomes[worker.KindRejected] > 0) {
			code = exitNotAllAccepted
		}
		if code == exitOK && e.f.waitSettled {
			for st, n := range s.States {
				if n > 0 && st != worker.StateDelivered {
					code = exitNotAllAccepted
				}
			}
			if s.Resources["not restored"] > 0 {
				code = exitNotAllAccepted
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
	cc, from, err := queue.Resolve(e.getenv, e.cfg.NATSURL, e.cfg.NATSContext)
	if err != nil {
		return nil, err
	}
	if from == queue.FromNone {
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
		if from == queue.FromNone {
			hint = " (no NATS_URL and no NATS context: is \"reprocessor run\" running on this machine?)"
		}
		return nil, fmt.Errorf("connect to NATS %s: %w%s", cc.Redacted(), err, hint)
	}
	return nc, nil
}

// readSource hands the arguments, the file or Graph's list to the run.
func (e *enqueuer) readSource(ctx context.Context) error {
	switch {
	case len(e.args) > 0:
		return e.job.PublishArgs(ctx, e.args)
	case e.f.fromGraph:
		return e.listGraph(ctx)
	}
	var r io.Reader = e.io.stdin
	var size int64
	if e.f.file != "-" {
		fh, err := os.Open(e.f.file)
		if err != nil {
			return fmt.Errorf("open ids: %w", err)
		}
		defer fh.Close()
		if fi, err := fh.Stat(); err == nil && fi.Mode().IsRegular() {
			size = fi.Size()
		}
		r = fh
	}
	return e.job.PublishList(ctx, r, size, idlist.Format{Column: e.f.column, Field: e.f.field})
}

// listGraph lists the assignments from Graph with the worker's credential, rate limit
// (REPROCESSOR_RATE, --graph-rate) and backoff.
func (e *enqueuer) listGraph(ctx context.Context) error {
	m := metrics.New(prometheus.NewRegistry(), version.Info())
	gs := e.cfg.Graph()
	gs.HTTPClient, gs.Observe, gs.Logger = e.io.graphHTTP, m.ObserveGraph, e.log
	session, err := graph.Open(e.getenv, gs)
	if err != nil {
		return err
	}
	defer session.Close()
	var limiter bulk.Limiter
	switch {
	case e.cfg.RateAuto:
		// Listing makes one call per page of up to 999 assignments, so it never needs more
		// than the auto rate's starting point; Retry-After is honoured on top.
		limiter = ratelimit.Fixed(e.cfg.RateInitial)
	case e.cfg.Rate > 0:
		limiter = ratelimit.Fixed(e.cfg.Rate)
	}
	return e.job.PublishGraph(ctx, session.Client, bulk.ListConfig{
		Query:   graph.ListQuery{State: e.f.state, AccessPackageID: e.f.accessPackage, Filter: e.f.filter, Top: 999},
		Limiter: limiter,
		Backoff: e.cfg.Backoff(),
	})
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

// showProgress draws the publishing progress: a bar on a terminal, else a line.
func (e *enqueuer) showProgress() {
	p := e.job.Progress()
	done := p.Done(e.f.dryRun)
	perSec := float64(done) / max(p.Elapsed.Seconds(), 0.001)
	var frac float64 = -1
	if p.TotalBytes > 0 {
		frac = min(1, float64(p.ReadBytes)/float64(p.TotalBytes))
	}
	where := ""
	switch {
	case e.f.fromGraph:
		where = fmt.Sprintf("%d pages listed", p.Pages)
	case frac >= 0:
		where = fmt.Sprintf("%.0f%% of input read", 100*frac)
	default:
		where = fmt.Sprintf("line %d", p.LastLine)
	}
	eta := ""
	if frac > 0 && frac < 1 {
		eta = " · ETA " + (time.Duration(float64(p.Elapsed)/frac) - p.Elapsed).Round(time.Second).String()
	}
	msg := fmt.Sprintf("published %d of %d distinct ids (%d invalid, %d duplicates) · %s · %.0f ids/s%s",
		done, p.Distinct-p.Skipped, p.Invalid, p.Duplicates, where, perSec, eta)
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
func (e *enqueuer) follow(ctx context.Context) int {
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if e.f.timeout > 0 {
		wctx, cancel = context.WithTimeout(ctx, e.f.timeout)
	}
	defer cancel()
	tracker := e.job.Tracker()
	stopShowing := e.every(func() {
		counts, remaining := tracker.Counts()
		line := fmt.Sprintf("waiting: %s; %d to go", bulk.Line(counts), remaining)
		if e.io.tty {
			fmt.Fprintf(e.io.stderr, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(e.io.stderr, line)
		}
	})
	err := e.job.Follow(wctx)
	stopShowing()
	switch {
	case err == nil:
		return exitOK
	case ctx.Err() != nil:
		return exitInterrupted
	case errors.Is(err, context.DeadlineExceeded):
		_, remaining := tracker.Counts()
		fmt.Fprintf(e.io.stdout, "timed out after %s: %d ids have no outcome yet (pending in the report)\n", e.f.timeout, remaining)
		return exitTimedOut
	default:
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: %v\n", err)
		return exitFailed
	}
}

// writeReport writes the report when one was asked for; it reports false on failure.
func (e *enqueuer) writeReport(pending string) bool {
	tracker := e.job.Tracker()
	if e.f.report == "" || tracker == nil {
		return true
	}
	fh, err := os.Create(e.f.report)
	if err == nil {
		err = bulk.WriteReport(fh, reportFormat(e.f.report), tracker.Rows(pending))
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(e.io.stderr, "reprocessor enqueue: report: %v\n", err)
		return false
	}
	fmt.Fprintf(e.io.stdout, "report: %s (%d rows)\n", e.f.report, tracker.Len())
	return true
}

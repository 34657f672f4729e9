package cli

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/reprocessor/reprocessor/bulk"
	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/drift"
	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/ratelimit"
	"github.com/reprocessor/reprocessor/service"
	"github.com/reprocessor/reprocessor/version"
)

// exitDrift is drift's exit status when it found drifted assignments.
const exitDrift = 3

const driftUsage = `usage: reprocessor drift [flags]
       reprocessor drift --enqueue [--wait-settled] [--run-id ID]
       reprocessor drift --every 1h --enqueue      (a long-running scanner)

Finds the delivered access package assignments whose targets no longer hold what their
package grants: each package's group (member, owner) and app role resource roles against
the groups' direct members and owners and the applications' app role assignments, read
through Graph with the worker's credential (AZURE_*), rate limit and Retry-After handling.
SharePoint roles cannot be read this way and are counted as unchecked; assignments that
started within --grace are skipped. Needs EntitlementManagement.Read.All,
GroupMember.Read.All and Application.Read.All.

Exit status: 0 no drift; 3 drift found; 1 an error (Graph, NATS, the report); 2 bad
arguments. --every runs until interrupted.

Flags of drift:
`

type driftFlags struct {
	packages          stringList
	catalog           string
	grace             time.Duration
	concurrency       int
	report            string
	enqueue           bool
	every             time.Duration
	enq               enqueueFlags // --run-id, --wait, --wait-settled, --timeout, --enqueue-report
	enqueueReportPath string
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func cmdDrift(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return driftMain(ctx, args, getenv, enqueueIO{stdin: os.Stdin, stdout: stdout, stderr: stderr, tty: isTTY(os.Stderr)})
}

func driftMain(ctx context.Context, args []string, getenv func(string) string, io enqueueIO) int {
	fs := flag.NewFlagSet("drift", flag.ContinueOnError)
	fs.SetOutput(io.stderr)
	var f driftFlags
	fs.Var(&f.packages, "access-package", "scan this access package id (repeatable); default every package")
	fs.StringVar(&f.catalog, "catalog", "", "scan the access packages of this catalog id")
	fs.DurationVar(&f.grace, "grace", drift.DefaultGrace, "skip assignments that started less than this long ago")
	fs.IntVar(&f.concurrency, "packages-at-once", drift.DefaultConcurrency, "access packages scanned at once")
	fs.StringVar(&f.report, "report", "", "write one row per drifted assignment to this .csv or .json file")
	fs.BoolVar(&f.enqueue, "enqueue", false, "publish the drifted assignments for reprocessing, as an enqueue run")
	fs.DurationVar(&f.every, "every", 0, "scan on this schedule until interrupted, enqueuing (with --enqueue) only what newly drifted")
	fs.StringVar(&f.enq.runID, "run-id", "", "with --enqueue: the run id (default: new, printed); reuse it to resume a run")
	fs.BoolVar(&f.enq.wait, "wait", false, "with --enqueue: follow the events until every drifted assignment has its outcome")
	fs.BoolVar(&f.enq.waitSettled, "wait-settled", false, "with --enqueue: also wait for each accepted assignment's settled state (and resources, with REPROCESSOR_VERIFY_RESOURCES)")
	fs.DurationVar(&f.enq.timeout, "timeout", time.Hour, "with --wait: give up waiting after this long (0: never)")
	fs.StringVar(&f.enqueueReportPath, "enqueue-report", "", "with --enqueue: write one row per enqueued id and its outcome to this .csv or .json file")
	cfg, log, code, ok := parseBulkCommand("drift", driftUsage, fs, args, getenv, io.stderr, f.check)
	if !ok {
		return code
	}
	d := &drifter{cfg: cfg, f: f, io: io, log: log, getenv: getenv}
	return d.run(ctx)
}

func (f *driftFlags) check(args []string) string {
	for _, p := range f.packages {
		if !graph.ValidID(strings.TrimSpace(p)) {
			return fmt.Sprintf("--access-package %q is not an id (a GUID)", p)
		}
	}
	switch {
	case len(args) > 0:
		return fmt.Sprintf("unexpected argument %q", args[0])
	case f.catalog != "" && !graph.ValidID(f.catalog):
		return fmt.Sprintf("--catalog %q is not an id (a GUID)", f.catalog)
	case f.catalog != "" && len(f.packages) > 0:
		return "--catalog and --access-package exclude each other"
	case f.grace < 0:
		return "--grace must not be negative"
	case f.concurrency < 1 || f.concurrency > 64:
		return "--packages-at-once must be from 1 to 64"
	case f.report != "" && reportFormat(f.report) == "":
		return fmt.Sprintf("--report %q: the file name must end in .csv or .json", f.report)
	case f.enqueueReportPath != "" && reportFormat(f.enqueueReportPath) == "":
		return fmt.Sprintf("--enqueue-report %q: the file name must end in .csv or .json", f.enqueueReportPath)
	case !f.enqueue && (f.enq.runID != "" || f.enq.wait || f.enq.waitSettled || f.enqueueReportPath != ""):
		return "--run-id, --wait, --wait-settled and --enqueue-report apply to --enqueue"
	case f.every < 0 || f.every > 0 && f.every < time.Second:
		return "--every must be at least 1s"
	case f.every > 0 && (f.enq.wait || f.enq.waitSettled || f.enq.runID != "" || f.enqueueReportPath != ""):
		return "--every enqueues a run per scan: --run-id, --wait, --wait-settled and --enqueue-report do not apply"
	case f.enq.runID != "" && !bulk.ValidRunID(f.enq.runID):
		return fmt.Sprintf("--run-id %q: use 1 to 64 letters, digits, '-' or '_'", f.enq.runID)
	}
	if f.enq.waitSettled {
		f.enq.wait = true
	}
	f.enq.report = f.enqueueReportPath
	f.enq.window = 4096
	return ""
}

// drifter is one drift command.
type drifter struct {
	cfg    config.Config
	f      driftFlags
	io     enqueueIO
	log    *slog.Logger
	getenv func(string) string
	reg    *prometheus.Registry
	client *graph.Client
}

func (d *drifter) run(ctx context.Context) int {
	d.reg = prometheus.NewRegistry()
	m := metrics.New(d.reg, version.Info())
	gs := d.cfg.Graph()
	gs.HTTPClient, gs.Observe, gs.Logger = d.io.graphHTTP, m.ObserveGraph, d.log
	session, err := graph.Open(d.getenv, gs)
	if err != nil {
		fmt.Fprintf(d.io.stderr, "reprocessor drift: %v\n", err)
		return exitFailed
	}
	defer session.Close()
	d.client = session.V1()
	if d.f.every > 0 {
		return d.schedule(ctx)
	}
	scan := d.newScan()
	stop := d.progress(scan)
	found, sum, err := scan.Run(ctx)
	stop()
	d.summarize(d.io.stdout, found, sum)
	if err != nil {
		fmt.Fprintf(d.io.stderr, "reprocessor drift: %v\n", err)
		if ctx.Err() != nil {
			return exitInterrupted
		}
		return exitFailed
	}
	if !d.writeReport(found) {
		return exitFailed
	}
	code := exitOK
	if len(found) > 0 {
		code = exitDrift
	}
	if d.f.enqueue && len(found) > 0 {
		if c := d.enqueue(ctx, d.f.enq, found); c != exitOK && c != exitNotAllAccepted {
			return c
		}
	}
	return code
}

// newScan returns a scan of the configured scope, paced as the worker is: REPROCESSOR_RATE
// (auto: adaptive from Graph's answers) for entitlement management, and the same again
// apart for the directory reads, which have a budget of their own.
func (d *drifter) newScan() *drift.Scan {
	return drift.New(drift.Config{
		Reader:      d.client,
		Packages:    d.f.packages,
		Catalog:     d.f.catalog,
		Grace:       d.f.grace,
		Concurrency: d.f.concurrency,
		Entitlement: &drift.Budget{Limiter: d.limiter("entitlement management")},
		Directory:   &drift.Budget{Limiter: d.limiter("directory")},
		Backoff:     d.cfg.Backoff(),
	})
}

func (d *drifter) limiter(name string) drift.Limiter {
	switch {
	case !d.cfg.RateAuto && d.cfg.Rate <= 0:
		return nil // REPROCESSOR_RATE=0: unlimited
	case !d.cfg.RateAuto:
		return ratelimit.Fixed(d.cfg.Rate)
	}
	a, err := ratelimit.New(ratelimit.Config{Ceiling: d.cfg.RateCeiling, Initial: d.cfg.RateInitial,
		Logger: d.log.With("budget", name)})
	if err != nil {
		return ratelimit.Fixed(d.cfg.RateInitial)
	}
	return a
}

// progress shows the scan's progress until the returned function is called.
func (d *drifter) progress(scan *drift.Scan) func() {
	e := &enqueuer{io: d.io}
	return e.every(func() {
		p := scan.Progress()
		eta := ""
		if p.PackagesTotal > 0 && p.PackagesDone > 0 && p.PackagesDone < p.PackagesTotal {
			left := time.Duration(float64(p.Elapsed) / float64(p.PackagesDone) * float64(p.PackagesTotal-p.PackagesDone))
			eta = " · ETA " + left.Round(time.Second).String()
		}
		total := "?"
		if p.PackagesTotal > 0 {
			total = fmt.Sprint(p.PackagesTotal)
		}
		line := fmt.Sprintf("packages %d/%s · assignments checked %d · drifted %d · Graph calls %d%s",
			p.PackagesDone, total, p.Assignments, p.Drifted, p.Calls, eta)
		if d.io.tty {
			fmt.Fprintf(d.io.stderr, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(d.io.stderr, line)
		}
	})
}

// summarize prints what a scan found.
func (d *drifter) summarize(w io.Writer, found []drift.Drifted, sum drift.Summary) {
	fmt.Fprintf(w, "scanned %d access packages in %s: %d delivered assignments checked, %d drifted, %d skipped (started within %s), %d without a target object, %d SharePoint role checks unchecked\n",
		sum.Packages, sum.Elapsed.Round(time.Millisecond), sum.Assignments, sum.Drifted, sum.Skipped, d.f.grace, sum.NoTarget, sum.UncheckedRoles)
	var calls []string
	var total int64
	for _, op := range metrics.GraphOperations {
		if n := sum.Calls[op]; n > 0 {
			calls = append(calls, fmt.Sprintf("%s %d", op, n))
			total += n
		}
	}
	fmt.Fprintf(w, "Graph calls: %d (%s); throttled %d\n", total, strings.Join(calls, ", "), sum.Throttled)
	const shown = 20
	for i, x := range found {
		if i == shown {
			fmt.Fprintf(w, "... and %d more drifted (all in --report)\n", len(found)-shown)
			break
		}
		fmt.Fprintf(w, "drifted: %s (%s, package %s): %s\n", x.AssignmentID, cmpStr(x.PrincipalName, x.TargetObjectID), x.AccessPackageID, strings.TrimPrefix(x.Reason(), "drift: "))
	}
	for _, fnd := range sum.Findings {
		fmt.Fprintf(w, "finding: %s: package %s, resource %s: %s\n", fnd.Kind, fnd.AccessPackageID, cmpStr(fnd.ResourceID, "-"), fnd.Detail)
	}
}

func cmpStr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// writeReport writes the drifted rows to --report; it reports false on failure.
func (d *drifter) writeReport(found []drift.Drifted) bool {
	if d.f.report == "" {
		return true
	}
	fh, err := os.Create(d.f.report)
	if err == nil {
		err = writeDriftReport(fh, reportFormat(d.f.report), found)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(d.io.stderr, "reprocessor drift: report: %v\n", err)
		return false
	}
	fmt.Fprintf(d.io.stdout, "report: %s (%d rows)\n", d.f.report, len(found))
	return true
}

func writeDriftReport(w io.Writer, format string, found []drift.Drifted) error {
	if format == "json" {
		if found == nil {
			found = []drift.Drifted{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(found)
	}
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"assignmentId", "accessPackageId", "accessPackage", "targetObjectId", "principalName", "missing"})
	for _, x := range found {
		parts := make([]string, len(x.Missing))
		for i, m := range x.Missing {
			parts[i] = m.String()
		}
		_ = cw.Write([]string{x.AssignmentID, x.AccessPackageID, csvSafe(x.AccessPackage), x.TargetObjectID, csvSafe(x.PrincipalName), strings.Join(parts, "; ")})
	}
	cw.Flush()
	return cw.Error()
}

// csvSafe keeps a value a spreadsheet would run as a formula from being one.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// enqueue publishes the drifted assignments as an enqueue run, each with the reason
// naming what it lacked, and (with --wait) follows them; it returns enqueue's exit code.
func (d *drifter) enqueue(ctx context.Context, f enqueueFlags, found []drift.Drifted) int {
	if f.runID == "" {
		f.runID = newRunID()
	}
	reasons := make(map[idlist.ID]string, len(found))
	args := make([]string, 0, len(found))
	for _, x := range found {
		id, ok := idlist.Parse(x.AssignmentID)
		if !ok {
			continue
		}
		reasons[id] = x.Reason()
		args = append(args, x.AssignmentID)
	}
	f.requestedBy = "reprocessor drift"
	e := &enqueuer{cfg: d.cfg, f: f, io: d.io, log: d.log, getenv: d.getenv, args: args,
		reasonFor: func(id idlist.ID) string { return reasons[id] }}
	return e.run(ctx)
}

// schedule scans every --every until interrupted, serving /metrics and health.
func (d *drifter) schedule(ctx context.Context) int {
	dm := metrics.NewDrift(d.reg)
	if err := metrics.RegisterRuntimeCollectors(d.reg); err != nil {
		d.log.Warn("runtime metrics", "err", err)
	}
	sc := drift.ScheduleConfig{
		Every: d.f.every, Scan: d.newScan, Observer: dm, Logger: d.log,
		OnScan: func(n int, found []drift.Drifted, sum drift.Summary, err error) {
			if err == nil && d.f.report != "" {
				d.writeReport(found)
			}
		},
	}
	if d.f.enqueue {
		// What was enqueued is kept in the runs stream, so that a restart enqueues it not again.
		e := &enqueuer{cfg: d.cfg, io: d.io, log: d.log, getenv: d.getenv}
		nc, err := e.connect(ctx)
		if err != nil {
			fmt.Fprintf(d.io.stderr, "reprocessor drift: %v\n", err)
			return exitFailed
		}
		defer func() { _ = queue.Drain(nc, 10*time.Second) }()
		js, err := jetstream.New(nc)
		if err == nil {
			sc.State, err = bulk.NewScannerState(ctx, js, bulk.RunsConfig{Prefix: d.cfg.SubjectPrefix, Replicas: d.cfg.StreamReplicas, NoCreate: d.cfg.NoCreate}, nc.MaxPayload())
		}
		if err != nil {
			fmt.Fprintf(d.io.stderr, "reprocessor drift: %v\n", err)
			return exitFailed
		}
		sc.Enqueue = func(ctx context.Context, n int, ds []drift.Drifted) error {
			f := d.f.enq
			f.runID = fmt.Sprintf("drift-%s-%d", time.Now().UTC().Format("20060102-150405"), n)
			if code := d.enqueue(ctx, f, ds); code != exitOK {
				return fmt.Errorf("enqueue run %s ended with status %d", f.runID, code)
			}
			return nil
		}
	}
	sched := drift.NewScheduler(sc)
	checks := []metrics.Check{{Name: "last drift scan", Func: sched.Healthy}}
	addr, stopHTTP, err := service.ServeHTTP(d.cfg.HTTPAddr, metrics.Handler(d.reg, checks, d.log), d.log)
	if err != nil {
		fmt.Fprintf(d.io.stderr, "reprocessor drift: %v\n", err)
		return exitFailed
	}
	defer stopHTTP()
	d.log.Info("drift scanner started", "every", d.f.every, "http", addr, "enqueue", d.f.enqueue)
	sched.Run(ctx)
	d.log.Info("drift scanner stopped")
	return exitOK
}

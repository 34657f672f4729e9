package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/bulk"
	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/queue"
)

const dlqUsage = `usage: reprocessor dlq list [--json] [--reason CODE[,CODE]] [--since 24h|RFC3339] [--limit N]
       reprocessor dlq replay [--dry-run] [--reason CODE[,CODE]] [--since ...] [--limit N]

list prints the dead letters: stream sequence, time, assignment id, error code, attempts and
detail (--json: one JSON object a line). replay re-publishes the selected dead letters to the
requests subject with their original data and headers, and deletes each from the dead-letter
stream once its publish is acknowledged. NATS_URL unset means the embedded server of a
"reprocessor run" on this machine (nats://127.0.0.1:4222); dlq never starts a server.

Flags:
`

func cmdDLQ(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		fmt.Fprint(stderr, dlqUsage)
		fmt.Fprintln(stderr, "\nreprocessor dlq: a subcommand is required: list or replay")
		return exitUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "list: one JSON object a line")
	dryRun := fs.Bool("dry-run", false, "replay: show what would be replayed; change nothing")
	reasons := fs.String("reason", "", "only these error codes, comma-separated")
	since := fs.String("since", "", `only dead letters stored since then: a duration ("24h") or an RFC 3339 time`)
	limit := fs.Int("limit", 0, "at most this many; 0 is no limit")
	load := config.Bind(fs, getenv)
	fs.Usage = func() { fmt.Fprint(stderr, dlqUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor dlq: invalid configuration:\n%v\n", err)
		return exitUsage
	}
	filter := bulk.DLQFilter{Limit: *limit}
	for r := range strings.SplitSeq(*reasons, ",") {
		if r = strings.TrimSpace(r); r != "" {
			filter.Reasons = append(filter.Reasons, r)
		}
	}
	if *since != "" {
		if d, err := time.ParseDuration(*since); err == nil {
			filter.Since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, *since); err == nil {
			filter.Since = t
		} else {
			fmt.Fprintf(stderr, "reprocessor dlq: --since %q: want a duration such as 24h or an RFC 3339 time\n", *since)
			return exitUsage
		}
	}
	if fs.NArg() > 0 || *limit < 0 {
		fmt.Fprintf(stderr, "reprocessor dlq: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat, cfg.Secrets())
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor dlq: %v\n", err)
		return exitUsage
	}
	e := &enqueuer{cfg: cfg, log: log, getenv: getenv}
	nc, err := e.connect(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor dlq: %v\n", err)
		return exitFailed
	}
	defer func() { _ = queue.Drain(nc, 10*time.Second) }()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor dlq: %v\n", err)
		return exitFailed
	}
	qc := cfg.Queue()
	stream := cmp.Or(qc.DLQStream, queue.DefaultDLQStream)
	if sub == "list" {
		return dlqList(ctx, js, stream, filter, *asJSON, stdout, stderr)
	}
	requests, _, _ := queue.Config{Prefix: cfg.SubjectPrefix}.Subjects()
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	if *dryRun {
		fmt.Fprintln(tw, "WOULD REPLAY\tTIME\tASSIGNMENT\tERROR\tATTEMPTS")
	}
	rows := 0
	n, err := bulk.ReplayDeadLetters(ctx, js, stream, requests, filter, *dryRun, func(r bulk.ReplayResult) {
		switch {
		case r.Err != nil:
			fmt.Fprintf(stderr, "dead letter %d (%s): %v\n", r.Seq, r.AssignmentID, r.Err)
		case *dryRun:
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\n", r.Seq, r.Time.UTC().Format(time.RFC3339), cmp.Or(r.AssignmentID, "-"), r.Error, r.Attempts)
			flushEvery(tw, &rows)
		}
	})
	_ = tw.Flush()
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor dlq replay: %v (replayed %d before that)\n", err, n)
		return exitFailed
	}
	if !*dryRun {
		fmt.Fprintf(stdout, "replayed %d dead letters to %s and removed them from %s\n", n, requests, stream)
	}
	return exitOK
}

func dlqList(ctx context.Context, js jetstream.JetStream, stream string, f bulk.DLQFilter, asJSON bool, stdout, stderr io.Writer) int {
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "SEQ\tTIME\tASSIGNMENT\tERROR\tATTEMPTS\tDETAIL")
	}
	enc := json.NewEncoder(stdout)
	rows := 0
	err := bulk.ListDeadLetters(ctx, js, stream, f, func(d bulk.DeadLetter) error {
		if asJSON {
			return enc.Encode(d)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", d.Seq, d.Time.UTC().Format(time.RFC3339), cmp.Or(d.AssignmentID, "-"), d.Error, d.Attempts, d.Detail)
		flushEvery(tw, &rows)
		return nil
	})
	_ = tw.Flush()
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor dlq list: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// tableBlock is how many rows a table holds before it is written out: a tabwriter keeps
// every row until it is flushed, so that a table of the whole dead-letter stream would
// grow with the stream. Columns are aligned within each block.
const tableBlock = 500

// flushEvery flushes tw after every tableBlock rows counted in rows.
func flushEvery(tw *tabwriter.Writer, rows *int) {
	if *rows++; *rows%tableBlock == 0 {
		_ = tw.Flush()
	}
}

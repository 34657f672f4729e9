package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/reprocessor/reprocessor/bench"
	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/service"
)

// cmdBench runs the embedded NATS server, the simulated Graph and N worker replicas, publishes
// K ids and prints how fast and how well they were worked.
func cmdBench(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f bench.Options
	var asJSON bool
	var nRounds int
	fs.IntVar(&f.IDs, "ids", 10_000, "ids to publish")
	fs.IntVar(&f.Replicas, "replicas", 1, "worker replicas sharing the queue")
	fs.DurationVar(&f.Latency, "latency", 0, "simulated Graph latency (the least, with --latency-max)")
	fs.DurationVar(&f.LatencyMax, "latency-max", 0, "simulated Graph latency, the most")
	fs.Float64Var(&f.Throttle, "throttle", 0, "simulated Graph admits this many calls per second (token bucket), 429 beyond; 0 none")
	fs.IntVar(&f.Burst, "throttle-burst", 0, "burst of the simulated Graph's token bucket; default a tenth of --throttle")
	fs.Float64Var(&f.Errors, "errors", 0, "share of Graph calls answered 503 at random")
	fs.Float64Var(&f.Unknown, "unknown", 0, "share of ids answered 404")
	fs.StringVar(&f.RetryAfter, "retry-after", "0.1", "Retry-After of the random 503s, seconds")
	fs.DurationVar(&f.Duration, "duration", 0, "stop after this long even if ids are left; 0 waits for all")
	fs.BoolVar(&f.Preload, "preload", false, "publish every id before the workers start (a queued backlog)")
	fs.BoolVar(&f.Processes, "processes", false, "run each replica as a child process (reprocessor run), to measure its own memory")
	fs.BoolVar(&f.Bare, "bare", true, "also run the bare pipelines (fetch, POST, ack; and the same storing an event per id) and print the ratios")
	fs.Float64Var(&f.PublishRate, "publish-rate", 0, "ids published per second; 0 as fast as possible")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fs.StringVar(&f.Peer, "peer", "", "also run this peer binary (go build -C peers -o watermill-peer ./watermill) on the same ids, NATS server and simulated Graph, after the worker in each round")
	fs.IntVar(&nRounds, "rounds", 1, "run the whole bench this many times, each on a fresh NATS server and simulated Graph, with the bare pipelines after the worker in the first round, before it in the second, and so on, and sum up the worker's ratios to the bare pipelines by their median: on a shared machine one round's ratio swings by a fifth")
	grid := fs.Bool("grid", false, "run the grid instead: R of 20, 200 and 1000 calls/s x latency of 50 ms, 300 ms and 1 s x 1 and 3 replicas, with the worker's settings as given (its defaults unless set), each cell --cell-duration long")
	cellDuration := fs.Duration("cell-duration", 60*time.Second, "with --grid: how long each cell runs")
	gridOnly := fs.String("grid-only", "", `with --grid: only these cells, e.g. "20/50ms/3,20/1s/3" (R/latency/replicas)`)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (workers, NATS, simulated Graph) to this file")
	load := config.Bind(fs, bench.Env(getenv))
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor bench: invalid configuration:\n%v\n", err)
		return exitUsage
	}
	if f.IDs < 1 || f.Replicas < 1 || nRounds < 1 || f.Throttle < 0 || f.Errors < 0 || f.Errors > 1 || f.Unknown < 0 || f.Unknown > 1 || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "reprocessor bench: --ids, --replicas and --rounds must be at least 1, --throttle at least 0, --errors and --unknown between 0 and 1, and no arguments")
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat, cfg.Secrets())
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor bench: %v\n", err)
		return exitUsage
	}
	// The workers in this process get the garbage collector of reprocessor run, and so do
	// the bare pipelines beside them; a child (--processes: reprocessor run) sets its own,
	// and the peer keeps Go's defaults, as a Watermill user's worker would.
	service.TuneGC(getenv, log)
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "reprocessor bench: %v\n", err)
			return exitUsage
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			fmt.Fprintf(stderr, "reprocessor bench: %v\n", err)
			return exitFailed
		}
		defer pprof.StopCPUProfile()
	}
	if *grid {
		var only []string
		if *gridOnly != "" {
			only = strings.Split(*gridOnly, ",")
		}
		return benchGrid(ctx, cfg, *cellDuration, only, asJSON, log, stdout, stderr)
	}
	var rounds bench.Rounds
	for i := range nRounds {
		f.BareFirst = i%2 == 1 // alternate which side runs first in a fresh process
		res, err := bench.Run(ctx, cfg, f, log, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "reprocessor bench: %v\n", err)
			return exitFailed
		}
		rounds.Rounds = append(rounds.Rounds, res)
		if !asJSON {
			if nRounds > 1 {
				fmt.Fprintf(stdout, "— round %d of %d —\n", i+1, nRounds)
			}
			res.Print(stdout)
		}
	}
	rounds.Sum()
	switch {
	case asJSON && nRounds == 1:
		writeJSON(stdout, rounds.Rounds[0])
	case asJSON:
		writeJSON(stdout, rounds)
	case nRounds > 1:
		rounds.Print(stdout)
	}
	return exitOK
}

// benchGrid runs bench --grid and prints a line per cell as it ends, or the cells as JSON.
func benchGrid(ctx context.Context, cfg config.Config, cell time.Duration, only []string, asJSON bool, log *slog.Logger, stdout, stderr io.Writer) int {
	if cell < 10*time.Second {
		fmt.Fprintln(stderr, "reprocessor bench: --cell-duration must be at least 10s, for the rate to converge")
		return exitUsage
	}
	if !asJSON {
		fmt.Fprintf(stdout, "concurrency at most %d, rate %s (ceiling %g), each cell %s\n", cfg.Concurrency, rateText(cfg), cfg.RateCeiling, cell)
		fmt.Fprintln(stdout, bench.GridHeader)
	}
	cells, err := bench.RunGrid(ctx, cfg, cell, only, log, stderr, func(c bench.Cell) {
		if !asJSON {
			fmt.Fprintln(stdout, c.Line())
		}
	})
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor bench: %v\n", err)
		return exitFailed
	}
	if asJSON {
		writeJSON(stdout, cells)
	} else {
		fmt.Fprintln(stdout, bench.GridSummary(cells))
	}
	return exitOK
}

func rateText(cfg config.Config) string {
	if cfg.RateAuto {
		return "auto"
	}
	return strconv.FormatFloat(cfg.Rate, 'g', -1, 64)
}

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

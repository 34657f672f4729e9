// Package cli is reprocessor's command-line front end: it parses each command's flags,
// prints usage, progress and results, and maps what happened to an exit code, handing the
// work to the packages that do it (service, bulk, bench, config).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/service"
	"github.com/reprocessor/reprocessor/tracing"
	"github.com/reprocessor/reprocessor/version"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the command ran and failed
	exitUsage  = 2 // bad arguments or configuration
)

const usage = `reprocessor: reprocess Entra ID access package assignments from a NATS queue.

Usage:
  reprocessor run [flags]           run the worker
  reprocessor demo [flags]          run everything on this machine: embedded NATS, a
                                    simulated Graph, the worker and sample ids
  reprocessor enqueue [flags] IDS   publish ids (arguments, --file, stdin, --from-graph)
                                    with progress, --wait for outcomes and a --report
  reprocessor dlq list|replay       list dead letters, or replay them to the requests
  reprocessor drift [flags]         find delivered assignments whose users lost the
                                    package's groups or app roles; --enqueue heals them,
                                    --every D scans on a schedule
  reprocessor fake-graph [flags]    serve the simulated Graph alone
  reprocessor bench [flags]         measure: embedded NATS, simulated Graph (latency,
                                    throttle, errors) and N replicas working K ids
  reprocessor check-config [flags]  validate the configuration and print it
  reprocessor version               print the version
  reprocessor help                  print this text and every setting

Every setting is an environment variable and, except secrets, a flag:
`

// Main runs the command named by args[0] and returns the process exit code.
func Main(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		fmt.Fprintln(stderr, "\nreprocessor: a command is required (try: reprocessor demo)")
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(ctx, rest, getenv, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, getenv, stdout, stderr)
	case "enqueue":
		return cmdEnqueue(ctx, rest, getenv, stdout, stderr)
	case "dlq":
		return cmdDLQ(ctx, rest, getenv, stdout, stderr)
	case "drift":
		return cmdDrift(ctx, rest, getenv, stdout, stderr)
	case "fake-graph":
		return cmdFakeGraph(ctx, rest, getenv, stdout, stderr)
	case "bench":
		return cmdBench(ctx, rest, getenv, stdout, stderr)
	case "check-config":
		return cmdCheckConfig(rest, getenv, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, version.Line())
		return exitOK
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		_ = config.WriteUsage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "reprocessor: unknown command %q (commands: run, demo, enqueue, dlq, fake-graph, bench, check-config, version, help)\n", cmd)
	return exitUsage
}

// loadConfig reads the configuration for a subcommand, reporting problems on stderr.
func loadConfig(name string, args []string, getenv func(string) string, stderr io.Writer) (config.Config, bool) {
	cfg, rest, err := config.Load(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "usage: reprocessor %s [flags]\n\n", name)
		_ = config.WriteUsage(stderr)
		return cfg, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor %s: invalid configuration:\n%v\n", name, err)
		return cfg, false
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "reprocessor %s: unexpected arguments %q\n", name, rest)
		return cfg, false
	}
	return cfg, true
}

func cmdRun(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig("run", args, getenv, stderr)
	if !ok {
		return exitUsage
	}
	log, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat, cfg.Secrets())
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor run: %v\n", err)
		return exitUsage
	}
	service.TuneGC(getenv, log)
	if err := service.Run(ctx, cfg, log, getenv, service.Options{}); err != nil {
		log.Error("reprocessor stopped", "err", err)
		return exitFailed
	}
	return exitOK
}

func cmdCheckConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig("check-config", args, getenv, stderr)
	for _, a := range cfg.Summary() {
		fmt.Fprintf(stdout, "%s=%s\n", a.Key, a.Value)
	}
	if !ok {
		return exitUsage
	}
	cred, err := graph.WouldUse(getenv, cfg.Credential)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor check-config: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(stdout, "graph credential: %s\n", cred)
	cc, from, err := queue.Resolve(getenv, cfg.NATSURL, cfg.NATSContext)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor check-config: %v\n", err)
		return exitUsage
	}
	if from == queue.FromNone {
		fmt.Fprintf(stdout, "nats: no NATS_URL and no NATS context: run starts an embedded server on %s\n", cfg.EmbeddedAddr)
	} else {
		fmt.Fprintf(stdout, "nats: %s: %s\n", queue.Describe(cc, from), cc.Redacted())
	}
	ts, err := tracing.Read(getenv, "reprocessor")
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor check-config: tracing: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(stdout, "tracing: %s\n", ts.Describe())
	fmt.Fprintln(stdout, "configuration is valid")
	return exitOK
}

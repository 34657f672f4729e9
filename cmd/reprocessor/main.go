// Command reprocessor takes Microsoft Entra access package assignment ids from a NATS
// JetStream work queue and calls Microsoft Graph's reprocess action for each, with rate
// limits, retries and Retry-After, publishing a CloudEvent for every outcome.
//
// Subcommands: run (the worker), demo (the whole system on one machine with nothing
// configured), fake-graph (the simulated Graph alone), check-config and version.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

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
  reprocessor fake-graph [flags]    serve the simulated Graph alone
  reprocessor bench [flags]         measure: embedded NATS, simulated Graph (latency,
                                    throttle, errors) and N replicas working K ids
  reprocessor check-config [flags]  validate the configuration and print it
  reprocessor version               print the version
  reprocessor help                  print this text and every setting

Every setting is an environment variable and, except secrets, a flag:
`

// run runs the command named by args[0] and returns the process exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
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
	case "fake-graph":
		return cmdFakeGraph(ctx, rest, getenv, stdout, stderr)
	case "bench":
		return cmdBench(ctx, rest, getenv, stdout, stderr)
	case "check-config":
		return cmdCheckConfig(rest, getenv, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionLine())
		return exitOK
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		_ = WriteConfigUsage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "reprocessor: unknown command %q (commands: run, demo, enqueue, dlq, fake-graph, bench, check-config, version, help)\n", cmd)
	return exitUsage
}

// loadConfig reads the configuration for a subcommand, reporting problems on stderr.
func loadConfig(name string, args []string, getenv func(string) string, stderr io.Writer) (Config, bool) {
	cfg, rest, err := LoadConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "usage: reprocessor %s [flags]\n\n", name)
		_ = WriteConfigUsage(stderr)
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
	log, err := NewLogger(stderr, cfg.LogLevel, cfg.LogFormat, cfg.Secrets())
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor run: %v\n", err)
		return exitUsage
	}
	if err := runWorker(ctx, cfg, log, getenv, runOptions{}); err != nil {
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
	fmt.Fprintln(stdout, "configuration is valid")
	return exitOK
}

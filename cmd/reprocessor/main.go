// Command reprocessor takes Microsoft Entra access package assignment ids from a NATS
// JetStream work queue and calls Microsoft Graph's reprocess action for each, with rate
// limits, retries and Retry-After, publishing a CloudEvent for every outcome.
//
// "reprocessor help" lists the commands; package cli holds them.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/reprocessor/reprocessor/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

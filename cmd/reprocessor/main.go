// Command reprocessor takes Entra access package assignment ids from a NATS JetStream
// work queue and calls Microsoft Graph's reprocess action for each.
//
// This main is a placeholder until the subcommands are wired.
package main

func main() {}

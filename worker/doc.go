// Package worker is reprocessor's engine: it decodes and validates request messages,
// coalesces duplicates, paces and gates Graph calls (rate limit, Retry-After, circuit),
// classifies each answer, decides ack, retry or nak, and emits exactly one terminal event
// per request, copying what did not succeed to the dead-letter stream.
//
// It imports neither NATS nor Prometheus: it declares the small interfaces it consumes
// (ports.go) and service wires the adapters from queue/, graph/ and metrics/ in.
package worker

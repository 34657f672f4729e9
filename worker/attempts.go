package worker

import "sync"

// This file remembers, across deliveries, what a handed-back message already cost.

// msgKey identifies a request message across its deliveries and across incarnations of
// its stream (sequences start at 1 again in a recreated stream; store times do not repeat).
type msgKey struct {
	seq    uint64
	stored int64 // Unix nanoseconds
}

func keyOf(d Delivery) msgKey { return msgKey{seq: d.StreamSeq, stored: d.Timestamp.UnixNano()} }

// attemptEntry is what is remembered of a message handed back for a later delivery.
type attemptEntry struct {
	attempts  int     // Graph calls made so far
	throttled int     // deliveries handed back to wait out a Retry-After: not counted against MaxDeliver
	settled   *result // the outcome reached, when only storing it failed
}

// attemptLog remembers the Graph calls made for messages handed back for a later delivery.
type attemptLog struct {
	mu sync.Mutex
	m  map[msgKey]attemptEntry
}

func (a *attemptLog) get(k msgKey) attemptEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m[k]
}

func (a *attemptLog) set(k msgKey, e attemptEntry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.m) >= maxRecent { // messages taken by another replica never come back here
		clear(a.m)
	}
	a.m[k] = e
}

func (a *attemptLog) forget(k msgKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.m, k)
}

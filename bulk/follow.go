package bulk

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/worker"
)

// Outcome names used in reports besides the event kinds (accepted, failed, rejected,
// coalesced).
const (
	OutcomePending   = "pending"   // followed, but no terminal event arrived in time
	OutcomePublished = "published" // published, not followed
)

// Row is what is known of one id of a run.
type Row struct {
	ID             idlist.ID
	Line           int    // input line; 0 when the id came from arguments or Graph
	Outcome        string // an event kind, OutcomePending or OutcomePublished
	ErrorCode      string
	HTTPStatus     int
	GraphRequestID string
	Attempts       int
	State          string   // the last state seen in a state_changed event
	Settled        bool     // a state_changed event said the state is settled
	SettledKnown   bool     // a state_changed event carried "settled"
	Restored       bool     // resource verification: every resource role is held
	RestoredKnown  bool     // a state_changed event carried "restored"
	Missing        []string // resource verification: the resource roles still absent
	RequestedAt    time.Time
	CompletedAt    time.Time
	StateAt        time.Time
}

// Tracker follows the ids of one run to their outcomes. It is safe for concurrent use.
type Tracker struct {
	runID       string
	waitSettled bool

	mu        sync.Mutex
	idx       map[idlist.ID]int32
	rows      []Row
	counts    map[string]int
	remaining int
	changed   chan struct{} // closed and replaced when remaining reaches 0
}

// NewTracker returns a tracker of run runID; with waitSettled an accepted id is done only
// when a state_changed event says whether its state settled.
func NewTracker(runID string, waitSettled bool) *Tracker {
	return &Tracker{runID: runID, waitSettled: waitSettled, idx: make(map[idlist.ID]int32), counts: map[string]int{}, changed: make(chan struct{})}
}

// Add starts tracking id, read at input line line; it reports false for an id already tracked.
func (t *Tracker) Add(id idlist.ID, line int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.idx[id]; ok {
		return false
	}
	t.idx[id] = int32(len(t.rows))
	t.rows = append(t.rows, Row{ID: id, Line: line})
	t.remaining++
	return true
}

// Len returns the number of ids tracked.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.rows)
}

// Observe applies one event.
func (t *Tracker) Observe(e *worker.Event) {
	idText := e.Data.AssignmentID
	if idText == "" {
		idText = e.Subject
	}
	id, ok := idlist.Parse(idText)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.idx[id]
	if !ok {
		return
	}
	r := &t.rows[i]
	kind := e.Kind()
	if kind == worker.KindStateChanged {
		if e.Data.CorrelationID != "" && e.Data.CorrelationID != t.runID {
			return
		}
		r.State, r.StateAt = e.Data.State, e.Data.CompletedAt
		if r.StateAt.IsZero() {
			r.StateAt = e.Time
		}
		// The history of a request ends with an event marked final: settled, or given up
		// at the tracking deadline (settled false). Earlier events are intermediate.
		if e.Data.Restored != nil {
			r.Restored, r.RestoredKnown, r.Missing = *e.Data.Restored, true, e.Data.Missing
		}
		// A delivered state whose resources are still being checked (restored false, not
		// final) is intermediate too.
		intermediate := !e.Data.Final && e.Data.Restored != nil && !*e.Data.Restored
		if (e.Data.Final || (e.Data.Settled != nil && *e.Data.Settled && !intermediate)) && r.Outcome == worker.KindAccepted && !r.SettledKnown {
			r.Settled, r.SettledKnown = e.Data.Settled != nil && *e.Data.Settled, true
			if t.waitSettled {
				t.done()
			}
		}
		return
	}
	if !slices.Contains(worker.Outcomes, kind) || e.Data.CorrelationID != t.runID || r.Outcome != "" {
		return
	}
	r.Outcome = kind
	r.HTTPStatus = e.Data.HTTPStatus
	r.GraphRequestID = e.Data.GraphRequestID
	r.Attempts = e.Data.Attempts
	r.RequestedAt, r.CompletedAt = e.Data.RequestedAt, e.Data.CompletedAt
	if e.Data.Error != nil {
		r.ErrorCode = internCode(e.Data.Error.Code)
	}
	t.counts[kind]++
	if !t.waitSettled || kind != worker.KindAccepted {
		t.done()
	}
}

// done counts one id as done; t.mu is held.
func (t *Tracker) done() {
	t.remaining--
	if t.remaining == 0 {
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

func internCode(c string) string {
	if i := slices.Index(worker.ErrorCodes, c); i >= 0 {
		return worker.ErrorCodes[i]
	}
	return c
}

// Counts returns the ids per outcome so far, and how many are not done.
func (t *Tracker) Counts() (map[string]int, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return copyCounts(t.counts), t.remaining
}

func copyCounts(m map[string]int) map[string]int {
	c := make(map[string]int, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Rows returns a copy of every row, in the order the ids were added; ids without an
// outcome get pending.
func (t *Tracker) Rows(pending string) []Row {
	t.mu.Lock()
	defer t.mu.Unlock()
	rows := slices.Clone(t.rows)
	for i := range rows {
		if rows[i].Outcome == "" {
			rows[i].Outcome = pending
		}
	}
	return rows
}

// allDone returns a channel closed when every id is done (already closed if none remain).
func (t *Tracker) allDone() (<-chan struct{}, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed, t.remaining <= 0
}

// Follow reads the events stream from since (inclusive) with an ordered consumer and feeds
// every event to t until every tracked id is done, or ctx ends (then it returns ctx's
// error). eventsSubject is "<prefix>.events".
func Follow(ctx context.Context, js jetstream.JetStream, stream, eventsSubject string, since time.Time, t *Tracker) error {
	if _, ok := t.allDone(); ok {
		return nil
	}
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("events stream %s: %w", stream, err)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{eventsSubject + ".>"}}
	if !since.IsZero() {
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &since
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("follow %s: %w", stream, err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var e worker.Event
		if json.Unmarshal(m.Data(), &e) == nil {
			t.Observe(&e)
		}
	})
	if err != nil {
		return fmt.Errorf("follow %s: %w", stream, err)
	}
	defer cc.Stop()
	for {
		ch, ok := t.allDone()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

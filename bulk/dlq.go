package bulk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// DeadLetter is one message of the dead-letter stream.
type DeadLetter struct {
	Seq          uint64    `json:"seq"` // its sequence in the dead-letter stream
	Time         time.Time `json:"time"`
	AssignmentID string    `json:"assignmentId,omitempty"` // "" when the payload holds no valid id
	Error        string    `json:"error"`                  // Reprocess-Error
	Detail       string    `json:"detail,omitempty"`       // Reprocess-Error-Detail
	Attempts     int       `json:"attempts"`
	Correlation  string    `json:"correlationId,omitempty"`

	data   []byte
	header nats.Header
}

// DLQFilter selects dead letters; the zero value selects all.
type DLQFilter struct {
	Reasons []string  // error codes; any of them
	Since   time.Time // stored at or after
	Limit   int       // at most this many; 0 is no limit
}

func (f DLQFilter) match(d DeadLetter) bool {
	return len(f.Reasons) == 0 || slices.Contains(f.Reasons, d.Error)
}

// ListDeadLetters calls fn for every selected dead letter stored when it starts, oldest
// first.
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, stream string, f DLQFilter, fn func(DeadLetter) error) error {
	cfg := jetstream.OrderedConsumerConfig{}
	if !f.Since.IsZero() {
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &f.Since
	}
	n := 0
	return readAll(ctx, js, stream, cfg, func(m jetstream.Msg, md *jetstream.MsgMetadata) error {
		d := decodeDeadLetter(m, md)
		if !f.match(d) {
			return nil
		}
		if err := fn(d); err != nil {
			return err
		}
		n++
		if f.Limit > 0 && n >= f.Limit {
			return errStopRead
		}
		return nil
	})
}

func decodeDeadLetter(m jetstream.Msg, md *jetstream.MsgMetadata) DeadLetter {
	h := m.Headers()
	d := DeadLetter{
		Seq: md.Sequence.Stream, Time: md.Timestamp,
		Error: h.Get(queue.HeaderError), Detail: h.Get(queue.HeaderErrorDetail),
		data: m.Data(), header: h,
	}
	d.Attempts, _ = strconv.Atoi(h.Get(queue.HeaderAttempts))
	if req, err := worker.Decode(m.Data()); err == nil {
		d.AssignmentID, d.Correlation = req.ID, req.CorrelationID
	}
	return d
}

// ReplayMsgID is the Nats-Msg-Id of the replay of dead letter seq: a replay repeated
// within the requests stream's duplicate window (after a crash between publishing and
// deleting) is dropped.
func ReplayMsgID(dlqStream string, seq uint64) string {
	return "replay:" + dlqStream + ":" + strconv.FormatUint(seq, 10)
}

// replayMessage rebuilds the request: the dead letter's data, and its headers without the
// Reprocess-* ones that the dead-lettering added or renamed.
func replayMessage(d DeadLetter, subject, dlqStream string) *nats.Msg {
	h := nats.Header{}
	for k, vs := range d.header {
		if strings.HasPrefix(strings.ToLower(k), "reprocess-") || strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		h[k] = slices.Clone(vs)
	}
	h.Set(jetstream.MsgIDHeader, ReplayMsgID(dlqStream, d.Seq))
	return &nats.Msg{Subject: subject, Data: d.data, Header: h}
}

// ReplayResult is what happened to one dead letter in a replay.
type ReplayResult struct {
	DeadLetter
	Err error // nil: published and deleted (or, in a dry run, selected)
}

// ReplayDeadLetters re-publishes the selected dead letters to the requests subject, each
// with its original data and non-Reprocess headers, and deletes each from the dead-letter
// stream only once its publish was acknowledged. With dryRun it only selects. fn is called
// for every selected dead letter, as it is read: memory does not grow with the stream. It
// returns how many were replayed, and stops at the first error of NATS (a dead letter that
// could not be replayed stays in the stream). A dead letter that fails again after its
// replay is stored anew past the end of what is read, so a replay never loops.
func ReplayDeadLetters(ctx context.Context, js jetstream.JetStream, dlqStream, requestsSubject string, f DLQFilter, dryRun bool, fn func(ReplayResult)) (int, error) {
	var st jetstream.Stream
	if !dryRun {
		var err error
		if st, err = js.Stream(ctx, dlqStream); err != nil {
			return 0, fmt.Errorf("stream %s: %w", dlqStream, err)
		}
	}
	n := 0
	err := ListDeadLetters(ctx, js, dlqStream, f, func(d DeadLetter) error {
		if dryRun {
			fn(ReplayResult{DeadLetter: d})
			return nil
		}
		if _, err := js.PublishMsg(ctx, replayMessage(d, requestsSubject, dlqStream)); err != nil {
			err = fmt.Errorf("replay dead letter %d: %w", d.Seq, err)
			fn(ReplayResult{DeadLetter: d, Err: err})
			return errReplay{err}
		}
		if err := st.DeleteMsg(ctx, d.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			err = fmt.Errorf("delete dead letter %d after replaying it: %w", d.Seq, err)
			fn(ReplayResult{DeadLetter: d, Err: err})
			return errReplay{err}
		}
		n++
		fn(ReplayResult{DeadLetter: d})
		return nil
	})
	var re errReplay
	if errors.As(err, &re) {
		return n, re.err
	}
	return n, err
}

// errReplay carries a replay's own error out of the listing.
type errReplay struct{ err error }

func (e errReplay) Error() string { return e.err.Error() }

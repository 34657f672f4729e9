package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/worker"
)

// Headers of a dead letter.
const (
	HeaderError            = "Reprocess-Error"              // the error code
	HeaderErrorDetail      = "Reprocess-Error-Detail"       // a human-readable detail, one line
	HeaderOriginalSubject  = "Reprocess-Original-Subject"   // the request's subject
	HeaderStreamSequence   = "Reprocess-Stream-Sequence"    // the request's sequence in its stream
	HeaderAttempts         = "Reprocess-Attempts"           // Graph calls made for the request
	HeaderOriginalMsgID    = "Reprocess-Original-Msg-Id"    // the request's Nats-Msg-Id, if it had one
	HeaderOriginalPrefix   = "Reprocess-Original-"          // prefixes every Nats-* header of the request, "Nats-" cut off
	HeaderTruncated        = "Reprocess-Truncated"          // set only when the data had to be cut to fit: its original length
	HeaderHeadersDropped   = "Reprocess-Headers-Dropped"    // set only when the request's headers had to be cut to fit: how many values were dropped
	headerReprocessPrefix  = "Reprocess-"                   // the dead-letter headers; a request's own are renamed Reprocess-Original-Reprocess-*
	HeaderMsgID            = "Nats-Msg-Id"                  // JetStream's dedupe header
	headerNatsPrefix       = "Nats-"                        // JetStream control headers
	headerContentType      = "Content-Type"                 // set on events
	contentTypeCloudEvents = "application/cloudevents+json" // structured-mode CloudEvents
	maxDetailBytes         = 1024                           // longest Reprocess-Error-Detail value
	// maxKeptHeaderBytes bounds the request's own headers kept on a dead letter that did not
	// fit whole: JetStream refuses a message with more than 64 KiB of headers (10097).
	maxKeptHeaderBytes = 16 << 10
)

// tooLarge reports whether err says a message exceeds a server limit: the connection's max
// payload, the stream's max message size (10054), or JetStream's header limit (10097).
func tooLarge(err error) bool {
	if err == nil {
		return false // errors.As costs half a microsecond even on nil, on every event
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum || apiErr.ErrorCode == jsErrCodeHeaderExceedsMaximum
	}
	return errors.Is(err, nats.ErrMaxPayload)
}

// jsErrCodeHeaderExceedsMaximum is JetStream's "header size exceeds maximum allowed of 64k".
const jsErrCodeHeaderExceedsMaximum jetstream.ErrorCode = 10097

// eventCuts are the field lengths an event is cut to, in turn, when it does not fit.
var eventCuts = []int{256, 64, 0}

// PublishEvent publishes e as JSON to "<prefix>.events.<kind>" with Nats-Msg-Id set to its
// id, so that the events stream drops a repeat within the dedupe window, and waits for the
// stream's acknowledgement. When the stream already held an event with that id, the
// result says so and carries that event, read back from the stream (nil when it cannot
// be). An event too large for the server's limits is sent again with its free-text fields
// cut shorter; one that fits in no form gives an error wrapping worker.ErrUnstorable. It is
// safe for many concurrent callers.
func (q *Queue) PublishEvent(ctx context.Context, e *worker.Event) (worker.Stored, error) {
	kind := e.Kind()
	if err := validToken(kind); err != nil {
		return worker.Stored{}, fmt.Errorf("publish event %q: kind: %w: %w", e.ID, worker.ErrUnstorable, err)
	}
	if e.ID == "" || !validHeaderValue(e.ID) {
		return worker.Stored{}, fmt.Errorf("publish event of kind %s: id %q: %w: must be non-empty, without control characters", kind, e.ID, worker.ErrUnstorable)
	}
	send := e
	for i := 0; ; i++ {
		data, err := send.JSON()
		if err != nil {
			return worker.Stored{}, fmt.Errorf("publish event %s: encode: %w: %w", e.ID, worker.ErrUnstorable, err)
		}
		m := &nats.Msg{
			Subject: q.eventsPrefix + "." + kind,
			Data:    data,
			Header: nats.Header{
				HeaderMsgID:       {e.ID},
				headerContentType: {contentTypeCloudEvents},
			},
		}
		if e.TraceParent != "" && validHeaderValue(e.TraceParent) {
			m.Header.Set("traceparent", e.TraceParent) // W3C trace context, for consumers to continue
		}
		ack, err := q.acked.Publish(ctx, m)
		if tooLarge(err) {
			if i == len(eventCuts) {
				return worker.Stored{}, fmt.Errorf("publish event %s: %w: %d bytes even with its text fields cut: %w", e.ID, worker.ErrUnstorable, len(data), err)
			}
			q.logger.Warn("event too large for the server; cutting its text fields", "id", e.ID, "bytes", len(data), "cut_to", eventCuts[i], "err", err)
			send = e.Shrunk(eventCuts[i])
			continue
		}
		if err != nil {
			return worker.Stored{}, fmt.Errorf("publish event %s: %w", e.ID, err)
		}
		if !ack.Duplicate {
			return worker.Stored{}, nil
		}
		return worker.Stored{Duplicate: true, Event: q.storedEvent(ctx, ack.Seq, e.ID)}, nil
	}
}

// storedEventTimeout bounds reading back a stored event (an account that may not read the
// events stream gets no answer at all).
const storedEventTimeout = 2 * time.Second

// storedEvent reads back the event stored at seq in the events stream, if it carries id;
// nil when it cannot be read (a locked-down account, a purged stream).
func (q *Queue) storedEvent(ctx context.Context, seq uint64, id string) *worker.Event {
	if seq == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, storedEventTimeout)
	defer cancel()
	s, err := q.js.Stream(ctx, q.cfg.EventsStream)
	var raw *jetstream.RawStreamMsg
	if err == nil {
		raw, err = s.GetMsg(ctx, seq)
	}
	if err != nil {
		q.logger.Warn("cannot read back the stored event a duplicate stands for", "id", id, "seq", seq, "err", err)
		return nil
	}
	if raw.Header.Get(HeaderMsgID) != id {
		q.logger.Warn("the stored event a duplicate stands for has another id", "id", id, "seq", seq, "stored_id", raw.Header.Get(HeaderMsgID))
		return nil
	}
	var stored worker.Event
	if err := json.Unmarshal(raw.Data, &stored); err != nil || !strings.HasPrefix(stored.Type, worker.TypePrefix) {
		q.logger.Warn("the stored event a duplicate stands for cannot be decoded", "id", id, "seq", seq, "err", err)
		return nil
	}
	return &stored
}

// PublishAckTimeout is how long an event or a state check waits for the stream's
// acknowledgement, as long as a synchronous JetStream publish waits by default.
const PublishAckTimeout = 5 * time.Second

// DeadLetterMsgID is the Nats-Msg-Id of a request's dead-letter copy.
func DeadLetterMsgID(d worker.Delivery) string {
	return worker.RequestRef(d.Stream, d.StreamSeq, d.Timestamp) + "-dlq"
}

// DeadLetter copies the delivered request to "<prefix>.dlq": its data byte for byte, its
// headers as they were except that every JetStream control header (Nats-*) is renamed
// Reprocess-Original-* (Nats-Msg-Id becomes Reprocess-Original-Msg-Id) so that it has no
// effect on the dead-letter stream, and every Reprocess-* header of the request is renamed
// Reprocess-Original-Reprocess-* so that a producer cannot forge the reason, plus the
// Reprocess-* headers saying why. The copy's own Nats-Msg-Id is DeadLetterMsgID, so
// dead-lettering a redelivered request again within the dedupe window stores nothing new.
// It waits for the stream's acknowledgement.
//
// A copy the server refuses as too large is cut and sent again: first the request's own
// headers beyond 16 KiB are dropped (Reprocess-Headers-Dropped says how many values), then
// its data is cut to what fits (Reprocess-Truncated says how long it was). A copy that fits
// in no form gives an error wrapping worker.ErrUnstorable.
func (q *Queue) DeadLetter(ctx context.Context, d worker.Delivery, dl worker.DeadLetter) (worker.Stored, error) {
	if d.Stream == "" || d.StreamSeq == 0 {
		return worker.Stored{}, fmt.Errorf("dead-letter: %w: the delivery has no stream and sequence", worker.ErrUnstorable)
	}
	msgID := DeadLetterMsgID(d)
	m := &nats.Msg{Subject: q.dlqSubject, Data: d.Data, Header: deadLetterHeader(d, dl, msgID, -1)}
	ack, err := q.js.PublishMsg(ctx, m)
	if tooLarge(err) {
		q.logger.Warn("dead letter too large for the server; cutting its headers", "msg_id", msgID, "err", err)
		m.Header = deadLetterHeader(d, dl, msgID, maxKeptHeaderBytes)
		ack, err = q.js.PublishMsg(ctx, m)
	}
	if tooLarge(err) {
		// The request was near the server's payload limit and the added headers pushed the
		// copy over it: keep as much of the data as fits and say how long it was, rather
		// than failing to dead-letter it at all.
		q.logger.Warn("dead letter too large for the server; cutting its data", "msg_id", msgID, "bytes", len(d.Data), "err", err)
		m.Header = deadLetterHeader(d, dl, msgID, 0)
		m.Header.Set(HeaderTruncated, strconv.Itoa(len(d.Data)))
		room := int(q.nc.MaxPayload()) - headerSize(m.Header) - 1024
		m.Data = d.Data[:max(0, min(room, len(d.Data)))]
		ack, err = q.js.PublishMsg(ctx, m)
	}
	if tooLarge(err) {
		return worker.Stored{}, fmt.Errorf("dead-letter %s: %w: even cut down: %w", msgID, worker.ErrUnstorable, err)
	}
	if err != nil {
		return worker.Stored{}, fmt.Errorf("dead-letter %s: %w", msgID, err)
	}
	if ack.Duplicate {
		q.logger.Debug("dead letter already stored", "msg_id", msgID)
	}
	return worker.Stored{Duplicate: ack.Duplicate}, nil
}

// headerSize estimates the encoded size of h.
func headerSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// deadLetterHeader builds the dead letter's headers from the request's, keeping at most
// keep bytes of the request's own (negative: all of them).
func deadLetterHeader(d worker.Delivery, dl worker.DeadLetter, msgID string, keep int) nats.Header {
	added := nats.Header{
		HeaderError:           {sanitizeHeaderValue(dl.Code)},
		HeaderErrorDetail:     {sanitizeHeaderValue(dl.Detail)},
		HeaderOriginalSubject: {d.Subject},
		HeaderStreamSequence:  {strconv.FormatUint(d.StreamSeq, 10)},
		HeaderAttempts:        {strconv.Itoa(dl.Attempts)},
		HeaderMsgID:           {msgID},
	}
	h := make(nats.Header, len(d.Header)+len(added))
	kept, dropped := 0, 0
	for _, k := range slices.Sorted(maps.Keys(d.Header)) {
		vs := d.Header[k]
		name := k
		switch {
		case hasPrefixFold(k, headerNatsPrefix):
			name = HeaderOriginalPrefix + k[len(headerNatsPrefix):]
		case hasPrefixFold(k, headerReprocessPrefix):
			name = HeaderOriginalPrefix + k
		}
		for _, v := range vs {
			if keep >= 0 && kept+len(name)+len(v)+4 > keep {
				dropped++
				continue
			}
			kept += len(name) + len(v) + 4
			h[name] = append(h[name], v)
		}
	}
	for k, vs := range added {
		h[k] = vs
	}
	if dropped > 0 {
		h.Set(HeaderHeadersDropped, strconv.Itoa(dropped))
	}
	return h
}

// hasPrefixFold reports whether k starts with prefix, ignoring case, and has more after it.
func hasPrefixFold(k, prefix string) bool {
	return len(k) > len(prefix) && strings.EqualFold(k[:len(prefix)], prefix)
}

// sanitizeHeaderValue makes s a valid one-line header value: control characters become
// spaces, invalid UTF-8 is replaced, and it is cut to maxDetailBytes.
func sanitizeHeaderValue(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > maxDetailBytes {
		cut := maxDetailBytes - len("...")
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// validHeaderValue reports whether s holds no control characters.
func validHeaderValue(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// ScheduleCheck puts a state check on "<prefix>.verify" with Nats-Msg-Id set to its MsgID,
// so that scheduling it again within the dedupe window stores nothing new, and waits for
// the stream's acknowledgement.
func (q *Queue) ScheduleCheck(ctx context.Context, c *worker.Check) error {
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("state check: %w", err)
	}
	m := &nats.Msg{Subject: q.verifySubject, Data: data, Header: nats.Header{HeaderMsgID: {c.MsgID()}}}
	if _, err := q.acked.Publish(ctx, m); err != nil {
		if tooLarge(err) {
			err = fmt.Errorf("%w: %w", worker.ErrUnstorable, err)
		}
		return fmt.Errorf("state check %s: %w", c.MsgID(), err)
	}
	return nil
}

package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

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
	HeaderMsgID            = "Nats-Msg-Id"                  // JetStream's dedupe header
	headerNatsPrefix       = "Nats-"                        // JetStream control headers
	headerContentType      = "Content-Type"                 // set on events
	contentTypeCloudEvents = "application/cloudevents+json" // structured-mode CloudEvents
	maxDetailBytes         = 1024                           // longest Reprocess-Error-Detail value
)

// PublishEvent publishes e as JSON to "<prefix>.events.<kind>" with Nats-Msg-Id set to its
// id, so that the events stream drops a repeat within the dedupe window, and waits for the
// stream's acknowledgement. It is safe for many concurrent callers.
func (q *Queue) PublishEvent(ctx context.Context, e *worker.Event) error {
	kind := e.Kind()
	if err := validToken(kind); err != nil {
		return fmt.Errorf("publish event %q: kind: %w", e.ID, err)
	}
	if e.ID == "" || !validHeaderValue(e.ID) {
		return fmt.Errorf("publish event of kind %s: id %q: must be non-empty, without control characters", kind, e.ID)
	}
	data, err := e.JSON()
	if err != nil {
		return fmt.Errorf("publish event %s: encode: %w", e.ID, err)
	}
	m := &nats.Msg{
		Subject: q.eventsPrefix + "." + kind,
		Data:    data,
		Header: nats.Header{
			HeaderMsgID:       {e.ID},
			headerContentType: {contentTypeCloudEvents},
		},
	}
	if err := q.acked.Publish(ctx, m); err != nil {
		return fmt.Errorf("publish event %s: %w", e.ID, err)
	}
	return nil
}

// PublishAckTimeout is how long an event or a state check waits for the stream's
// acknowledgement, as long as a synchronous JetStream publish waits by default.
const PublishAckTimeout = 5 * time.Second

// DeadLetter copies the delivered request to "<prefix>.dlq": its data byte for byte, its
// headers as they were except that every JetStream control header (Nats-*) is renamed
// Reprocess-Original-* (Nats-Msg-Id becomes Reprocess-Original-Msg-Id) so that it has no
// effect on the dead-letter stream, plus the Reprocess-* headers saying why. The copy's own
// Nats-Msg-Id is "<stream>-<sequence>-dlq", so dead-lettering a redelivered request again
// within the dedupe window stores nothing new. It waits for the stream's acknowledgement.
func (q *Queue) DeadLetter(ctx context.Context, d worker.Delivery, dl worker.DeadLetter) error {
	if d.Stream == "" || d.StreamSeq == 0 {
		return errors.New("dead-letter: the delivery has no stream and sequence")
	}
	msgID := d.Stream + "-" + strconv.FormatUint(d.StreamSeq, 10) + "-dlq"
	m := &nats.Msg{Subject: q.dlqSubject, Data: d.Data, Header: deadLetterHeader(d, dl, msgID)}
	ack, err := q.js.PublishMsg(ctx, m)
	if errors.Is(err, nats.ErrMaxPayload) {
		// The request was near the server's payload limit and the added headers pushed the
		// copy over it: keep as much of the data as fits and say how long it was, rather
		// than failing to dead-letter it at all.
		m.Header.Set(HeaderTruncated, strconv.Itoa(len(d.Data)))
		room := int(q.nc.MaxPayload()) - headerSize(m.Header) - 1024
		m.Data = d.Data[:max(0, min(room, len(d.Data)))]
		ack, err = q.js.PublishMsg(ctx, m)
	}
	if err != nil {
		return fmt.Errorf("dead-letter %s: %w", msgID, err)
	}
	if ack.Duplicate {
		q.logger.Debug("dead letter already stored", "msg_id", msgID)
	}
	return nil
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

// deadLetterHeader builds the dead letter's headers from the request's.
func deadLetterHeader(d worker.Delivery, dl worker.DeadLetter, msgID string) nats.Header {
	added := nats.Header{
		HeaderError:           {sanitizeHeaderValue(dl.Code)},
		HeaderErrorDetail:     {sanitizeHeaderValue(dl.Detail)},
		HeaderOriginalSubject: {d.Subject},
		HeaderStreamSequence:  {strconv.FormatUint(d.StreamSeq, 10)},
		HeaderAttempts:        {strconv.Itoa(dl.Attempts)},
		HeaderMsgID:           {msgID},
	}
	h := make(nats.Header, len(d.Header)+len(added))
	for k, vs := range d.Header {
		if isNatsHeader(k) {
			k = HeaderOriginalPrefix + k[len(headerNatsPrefix):]
		}
		if hasFold(added, k) {
			continue // a replayed dead letter: the new reason replaces the old
		}
		h[k] = slices.Clone(vs)
	}
	for k, vs := range added {
		h[k] = vs
	}
	return h
}

// hasFold reports whether h has the key k, ignoring case.
func hasFold(h nats.Header, k string) bool {
	for name := range h {
		if strings.EqualFold(name, k) {
			return true
		}
	}
	return false
}

// isNatsHeader reports whether k is in JetStream's reserved Nats-* namespace.
func isNatsHeader(k string) bool {
	return len(k) > len(headerNatsPrefix) && strings.EqualFold(k[:len(headerNatsPrefix)], headerNatsPrefix)
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
	if err := q.acked.Publish(ctx, m); err != nil {
		return fmt.Errorf("state check %s: %w", c.MsgID(), err)
	}
	return nil
}

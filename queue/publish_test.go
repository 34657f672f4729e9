package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/worker"
)

// testEvent returns an accepted event with the given id.
func testEvent(id string) *worker.Event {
	return &worker.Event{
		SpecVersion:     "1.0",
		ID:              id,
		Source:          "reprocessor/test",
		Type:            worker.TypePrefix + worker.KindAccepted,
		Subject:         "0f8fad5b-d9cb-469f-a165-70867728950e",
		Time:            time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		DataContentType: "application/json",
		Data:            worker.EventData{AssignmentID: "0f8fad5b-d9cb-469f-a165-70867728950e", Attempts: 1, HTTPStatus: 202},
	}
}

// TestPublishEventDedupes: an event published again with the same id stores nothing new,
// and the result says so with the event stored first, whatever the kind of the second
// (a redelivery that ended otherwise).
func TestPublishEventDedupes(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{})
	ctx := testContext(t)
	id := worker.RequestRef(DefaultRequestsStream, 7, time.Unix(1764655200, 123456789)) + "-outcome"
	e := testEvent(id)
	for i := range 2 {
		stored, err := f.q.PublishEvent(ctx, e)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if stored.Duplicate != (i == 1) {
			t.Fatalf("publish %d: duplicate %v", i, stored.Duplicate)
		}
	}
	if n := f.streamMsgs(t, DefaultEventsStream); n != 1 {
		t.Fatalf("events stream holds %d messages after publishing one event twice", n)
	}
	s, err := f.js.Stream(ctx, DefaultEventsStream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, "entitlement.reprocess.events.accepted")
	if err != nil {
		t.Fatalf("get event: %v", err)
	}
	if got := raw.Header.Get(HeaderMsgID); got != "REPROCESS_REQUESTS-7-1764655200123456789-outcome" {
		t.Errorf("Nats-Msg-Id %q", got)
	}
	var back worker.Event
	if err := json.Unmarshal(raw.Data, &back); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if back.ID != e.ID || back.Type != e.Type || back.Data.HTTPStatus != 202 || !back.Time.Equal(e.Time) {
		t.Errorf("stored event %+v", back)
	}

	// Another outcome with the same id is dropped; the stored one is handed back.
	failed := testEvent(id)
	failed.Type = worker.TypePrefix + worker.KindFailed
	stored, err := f.q.PublishEvent(ctx, failed)
	if err != nil {
		t.Fatal(err)
	}
	if !stored.Duplicate || stored.Event == nil || stored.Event.Kind() != worker.KindAccepted || stored.Event.ID != id {
		t.Fatalf("second outcome: %+v (event %+v), want a duplicate of the accepted event", stored, stored.Event)
	}
	if _, err := s.GetLastMsgForSubject(ctx, "entitlement.reprocess.events.failed"); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a failed event was stored beside the accepted one: %v", err)
	}

	// An event with another id of another kind goes to its own subject.
	other := testEvent(worker.RequestRef(DefaultRequestsStream, 8, time.Unix(1764655200, 0)) + "-outcome")
	other.Type = worker.TypePrefix + worker.KindFailed
	if _, err := f.q.PublishEvent(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetLastMsgForSubject(ctx, "entitlement.reprocess.events.failed"); err != nil {
		t.Errorf("failed event: %v", err)
	}
}

func TestPublishEventRejectsBadEvents(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{})
	ctx := testContext(t)
	for name, e := range map[string]*worker.Event{
		"no id":         testEvent(""),
		"newline in id": testEvent("a\r\nb"),
		"wildcard kind": func() *worker.Event { e := testEvent("x"); e.Type = worker.TypePrefix + "*"; return e }(),
		"dotted kind":   func() *worker.Event { e := testEvent("x"); e.Type = worker.TypePrefix + "a.b"; return e }(),
		"empty kind":    func() *worker.Event { e := testEvent("x"); e.Type = worker.TypePrefix; return e }(),
	} {
		if _, err := f.q.PublishEvent(ctx, e); !errors.Is(err, worker.ErrUnstorable) {
			t.Errorf("%s: %v, want ErrUnstorable", name, err)
		}
	}
}

func TestDeadLetterCopiesMessage(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{FetchMaxWait: 300 * time.Millisecond})
	ctx := testContext(t)

	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	large := bytes.Repeat([]byte("0123456789abcdef"), 512*1024/16)
	payloads := [][]byte{binary, large, []byte("  0f8fad5b-d9cb-469f-a165-70867728950e\n")}
	for i, p := range payloads {
		h := nats.Header{
			"X-Trace":     {"t1", "t2"},
			"Nats-Msg-Id": {"producer-" + string(rune('a'+i))},
		}
		f.publishRequest(t, p, h)
	}
	msgs := fetch(t, f.q, 3)
	if len(msgs) != 3 {
		t.Fatalf("fetched %d", len(msgs))
	}
	dl := worker.DeadLetter{Code: worker.CodeNotFound, Detail: "Graph said:\r\nno such\tassignment", Attempts: 3}
	for _, m := range msgs {
		if stored, err := f.q.DeadLetter(ctx, m.Delivery(), dl); err != nil || stored.Duplicate {
			t.Fatalf("dead-letter: %+v, %v", stored, err)
		}
	}
	// Dead-lettering a redelivery again stores nothing new, and says so.
	if stored, err := f.q.DeadLetter(ctx, msgs[0].Delivery(), dl); err != nil || !stored.Duplicate {
		t.Fatalf("dead-letter again: %+v, %v; want a duplicate", stored, err)
	}
	ack(t, msgs...)
	if n := f.streamMsgs(t, DefaultDLQStream); n != 3 {
		t.Fatalf("dlq holds %d messages, want 3", n)
	}

	s, err := f.js.Stream(ctx, DefaultDLQStream)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		d := m.Delivery()
		raw, err := s.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatalf("get dead letter %d: %v", i, err)
		}
		if !bytes.Equal(raw.Data, payloads[i]) {
			t.Errorf("dead letter %d: data differs (%d bytes, want %d)", i, len(raw.Data), len(payloads[i]))
		}
		want := map[string]string{
			HeaderError:           "not_found",
			HeaderErrorDetail:     "Graph said:  no such assignment",
			HeaderOriginalSubject: "entitlement.reprocess.requests",
			HeaderStreamSequence:  itoa(d.StreamSeq),
			HeaderAttempts:        "3",
			HeaderOriginalMsgID:   "producer-" + string(rune('a'+i)),
			HeaderMsgID:           "REPROCESS_REQUESTS-" + itoa(d.StreamSeq) + "-" + strconv.FormatInt(d.Timestamp.UnixNano(), 10) + "-dlq",
		}
		for k, v := range want {
			if got := raw.Header.Get(k); got != v {
				t.Errorf("dead letter %d: %s = %q, want %q", i, k, got, v)
			}
		}
		if got := raw.Header.Values("X-Trace"); len(got) != 2 || got[0] != "t1" || got[1] != "t2" {
			t.Errorf("dead letter %d: X-Trace %q", i, got)
		}
	}
}

func TestDeadLetterHeader(t *testing.T) {
	t.Parallel()
	d := worker.Delivery{
		Subject:   "p.requests",
		Stream:    "S",
		StreamSeq: 9,
		Header: map[string][]string{
			"Nats-Expected-Stream": {"S"},
			"Nats-Rollup":          {"all"},
			"nats-ttl":             {"1s"},
			"Reprocess-Error":      {"old"},
			"Reprocess-Truncated":  {"999"},
			"Custom":               {"kept"},
		},
	}
	h := deadLetterHeader(d, worker.DeadLetter{Code: "api_error", Detail: strings.Repeat("é", 2000)}, "S-9-dlq", -1)
	for k := range h {
		if hasPrefixFold(k, headerNatsPrefix) && k != HeaderMsgID {
			t.Errorf("control header %s copied as such", k)
		}
	}
	if h.Get("Reprocess-Original-Expected-Stream") != "S" || h.Get("Reprocess-Original-Rollup") != "all" ||
		h.Get("Reprocess-Original-ttl") != "1s" || h.Get("Custom") != "kept" || h.Get(HeaderError) != "api_error" {
		t.Errorf("headers %v", h)
	}
	// A producer's own Reprocess-* headers cannot pass for the dead letter's.
	if h.Get(HeaderTruncated) != "" || h.Get("Reprocess-Original-Reprocess-Truncated") != "999" ||
		h.Get("Reprocess-Original-Reprocess-Error") != "old" || len(h.Values(HeaderError)) != 1 {
		t.Errorf("a request's Reprocess-* headers were not renamed: %v", h)
	}
	if detail := h.Get(HeaderErrorDetail); len(detail) > maxDetailBytes || !strings.HasSuffix(detail, "é...") {
		t.Errorf("long detail not cut on a rune boundary: %d bytes, ends %q", len(detail), detail[len(detail)-8:])
	}
}

func TestDeadLetterNeedsSequence(t *testing.T) {
	t.Parallel()
	q := &Queue{}
	if _, err := q.DeadLetter(t.Context(), worker.Delivery{Data: []byte("x")}, worker.DeadLetter{}); err == nil {
		t.Error("dead-letter without stream and sequence: no error")
	}
}

func TestSanitizeHeaderValue(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"a\r\nb", "a  b"},
		{"\ttab\x00nul\x7f", "tab nul"},
		{"bad\xffutf8", "bad\uFFFDutf8"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := sanitizeHeaderValue(tt.in); got != tt.want {
			t.Errorf("sanitizeHeaderValue(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestDeadLetterNearPayloadLimit: a request that fits the server's payload limit only
// without the dead-letter headers is still dead-lettered, cut to fit and marked so.
func TestDeadLetterNearPayloadLimit(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{FetchMaxWait: 300 * time.Millisecond})
	limit := int(f.js.Conn().MaxPayload())
	big := bytes.Repeat([]byte("x"), limit-64)
	f.publishRequest(t, big, nil)
	long := worker.DeadLetter{Code: worker.CodePayloadTooLarge, Detail: strings.Repeat("detail ", 100), Attempts: 0}
	raw := f.deadLetterFirst(t, long)
	if got := raw.Header.Get(HeaderTruncated); got != itoa(uint64(len(big))) {
		t.Fatalf("%s = %q, want %d", HeaderTruncated, got, len(big))
	}
	if len(raw.Data) == 0 || len(raw.Data) >= len(big) || !bytes.Equal(raw.Data, big[:len(raw.Data)]) {
		t.Fatalf("dead letter holds %d bytes, want a prefix of the %d-byte request", len(raw.Data), len(big))
	}
}

// TestDeadLetterWithHugeHeaders: a request carrying close to JetStream's 64 KiB of headers
// is dead-lettered with its own headers cut (JetStream refuses the copy with the added
// ones: error 10097), and says how many values were dropped.
func TestDeadLetterWithHugeHeaders(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{FetchMaxWait: 300 * time.Millisecond})
	h := nats.Header{}
	for i := range 64 { // 65,356 bytes of headers: the request fits, its copy would not
		h.Set(fmt.Sprintf("X-Padding-%02d", i), strings.Repeat("p", 1005))
	}
	f.publishRequest(t, []byte("0f8fad5b-d9cb-469f-a165-70867728950e"), h)
	raw := f.deadLetterFirst(t, worker.DeadLetter{Code: worker.CodeNotFound, Detail: "no such assignment", Attempts: 1})
	if raw.Header.Get(HeaderError) != worker.CodeNotFound || raw.Header.Get(HeaderHeadersDropped) == "" {
		t.Fatalf("headers %v", raw.Header)
	}
	if string(raw.Data) != "0f8fad5b-d9cb-469f-a165-70867728950e" {
		t.Fatalf("data %q", raw.Data)
	}
}

// TestEventTooLargeIsCut: an event over the events stream's max message size is stored with
// its text fields cut, not retried for ever.
func TestEventTooLargeIsCut(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{})
	ctx := testContext(t)
	s, err := f.js.Stream(ctx, DefaultEventsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgSize = 2048
	if _, err := f.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	e := testEvent(worker.RequestRef(DefaultRequestsStream, 1, time.Unix(1, 0)) + "-outcome")
	e.Type = worker.TypePrefix + worker.KindFailed
	long := strings.Repeat("m", worker.MaxFieldBytes)
	e.Data.Error = &worker.EventError{Code: worker.CodeNotFound, Message: long}
	e.Data.Reason, e.Data.CorrelationID, e.Data.RequestedBy = long, long, long
	if _, err := f.q.PublishEvent(ctx, e); err != nil {
		t.Fatalf("publish: %v", err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, "entitlement.reprocess.events.failed")
	if err != nil {
		t.Fatal(err)
	}
	var back worker.Event
	if err := json.Unmarshal(raw.Data, &back); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(back.Data.Error.Message, worker.TruncatedMarker) || back.Data.Error.Code != worker.CodeNotFound || back.ID != e.ID {
		t.Fatalf("stored %+v", back.Data)
	}

	// One that fits in no form is unstorable.
	cfg.MaxMsgSize = 64
	if _, err := f.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	e.ID = worker.RequestRef(DefaultRequestsStream, 2, time.Unix(1, 0)) + "-outcome"
	if _, err := f.q.PublishEvent(ctx, e); !errors.Is(err, worker.ErrUnstorable) {
		t.Fatalf("publish into 64 bytes: %v, want ErrUnstorable", err)
	}
}

// deadLetterFirst fetches the one queued request, dead-letters it with dl, acks it and
// returns the dead letter as the stream stored it.
func (f fixture) deadLetterFirst(t *testing.T, dl worker.DeadLetter) *jetstream.RawStreamMsg {
	t.Helper()
	ctx := testContext(t)
	msgs := fetch(t, f.q, 1)
	if _, err := f.q.DeadLetter(ctx, msgs[0].Delivery(), dl); err != nil {
		t.Fatalf("dead-letter: %v", err)
	}
	ack(t, msgs...)
	s, err := f.js.Stream(ctx, DefaultDLQStream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestAckedPublisher publishes to a real stream: stored messages and duplicates are
// acknowledged, a stream's refusal comes back as its API error, and a subject no stream
// takes as ErrNoStreamResponse.
func TestAckedPublisher(t *testing.T) {
	srv := startServer(t, t.TempDir())
	nc, js := connect(t, srv.ClientURL())
	ctx := testContext(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ACKED", Subjects: []string{"acked.>"}, MaxMsgSize: 64}); err != nil {
		t.Fatal(err)
	}
	p := NewAckedPublisher(nc, 5*time.Second)
	msg := func(id, data string) *nats.Msg {
		return &nats.Msg{Subject: "acked.x", Data: []byte(data), Header: nats.Header{HeaderMsgID: {id}}}
	}
	for i, id := range []string{"a", "b", "a"} { // the second "a" is a duplicate
		ack, err := p.Publish(ctx, msg(id, "data"))
		if err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
		if wantDup := i == 2; ack.Duplicate != wantDup || wantDup && ack.Seq != 1 {
			t.Fatalf("publish %d (%s): %+v, want duplicate %v (of seq 1)", i, id, ack, wantDup)
		}
	}
	if n := streamInfo(t, js, "ACKED").State.Msgs; n != 2 {
		t.Fatalf("stream holds %d messages, want 2 (a duplicate stores nothing)", n)
	}

	_, err := p.Publish(ctx, msg("big", strings.Repeat("x", 100)))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamMessageExceedsMaximum {
		t.Fatalf("publish over the stream's max message size: %v (%T), want the stream's API error 10054", err, err)
	}
	expect := &nats.Msg{Subject: "acked.x", Data: []byte("d"), Header: nats.Header{"Nats-Expected-Last-Sequence": {"1"}}}
	if _, err := p.Publish(ctx, expect); !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("publish with a wrong expected last sequence: %v, want the stream's API error 10071", err)
	}
	if _, err := p.Publish(ctx, &nats.Msg{Subject: "nostream.x", Data: []byte("d")}); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("publish to a subject no stream takes: %v, want ErrNoStreamResponse", err)
	}
}

// TestAckedPublisherGivesUp: a reply that never comes ends the wait after the timeout, and
// the end of ctx ends it at once; a reply arriving after its publisher gave up is dropped
// and does not reach the next publish.
func TestAckedPublisherGivesUp(t *testing.T) {
	srv := startServer(t, t.TempDir())
	nc, _ := connect(t, srv.ClientURL())
	// A subscriber that holds the requests, standing in for a slow stream; the test
	// answers them late.
	held, err := nc.SubscribeSync("slow")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe("fast", func(m *nats.Msg) { _ = m.Respond([]byte(`{"stream":"FAST","seq":1}`)) }); err != nil {
		t.Fatal(err)
	}
	p := NewAckedPublisher(nc, 200*time.Millisecond)
	start := time.Now()
	if _, err := p.Publish(t.Context(), &nats.Msg{Subject: "slow"}); !errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
		t.Fatalf("publish without a reply: %v, want ErrAsyncPublishTimeout", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("gave up after %v, before the timeout", d)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Publish(ctx, &nats.Msg{Subject: "slow"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish with a cancelled context: %v, want context.Canceled", err)
	}
	for range 2 { // the late replies, errors that no publisher may see
		m, err := held.NextMsg(time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Respond([]byte(`{"error":{"code":500,"err_code":10000,"description":"late"}}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := p.Publish(t.Context(), &nats.Msg{Subject: "fast"}); err != nil {
			t.Fatalf("publish %d after late replies: %v", i, err)
		}
	}
}

// TestAckedPublisherConcurrent: many publishers at once each get their own
// acknowledgement, and every message is stored once.
func TestAckedPublisherConcurrent(t *testing.T) {
	srv := startServer(t, t.TempDir())
	nc, js := connect(t, srv.ClientURL())
	ctx := testContext(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MANY", Subjects: []string{"many"}}); err != nil {
		t.Fatal(err)
	}
	p := NewAckedPublisher(nc, 5*time.Second)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				m := &nats.Msg{Subject: "many", Data: []byte("x"), Header: nats.Header{HeaderMsgID: {fmt.Sprintf("%d-%d", g, i)}}}
				if _, err := p.Publish(ctx, m); err != nil {
					t.Errorf("publish %d-%d: %v", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := streamInfo(t, js, "MANY").State.Msgs; n != 16*200 {
		t.Fatalf("stream holds %d messages, want %d", n, 16*200)
	}
}

func TestParsePubAck(t *testing.T) {
	for _, c := range []struct {
		name, data, status string
		want               string // "" for nil
		dup                bool
	}{
		{name: "ack", data: `{"stream":"S","seq":7}`},
		{name: "duplicate", data: `{"stream":"S","seq":7,"duplicate":true}`, dup: true},
		{name: "server's duplicate", data: `{"stream":"S", "domain":"d", "seq":7,"duplicate": true}`, dup: true},
		{name: "server's own format", data: `{"stream":"S", "domain":"d", "seq":7}`},
		{name: "error first", data: `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}`, want: "maximum messages exceeded"},
		{name: "error after stream", data: `{"stream":"S","seq":0,"error":{"code":400,"description":"odd order"}}`, want: "odd order"},
		{name: "no stream", data: `{"seq":7}`, want: "invalid jetstream publish response"},
		{name: "not json", data: `{"stream":`, want: "invalid jetstream publish response"},
		{name: "empty", data: ``, want: "invalid jetstream publish response"},
		{name: "no responders", status: "503", want: "no response from stream"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := &nats.Msg{Data: []byte(c.data)}
			if c.status != "" {
				m.Header = nats.Header{"Status": {c.status}}
			}
			ack := parsePubAck(m)
			err := ack.err
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("parsePubAck(%q) = %v, want %q", c.data, err, c.want)
			}
			if ack.Duplicate != c.dup || c.dup && ack.Seq != 7 {
				t.Fatalf("parsePubAck(%q) = %+v, want duplicate %v of seq 7", c.data, ack, c.dup)
			}
		})
	}
}

func streamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(testContext(t), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo()
}

// TestAckedPublisherConnectionErrors: what the connection refuses before anything is sent
// (a message over the server's max payload, a closed connection) comes back to the
// publisher at once, although another goroutine may have made the publish.
func TestAckedPublisherConnectionErrors(t *testing.T) {
	srv := startServer(t, t.TempDir())
	nc, _ := connect(t, srv.ClientURL())
	p := NewAckedPublisher(nc, 5*time.Second)
	big := make([]byte, nc.MaxPayload()+1)
	start := time.Now()
	if _, err := p.Publish(t.Context(), &nats.Msg{Subject: "big", Data: big}); !errors.Is(err, nats.ErrMaxPayload) {
		t.Fatalf("publish over the max payload: %v, want nats.ErrMaxPayload", err)
	}
	nc.Close()
	if _, err := p.Publish(t.Context(), &nats.Msg{Subject: "closed"}); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("publish on a closed connection: %v, want nats.ErrConnectionClosed", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the errors took %v: they must not wait for the acknowledgement timeout", d)
	}
}

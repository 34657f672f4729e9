package queue

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/worker"
)

func TestSetupIsIdempotentAndUpdates(t *testing.T) {
	t.Parallel()
	f := setup(t, Config{})
	ctx := testContext(t)
	logger := testLogger(t)

	infos := func() (map[string]*jetstream.StreamInfo, *jetstream.ConsumerInfo) {
		t.Helper()
		streams := map[string]*jetstream.StreamInfo{}
		for _, name := range []string{DefaultRequestsStream, DefaultEventsStream, DefaultDLQStream} {
			s, err := f.js.Stream(ctx, name)
			if err != nil {
				t.Fatalf("stream %s: %v", name, err)
			}
			streams[name] = s.CachedInfo()
		}
		c, err := f.js.Consumer(ctx, DefaultRequestsStream, DefaultDurable)
		if err != nil {
			t.Fatalf("consumer: %v", err)
		}
		return streams, c.CachedInfo()
	}
	streams, consumer := infos()

	// The contract's defaults.
	req := streams[DefaultRequestsStream].Config
	if req.Retention != jetstream.WorkQueuePolicy || req.Storage != jetstream.FileStorage ||
		len(req.Subjects) != 1 || req.Subjects[0] != "entitlement.reprocess.requests" {
		t.Errorf("requests stream: %+v", req)
	}
	ev := streams[DefaultEventsStream].Config
	if ev.Retention != jetstream.LimitsPolicy || ev.MaxAge != 7*24*time.Hour || ev.Duplicates != 10*time.Minute ||
		ev.Subjects[0] != "entitlement.reprocess.events.>" {
		t.Errorf("events stream: %+v", ev)
	}
	dlq := streams[DefaultDLQStream].Config
	if dlq.Retention != jetstream.LimitsPolicy || dlq.MaxAge != 30*24*time.Hour || dlq.Subjects[0] != "entitlement.reprocess.dlq" {
		t.Errorf("dlq stream: %+v", dlq)
	}
	cc := consumer.Config
	if cc.AckPolicy != jetstream.AckExplicitPolicy || cc.AckWait != 30*time.Second || cc.MaxAckPending != 1000 ||
		cc.MaxDeliver != -1 || cc.DeliverPolicy != jetstream.DeliverAllPolicy || cc.FilterSubject != "entitlement.reprocess.requests" {
		t.Errorf("consumer: %+v", cc)
	}

	// An operator's limit on a field Setup does not manage survives.
	ev.MaxBytes = 1 << 30
	if _, err := f.js.UpdateStream(ctx, ev); err != nil {
		t.Fatalf("operator update: %v", err)
	}
	streams, _ = infos()

	// Again with the same config: nothing changes.
	if _, err := Setup(ctx, f.js, Config{}, logger); err != nil {
		t.Fatalf("second setup: %v", err)
	}
	streams2, consumer2 := infos()
	for name, s := range streams {
		if diff := changedFields(s.Config, streams2[name].Config); len(diff) > 0 {
			t.Errorf("stream %s changed on a second setup: %v", name, diff)
		}
		if !s.Created.Equal(streams2[name].Created) {
			t.Errorf("stream %s was recreated", name)
		}
	}
	if diff := changedFields(consumer.Config, consumer2.Config); len(diff) > 0 {
		t.Errorf("consumer changed on a second setup: %v", diff)
	}

	// Changed settings are written.
	changed := Config{AckWait: 45 * time.Second, MaxAckPending: 77, EventsMaxAge: 48 * time.Hour, DLQMaxAge: 72 * time.Hour}
	if _, err := Setup(ctx, f.js, changed, logger); err != nil {
		t.Fatalf("setup with changes: %v", err)
	}
	streams3, consumer3 := infos()
	if got := consumer3.Config; got.AckWait != 45*time.Second || got.MaxAckPending != 77 {
		t.Errorf("consumer not updated: AckWait %s, MaxAckPending %d", got.AckWait, got.MaxAckPending)
	}
	if got := streams3[DefaultEventsStream].Config; got.MaxAge != 48*time.Hour || got.MaxBytes != 1<<30 {
		t.Errorf("events stream: MaxAge %s (want 48h), MaxBytes %d (want the operator's 1 GiB)", got.MaxAge, got.MaxBytes)
	}
	if got := streams3[DefaultDLQStream].Config.MaxAge; got != 72*time.Hour {
		t.Errorf("dlq MaxAge %s, want 72h", got)
	}
}

func TestSetupNoCreate(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	_, js := connect(t, srv.ClientURL())
	ctx := testContext(t)
	logger := testLogger(t)

	_, err := Setup(ctx, js, Config{NoCreate: true}, logger)
	if !errors.Is(err, ErrNotProvisioned) {
		t.Fatalf("no-create on an empty server: got %v, want ErrNotProvisioned", err)
	}
	for _, want := range []string{"stream REPROCESS_REQUESTS", "stream REPROCESS_EVENTS", "stream REPROCESS_DLQ", "consumer reprocessor"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, err := js.Stream(ctx, DefaultRequestsStream); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("no-create created a stream: %v", err)
	}

	if _, err := Setup(ctx, js, Config{}, logger); err != nil {
		t.Fatalf("setup: %v", err)
	}
	if err := js.DeleteStream(ctx, DefaultDLQStream); err != nil {
		t.Fatalf("delete dlq: %v", err)
	}
	_, err = Setup(ctx, js, Config{NoCreate: true}, logger)
	if !errors.Is(err, ErrNotProvisioned) || !strings.Contains(err.Error(), "stream REPROCESS_DLQ") ||
		strings.Contains(err.Error(), "REPROCESS_EVENTS") {
		t.Fatalf("no-create without the dlq stream: %v", err)
	}

	if _, err := Setup(ctx, js, Config{}, logger); err != nil {
		t.Fatalf("setup: %v", err)
	}
	// A differing AckWait is left alone with NoCreate.
	q, err := Setup(ctx, js, Config{NoCreate: true, AckWait: time.Minute}, logger)
	if err != nil {
		t.Fatalf("no-create bind: %v", err)
	}
	c, err := js.Consumer(ctx, DefaultRequestsStream, DefaultDurable)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.AckWait; got != DefaultAckWait {
		t.Errorf("no-create changed AckWait to %s", got)
	}
	if _, _, err := q.Pending(ctx); err != nil {
		t.Errorf("pending on a bound queue: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", Config{}, ""},
		{"wildcard prefix", Config{Prefix: "a.*"}, "Prefix"},
		{"empty token", Config{Prefix: "a..b"}, "Prefix"},
		{"space in prefix", Config{Prefix: "a b"}, "Prefix"},
		{"dotted stream", Config{RequestsStream: "A.B"}, "RequestsStream"},
		{"same streams", Config{EventsStream: DefaultDLQStream}, "must differ"},
		{"durable with space", Config{Durable: "a b"}, "Durable"},
		{"ack wait", Config{AckWait: time.Millisecond}, "AckWait"},
		{"max ack pending", Config{MaxAckPending: -1}, "MaxAckPending"},
		{"replicas", Config{Replicas: 7}, "Replicas"},
		{"fetch wait", Config{FetchMaxWait: time.Millisecond}, "FetchMaxWait"},
		{"dedupe window", Config{DuplicateWindow: 48 * time.Hour, EventsMaxAge: time.Hour}, "DuplicateWindow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.withDefaults().validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tt.want != "" && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

func TestSubjects(t *testing.T) {
	t.Parallel()
	r, e, d := Config{}.Subjects()
	if r != "entitlement.reprocess.requests" || e != "entitlement.reprocess.events" || d != "entitlement.reprocess.dlq" {
		t.Errorf("default subjects %q %q %q", r, e, d)
	}
	r, e, d = Config{Prefix: "x.y"}.Subjects()
	if r != "x.y.requests" || e != "x.y.events" || d != "x.y.dlq" {
		t.Errorf("prefixed subjects %q %q %q", r, e, d)
	}
}

func TestRestartKeepsStreamsAndMessages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logger := testLogger(t)
	ctx := testContext(t)

	srv, err := StartEmbedded(EmbeddedConfig{Port: -1, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	nc, js := connect(t, srv.ClientURL())
	q, err := Setup(ctx, js, Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	f := fixture{srv: srv, nc: nc, js: js, q: q}
	for i := range 3 {
		f.publishRequest(t, []byte{byte('a' + i)}, nil)
	}
	if _, err := q.PublishEvent(ctx, testEvent("REPROCESS_REQUESTS-1-1-outcome")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	srv.Shutdown()

	srv2 := startServer(t, dir)
	_, js2 := connect(t, srv2.ClientURL())
	q2, err := Setup(ctx, js2, Config{NoCreate: true, FetchMaxWait: 300 * time.Millisecond}, logger)
	if err != nil {
		t.Fatalf("bind after restart: %v", err)
	}
	pending, _, err := q2.Pending(ctx)
	if err != nil || pending != 3 {
		t.Errorf("pending after restart: %d, %v; want 3", pending, err)
	}
	s, err := js2.Stream(ctx, DefaultEventsStream)
	if err != nil || s.CachedInfo().State.Msgs != 1 {
		t.Errorf("events after restart: %v", err)
	}
	var got []string
	if err := q2.Fetch(ctx, 10, func(m worker.Message) {
		got = append(got, string(m.Delivery().Data))
		if err := m.Ack(); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "") != "abc" {
		t.Errorf("fetched %q after restart, want a b c", got)
	}
}

package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/internal/testsync"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/service"
	"github.com/reprocessor/reprocessor/worker"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		// This test binary is standing in for the reprocessor binary (see startChild).
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	testsync.ShortParallel(4)
	goleak.VerifyTestMain(m,
		// The HTTP/2 client transport keeps a read loop per idle connection until it closes.
		goleak.IgnoreTopFunction("net/http.(*http2ClientConn).readLoop"),
	)
}

// childEnv makes the test binary run Main as cmd/reprocessor does: process-level tests
// start it as the worker.
const childEnv = "REPROCESSOR_TEST_CHILD"

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer = testsync.SyncBuffer

// env is a fake environment.
type env map[string]string

func (e env) get(name string) string { return e[name] }

// with returns a copy of e with more's variables added over its own.
func (e env) with(more env) env {
	out := env{}
	for k, v := range e {
		out[k] = v
	}
	for k, v := range more {
		out[k] = v
	}
	return out
}

// system is a NATS server, the simulated Graph and a client to both: what a worker under
// test runs against.
type system struct {
	t    testing.TB
	gt   *graphtest.Server
	nats *queue.Embedded
	dir  string
	nc   *nats.Conn
	js   jetstream.JetStream
	env  env
}

func newSystem(t *testing.T, opts graphtest.Options) *system { return newSystemTB(t, opts) }

func newSystemTB(t testing.TB, opts graphtest.Options) *system {
	t.Helper()
	dir := t.TempDir()
	ns, err := queue.StartEmbedded(queue.EmbeddedConfig{Port: -1, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	s := newSystemOn(t, opts, ns.ClientURL())
	s.nats, s.dir = ns, dir
	return s
}

// newSystemOn is a system on a NATS server the test started (a cluster, users): the
// simulated Graph and a client of natsURL that reconnects for ever.
func newSystemOn(t testing.TB, opts graphtest.Options, natsURL string, natsOpts ...nats.Option) *system {
	t.Helper()
	gt, err := graphtest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gt.Close)
	natsOpts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, natsOpts...)
	nc, err := nats.Connect(natsURL, natsOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &system{t: t, gt: gt, nc: nc, js: js, env: testEnv(natsURL, gt)}
}

// startJetStreamServer starts a JetStream server on a random loopback port with its store
// in a temporary directory; opts adds what the test needs (users, permissions).
func startJetStreamServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoSigs = "127.0.0.1", -1, true, t.TempDir(), true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	return srv
}

// worker is a worker run in this process.
type runningWorker struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan error
	http   string
	logs   *syncBuffer
}

// startWorker runs a worker in this process against sys with env changed by overrides.
func (s *system) startWorker(overrides env) *runningWorker {
	s.t.Helper()
	e := env{}
	for k, v := range s.env {
		e[k] = v
	}
	for k, v := range overrides {
		e[k] = v
	}
	cfg, _, err := config.Load(nil, e.get)
	if err != nil {
		s.t.Fatalf("config: %v", err)
	}
	logs := &syncBuffer{}
	log, err := logging.New(io.MultiWriter(logs, testWriter{s.t}), cfg.LogLevel, cfg.LogFormat, cfg.Secrets())
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &runningWorker{t: s.t, cancel: cancel, done: make(chan error, 1), logs: logs}
	up := make(chan service.Started, 1)
	go func() {
		w.done <- service.Run(ctx, cfg, log, e.get, service.Options{GraphHTTP: s.gt.Client(), Started: func(st service.Started) { up <- st }})
	}()
	select {
	case st := <-up:
		w.http = st.HTTPAddr
	case err := <-w.done:
		s.t.Fatalf("worker did not start: %v", err)
	case <-time.After(20 * time.Second):
		s.t.Fatal("worker did not start within 20s")
	}
	s.t.Cleanup(func() { w.stop() })
	return w
}

// stop stops the worker and returns what runWorker returned.
func (w *runningWorker) stop() error {
	w.cancel()
	select {
	case err, ok := <-w.done:
		if ok {
			close(w.done)
		}
		return err
	case <-time.After(60 * time.Second):
		w.t.Fatal("worker did not stop within 60s")
		return nil
	}
}

// get fetches a path from the worker's HTTP listener.
func (w *runningWorker) get(path string) (int, string) {
	return httpGet(w.t, "http://"+w.http+path)
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// testWriter sends log lines to t.Log when -v is given.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// publish publishes request payloads with JetStream.
func (s *system) publish(payloads ...[]byte) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, 0, len(payloads))
	for _, p := range payloads {
		f, err := s.js.PublishMsgAsync(&nats.Msg{Subject: "entitlement.reprocess.requests", Data: p})
		if err != nil {
			s.t.Fatalf("publish: %v", err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			s.t.Fatalf("publish: %v", err)
		case <-ctx.Done():
			s.t.Fatal("publish: no ack")
		}
	}
}

// ensureStreams creates the streams as the worker would, so that requests can be published
// before a worker runs.
func (s *system) ensureStreams() {
	s.t.Helper()
	if _, err := queue.Setup(context.Background(), s.js, queue.Config{}, nil); err != nil {
		s.t.Fatal(err)
	}
}

// events returns every event in the events stream, in order, waiting until there are at
// least n of them.
func (s *system) events(n int) []worker.Event {
	s.t.Helper()
	var evs []worker.Event
	s.waitFor(fmt.Sprintf("%d events", n), 60*time.Second, func() bool {
		evs = s.readEvents()
		return len(evs) >= n
	})
	return evs
}

func (s *system) readEvents() []worker.Event {
	s.t.Helper()
	evs, err := s.tryReadEvents()
	if err != nil {
		s.t.Fatal(err)
	}
	return evs
}

// tryReadEvents is readEvents returning an error where the stream cannot be read (while a
// cluster elects a leader, say); a malformed event still fails the test.
func (s *system) tryReadEvents() ([]worker.Event, error) {
	s.t.Helper()
	msgs, err := s.tryStreamMessages("REPROCESS_EVENTS")
	if err != nil {
		return nil, err
	}
	evs := make([]worker.Event, 0, len(msgs))
	for _, m := range msgs {
		var e worker.Event
		if err := json.Unmarshal(m.Data(), &e); err != nil {
			s.t.Fatalf("event %q: %v", m.Data(), err)
		}
		if m.Subject() != "entitlement.reprocess.events."+e.Kind() {
			s.t.Fatalf("event of kind %s on subject %s", e.Kind(), m.Subject())
		}
		if m.Headers().Get("Nats-Msg-Id") != e.ID {
			s.t.Fatalf("event %s published with Nats-Msg-Id %q", e.ID, m.Headers().Get("Nats-Msg-Id"))
		}
		evs = append(evs, e)
	}
	return evs, nil
}

// streamMessages reads every message stored in a stream.
func (s *system) streamMessages(stream string) []jetstream.Msg {
	s.t.Helper()
	msgs, err := s.tryStreamMessages(stream)
	if err != nil {
		s.t.Fatal(err)
	}
	return msgs
}

func (s *system) tryStreamMessages(stream string) ([]jetstream.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	var out []jetstream.Msg
	for uint64(len(out)) < info.State.Msgs {
		batch, err := c.Fetch(int(min(info.State.Msgs-uint64(len(out)), 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", stream, err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			if len(out) == 0 {
				// Nothing came although the stream holds messages: a consumer on a stream
				// whose leader just moved (the cluster test) can be left with nothing to
				// deliver. Say so, so that a caller retrying sees why.
				return nil, fmt.Errorf("stream %s: holds %d messages, none delivered: %v", stream, info.State.Msgs, batch.Error())
			}
			break
		}
	}
	return out, nil
}

// pending returns the consumer's undelivered and unacknowledged counts.
func (s *system) pending() (uint64, uint64) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.js.Consumer(ctx, "REPROCESS_REQUESTS", "reprocessor")
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return info.NumPending, uint64(info.NumAckPending)
}

// deadLetters waits until the dead-letter stream holds n messages and returns them: a
// dead letter is stored after its request's event, so seeing the events is not enough.
func (s *system) deadLetters(n int) []jetstream.Msg {
	s.t.Helper()
	var dl []jetstream.Msg
	s.waitFor(fmt.Sprintf("%d dead letters", n), 30*time.Second, func() bool {
		dl = s.streamMessages("REPROCESS_DLQ")
		return len(dl) >= n
	})
	return dl
}

func (s *system) waitFor(what string, timeout time.Duration, cond func() bool) {
	s.t.Helper()
	waitUntil(s.t, what, timeout, cond)
}

func waitUntil(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testsync.Poll(t, what, timeout, 20*time.Millisecond, cond)
}

// kinds counts events per kind.
func kinds(evs []worker.Event) map[string]int {
	k := map[string]int{}
	for _, e := range evs {
		k[e.Kind()]++
	}
	return k
}

// ids returns n distinct assignment ids.
func ids(n int, salt int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", salt, i)
	}
	return out
}

func payloads(ids []string) [][]byte {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		out[i] = []byte(id)
	}
	return out
}

// testEnv is the environment of a worker under test: NATS at natsURL, the simulated Graph
// gt, no rate limit, short backoffs, debug logs, a free HTTP port, tracking off.
func testEnv(natsURL string, gt *graphtest.Server) env {
	e := env{
		"NATS_URL":                    natsURL,
		"REPROCESSOR_HTTP_ADDR":       "127.0.0.1:0",
		"REPROCESSOR_RATE":            "0",
		"REPROCESSOR_INSTANCE":        "test",
		"REPROCESSOR_BACKOFF_INITIAL": "10ms",
		"REPROCESSOR_BACKOFF_MAX":     "100ms",
		"REPROCESSOR_LOG_LEVEL":       "debug",
		// State tracking adds state_changed events; the tests of tracking turn it on.
		"REPROCESSOR_VERIFY": "false",
	}
	for k, v := range gt.Env("") {
		e[k] = v
	}
	return e
}

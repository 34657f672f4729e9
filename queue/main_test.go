package queue

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/reprocessor/reprocessor/internal/testsync"
)

func TestMain(m *testing.M) {
	testsync.ShortParallel(4)
	goleak.VerifyTestMain(m)
}

// testLogger logs at debug level to the test's output until the test ends; asynchronous
// callbacks that log after it are discarded.
func testLogger(tb testing.TB) *slog.Logger {
	w := &testWriter{w: tb.Output()}
	tb.Cleanup(w.stop) // registered first, so it runs last
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu      sync.Mutex
	w       io.Writer
	stopped bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return len(p), nil
	}
	return w.w.Write(p)
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

// startServer starts an embedded server on a random port with its store in dir.
func startServer(tb testing.TB, dir string) *Embedded {
	tb.Helper()
	srv, err := StartEmbedded(EmbeddedConfig{Port: -1, DataDir: dir})
	if err != nil {
		tb.Fatalf("start embedded server: %v", err)
	}
	tb.Cleanup(srv.Shutdown)
	return srv
}

// connect opens a plain client connection.
func connect(tb testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// fixture is a server, a connection and a set-up queue.
type fixture struct {
	srv *Embedded
	nc  *nats.Conn
	js  jetstream.JetStream
	q   *Queue
}

// setup starts a server and sets a queue up on it with cfg.
func setup(tb testing.TB, cfg Config) fixture {
	tb.Helper()
	logger := testLogger(tb)
	srv := startServer(tb, tb.TempDir())
	nc, js := connect(tb, srv.ClientURL())
	q, err := Setup(testContext(tb), js, cfg, logger)
	if err != nil {
		tb.Fatalf("setup: %v", err)
	}
	return fixture{srv: srv, nc: nc, js: js, q: q}
}

// testContext is the test's context with a deadline.
func testContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(tb.Context(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// publishRequest publishes a request with JetStream and returns its stream sequence.
func (f fixture) publishRequest(tb testing.TB, data []byte, header nats.Header) uint64 {
	tb.Helper()
	requests, _, _ := f.q.cfg.Subjects()
	ack, err := f.js.PublishMsg(testContext(tb), &nats.Msg{Subject: requests, Data: data, Header: header})
	if err != nil {
		tb.Fatalf("publish request: %v", err)
	}
	return ack.Sequence
}

// streamMsgs returns the number of messages stored in a stream.
func (f fixture) streamMsgs(tb testing.TB, name string) uint64 {
	tb.Helper()
	s, err := f.js.Stream(testContext(tb), name)
	if err != nil {
		tb.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().State.Msgs
}

// jetstreamFor returns a JetStream context on nc.
func jetstreamFor(tb testing.TB, nc *nats.Conn) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	return js
}

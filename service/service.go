// Package service runs reprocessor as a long-lived process: it starts the parts in order
// (the HTTP listener first, then NATS, the streams, the Graph credential, replica control
// and the worker), says through /readyz which of them is not there yet, and stops them in
// the reverse order when its context ends.
package service

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/ratelimit"
	"github.com/reprocessor/reprocessor/tracing"
	"github.com/reprocessor/reprocessor/version"
	"github.com/reprocessor/reprocessor/worker"
)

// Options are what demo, bench and tests add to a run.
type Options struct {
	GraphHTTP *http.Client         // carries Graph and token calls (a client trusting a simulated Graph)
	Started   func(Started)        // called once everything is up
	Registry  *prometheus.Registry // default a new registry with the runtime collectors
	// Embedded runs on the embedded server whatever NATS contexts say (the demo, which
	// brings its own server and hides the caller's NATS settings).
	Embedded bool
}

// Started says where a running worker can be reached.
type Started struct {
	NATSURL  string // the NATS server in use (the embedded one when NATS_URL is unset)
	HTTPAddr string // the metrics and health listener, "" when off
}

// Run runs the worker until ctx is done, then stops what it started in the reverse order:
// the worker (letting in-flight work finish within the shutdown timeout), the queue
// poller, replica control, the credential, the HTTP listeners, the NATS connection (drained)
// and the embedded server.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, getenv func(string) string, opts Options) error {
	log.Info("starting reprocessor", "version", version.Line(), "config", cfg)
	var st stack
	defer st.stop()

	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		if err := metrics.RegisterRuntimeCollectors(reg); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	m := metrics.New(reg, version.Info())

	// The HTTP listener comes first, so that /healthz answers while NATS and Graph are
	// still being reached; readiness says what is not there yet.
	var ready readiness
	checks := ready.checks()
	if err := metrics.RegisterReadiness(reg, checks); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	httpAddr, stopServing, err := ServeHTTP(cfg.HTTPAddr, metrics.Handler(reg, checks, log), log)
	if err != nil {
		return err
	}
	// The listener stops after the worker and before the NATS drain (pushed again below);
	// this step stops it when starting fails before that.
	stopHTTP := sync.OnceFunc(stopServing)
	st.push(stopHTTP)
	if cfg.PprofAddr != "" {
		_, stopPprof, err := ServeHTTP(cfg.PprofAddr, metrics.PprofHandler(), log)
		if err != nil {
			return err
		}
		st.push(stopPprof)
	}

	// NATS_URL, else a NATS CLI context (named, or selected with "nats context select"),
	// else the embedded server: never the embedded server while a context is selected.
	cc, from, err := queue.Resolve(getenv, cfg.NATSURL, cfg.NATSContext)
	if opts.Embedded {
		cc, from, err = queue.ConnConfigFromEnv(getenv), queue.FromNone, nil
	}
	if err != nil {
		return err
	}
	if from == queue.FromNone {
		emb, err := StartEmbedded(cfg, log)
		if err != nil {
			return err
		}
		st.push(emb.Shutdown)
		cc.URL = emb.ClientURL()
		log.Info("no NATS_URL and no NATS context: started an embedded JetStream server", "url", cc.URL, "data_dir", cfg.DataDir)
	} else {
		log.Info("NATS connection settings", "from", queue.Describe(cc, from), "nats", cc.Redacted())
	}
	cc.Name = "reprocessor/" + cfg.Instance
	cc.OnAckRefused = ready.ackRefused
	nc, err := queue.Connect(ctx, cc, log)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", cc.Redacted(), err)
	}
	st.push(func() {
		if err := queue.Drain(nc, 10*time.Second); err != nil {
			log.Warn("NATS drain", "err", err)
		}
	})
	st.push(stopHTTP)
	ready.set(func(r *readiness) { r.nc = nc })
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	q, err := setupQueue(ctx, js, cfg.Queue(), log)
	if err != nil || q == nil {
		return err // q is nil when ctx ended before NATS could be reached
	}

	// The worker holds fetching until there is a token; the first token (or the first after
	// an outage) wakes it at once instead of at its next poll.
	gs := cfg.Graph()
	gs.HTTPClient, gs.Observe, gs.Logger = opts.GraphHTTP, m.ObserveGraph, log
	gs.OnReady = func() {
		if w := ready.worker(); w != nil {
			w.Wake()
		}
	}
	session, err := graph.Open(getenv, gs)
	if err != nil {
		return err
	}
	st.push(session.Close)
	cred := session.Credential
	ready.set(func(r *readiness) { r.cred = cred })
	log.Info("Graph client ready", "graph_url", cfg.GraphURL, "api_version", cfg.GraphAPIVersion, "credential", cred.Kind())

	rc, err := startRateControl(cfg, nc, m, log)
	if err != nil {
		return err
	}
	st.push(rc.Close) // after the worker has stopped: hands this replica's share to the others
	g := graph.ForWorker(session.Client)
	wc := cfg.Worker(log)
	ts, err := tracing.Read(getenv, "reprocessor")
	if err != nil {
		return err
	}
	tp, stopTracing, err := tracing.Start(ts, version.Info().Version, cfg.Instance)
	if err != nil {
		return err
	}
	st.push(func() {
		// Flush the spans of the work that just ended, within a bound.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(ctx); err != nil {
			log.Warn("tracing: spans not all exported", "err", err)
		}
	})
	wc.Tracer = tp.Tracer("github.com/reprocessor/reprocessor/worker")
	log.Info("tracing", "otel", ts.Describe())
	if bound := ratelimit.MemoryBound(); bound < wc.Concurrency {
		log.Info("concurrency bounded by the memory limit (GOMEMLIMIT)", "configured", wc.Concurrency, "bound", bound)
		wc.Concurrency = bound
	}
	conc := ratelimit.NewConcurrency(ratelimit.ConcurrencyConfig{Max: wc.Concurrency, Rate: rc.rate, OnChange: m.Concurrency, Logger: log})
	var resources worker.ResourceChecker
	if cfg.VerifyResources {
		resources = graph.NewResourceVerifier(session.V1(), 0)
	}
	w, err := worker.New(wc, worker.Deps{
		Source:      m.DecorateSource(q),
		Graph:       g,
		Events:      m.DecorateEvents(q),
		DeadLetters: m.DecorateDeadLetters(q),
		Limiter:     m.DecorateLimiter(rc.limiter),
		Feedback:    rc.feedback(),
		Concurrency: conc,
		Gate:        rc.gate,
		Observer:    m,
		Checks:      q.Checks(),
		Scheduler:   q,
		States:      g,
		Resources:   resources,
		Hold: func() error {
			if cred.Ready() {
				return nil
			}
			return errors.New("no Graph token yet")
		},
	})
	if err != nil {
		return err
	}
	ready.set(func(r *readiness) { r.w = w })
	st.goRun(func(ctx context.Context) { pollQueue(ctx, q, m, &ready, log) })

	if opts.Started != nil {
		opts.Started(Started{NATSURL: cc.URL, HTTPAddr: httpAddr})
	}
	log.Info("worker running", "requests", q.Config().Prefix+".requests", "concurrency", cfg.Concurrency, "rate", rc.describe(cfg), "http", httpAddr)

	// nats.go reconnects forever but gives up for good on some errors (an authorization
	// violation twice in a row): then stop, and say why, so that a supervisor restarts us.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	watch := st.goRun(func(ctx context.Context) {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if nc.IsClosed() {
					stopRun(fmt.Errorf("the NATS connection was closed: %w", cmp.Or(nc.LastError(), errors.New("no error given"))))
					return
				}
			}
		}
	})
	err = w.Run(runCtx)
	watch()
	if cause := context.Cause(runCtx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// stack is the shutdown order: each part, once started, pushes how to stop it, and stop
// runs those steps last-started first, as deferred calls would, in one place.
type stack struct{ steps []func() }

func (s *stack) push(stop func()) { s.steps = append(s.steps, stop) }

// goRun runs fn in a goroutine until the returned function (or stop) cancels its context,
// and waits for it to return.
func (s *stack) goRun(fn func(ctx context.Context)) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fn(ctx) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	s.push(stop)
	return stop
}

func (s *stack) stop() {
	for i := len(s.steps) - 1; i >= 0; i-- {
		s.steps[i]()
	}
	s.steps = nil
}

// ackRefusalMemory is how long readiness fails after the server refused an ack: acks are
// not awaited, so only the refusals say that they do not land.
const ackRefusalMemory = time.Minute

// readiness is what /readyz checks: the parts started so far, the streams' health and the
// last ack the server refused.
type readiness struct {
	mu           sync.Mutex
	nc           *nats.Conn
	cred         *graph.Credential
	w            *worker.Worker
	queueErr     error // nil while every stream and consumer is there
	queueChecked bool
	refusedAt    time.Time
	refusal      error
}

func (r *readiness) set(f func(*readiness)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

func (r *readiness) worker() *worker.Worker {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.w
}

func (r *readiness) ackRefused(err error) {
	r.set(func(r *readiness) { r.refusedAt, r.refusal = time.Now(), err })
}

// setQueue records the streams' health and reports whether it was healthy before.
func (r *readiness) setQueue(err error) (wasHealthy bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	wasHealthy = r.queueChecked && r.queueErr == nil
	r.queueErr, r.queueChecked = err, true
	return wasHealthy
}

var errStarting = errors.New("starting")

func (r *readiness) checks() []metrics.Check {
	// Each check reads the part under the lock and asks it outside, so that no check waits
	// on another.
	get := func(f func(*readiness) error) func() error {
		return func() error {
			r.mu.Lock()
			defer r.mu.Unlock()
			return f(r)
		}
	}
	return []metrics.Check{
		{Name: "nats", Func: func() error {
			r.mu.Lock()
			nc := r.nc
			r.mu.Unlock()
			if nc == nil {
				return errStarting
			}
			if !nc.IsConnected() {
				return fmt.Errorf("not connected (status %s)", nc.Status())
			}
			return nil
		}},
		{Name: "consumer", Func: get(func(r *readiness) error {
			if !r.queueChecked {
				return errors.New("consumer not bound")
			}
			return r.queueErr
		})},
		{Name: "graph_token", Func: func() error {
			r.mu.Lock()
			cred := r.cred
			r.mu.Unlock()
			switch {
			case cred == nil:
				return errStarting
			case cred.Ready():
				return nil
			case cred.LastError() != nil:
				return cred.LastError()
			}
			return errors.New("no token obtained yet")
		}},
		{Name: "acks", Func: get(func(r *readiness) error {
			if r.refusal != nil && time.Since(r.refusedAt) < ackRefusalMemory {
				return fmt.Errorf("the server refused an ack %s ago, so settled messages come back: %w", time.Since(r.refusedAt).Round(time.Second), r.refusal)
			}
			return nil
		})},
		{Name: "worker", Func: func() error {
			if w := r.worker(); w != nil {
				return w.Ready()
			}
			return errStarting
		}},
	}
}

// StartEmbedded starts the embedded NATS server of cfg (REPROCESSOR_EMBEDDED_ADDR,
// REPROCESSOR_DATA_DIR), used when NATS_URL is unset.
func StartEmbedded(cfg config.Config, log *slog.Logger) (*queue.Embedded, error) {
	host, portText, err := net.SplitHostPort(cfg.EmbeddedAddr)
	if err != nil {
		return nil, fmt.Errorf("REPROCESSOR_EMBEDDED_ADDR %q: %w", cfg.EmbeddedAddr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("REPROCESSOR_EMBEDDED_ADDR %q: bad port", cfg.EmbeddedAddr)
	}
	if port == 0 {
		port = -1
	}
	emb, err := queue.StartEmbedded(queue.EmbeddedConfig{Host: host, Port: port, DataDir: cfg.DataDir, Logger: log.With("component", "nats-server")})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server on %s (data in %s): %w", cfg.EmbeddedAddr, cfg.DataDir, err)
	}
	return emb, nil
}

// setupQueue creates or binds the streams and the consumer, retrying while NATS cannot be
// reached. It returns nil, nil when ctx ends first.
func setupQueue(ctx context.Context, js jetstream.JetStream, qc queue.Config, log *slog.Logger) (*queue.Queue, error) {
	delay := time.Second
	for {
		q, err := queue.Setup(ctx, js, qc, log)
		if err == nil {
			return q, nil
		}
		if errors.Is(err, queue.ErrNotProvisioned) || errors.Is(err, queue.ErrInvalidConfig) {
			return nil, err
		}
		log.Warn("cannot set up the JetStream streams yet; retrying", "err", err, "in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil
		case <-t.C:
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// pollQueue keeps the queue gauges and the streams' and consumers' health current: what
// is missing (an operator deleted a stream or the consumer while the worker runs) makes
// readiness fail, and is created again unless creation is turned off.
func pollQueue(ctx context.Context, q *queue.Queue, m *metrics.Metrics, ready *readiness, log *slog.Logger) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		pending, ackPending, err := q.Health(callCtx)
		if errors.Is(err, queue.ErrNotProvisioned) && ctx.Err() == nil {
			log.Error("JetStream streams or consumers are missing", "err", err)
			ready.setQueue(err)
			if rerr := q.Repair(callCtx); rerr != nil {
				log.Error("cannot create them again", "err", rerr)
				err = fmt.Errorf("%w; %w", err, rerr)
			} else {
				log.Warn("created the missing streams and consumers again")
				pending, ackPending, err = q.Health(callCtx)
			}
		}
		cancel()
		if wasHealthy := ready.setQueue(err); err != nil {
			if wasHealthy && ctx.Err() == nil {
				log.Warn("consumer info unavailable", "err", err)
			}
		} else {
			m.SetQueue(pending, ackPending)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ServeHTTP serves h on addr ("" or "off": nothing) and returns the address bound and a
// function that stops the server.
func ServeHTTP(addr string, h http.Handler, log *slog.Logger) (string, func(), error) {
	if addr == "" || addr == "off" {
		return "", func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	// Bounded, so that a slow or malicious scraper holds nothing for long.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server", "addr", addr, "err", err)
		}
	}()
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

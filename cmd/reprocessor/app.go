package main

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
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// ackRefusalMemory is how long readiness fails after the server refused an ack: acks are
// not awaited, so only the refusals say that they do not land.
const ackRefusalMemory = time.Minute

// ackRefused is the last ack the server refused.
type ackRefused struct {
	at  time.Time
	err error
}

// runOptions are what demo and tests add to a worker run.
type runOptions struct {
	graphHTTP *http.Client         // carries Graph and token calls (a client trusting a simulated Graph)
	started   func(started)        // called once everything is up
	registry  *prometheus.Registry // default a new registry
}

// started says where a running worker can be reached.
type started struct {
	NATSURL  string // the NATS server in use (the embedded one when NATS_URL is unset)
	HTTPAddr string // the metrics and health listener, "" when off
}

// runWorker runs the worker until ctx is done, then shuts down in order: stop fetching,
// let in-flight work finish within the shutdown timeout, stop the HTTP listeners, drain
// the NATS connection and stop the embedded server.
func runWorker(ctx context.Context, cfg Config, log *slog.Logger, getenv func(string) string, opts runOptions) error {
	log.Info("starting reprocessor", "version", versionLine(), "config", cfg)

	reg := opts.registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		if err := metrics.RegisterRuntimeCollectors(reg); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	m := metrics.New(reg, buildInfo())

	// The HTTP listener comes first, so that /healthz answers while NATS and Graph are
	// still being reached; readiness says what is not there yet.
	var (
		ncReady    atomic.Pointer[nats.Conn]
		credReady  atomic.Pointer[graph.Credential]
		wReady     atomic.Pointer[worker.Worker]
		queueErr   atomic.Pointer[error] // nil while every stream and consumer is there
		ackRefusal atomic.Pointer[ackRefused]
	)
	notBound := errors.New("consumer not bound")
	queueErr.Store(&notBound)
	starting := errors.New("starting")
	checks := []metrics.Check{
		{Name: "nats", Func: func() error {
			nc := ncReady.Load()
			if nc == nil {
				return starting
			}
			if !nc.IsConnected() {
				return fmt.Errorf("not connected (status %s)", nc.Status())
			}
			return nil
		}},
		{Name: "consumer", Func: func() error {
			if err := queueErr.Load(); err != nil {
				return *err
			}
			return nil
		}},
		{Name: "graph_token", Func: func() error {
			cred := credReady.Load()
			switch {
			case cred == nil:
				return starting
			case cred.Ready():
				return nil
			case cred.LastError() != nil:
				return cred.LastError()
			}
			return errors.New("no token obtained yet")
		}},
		{Name: "acks", Func: func() error {
			if r := ackRefusal.Load(); r != nil && time.Since(r.at) < ackRefusalMemory {
				return fmt.Errorf("the server refused an ack %s ago, so settled messages come back: %w", time.Since(r.at).Round(time.Second), r.err)
			}
			return nil
		}},
		{Name: "worker", Func: func() error {
			if w := wReady.Load(); w != nil {
				return w.Ready()
			}
			return starting
		}},
	}
	if err := metrics.RegisterReadiness(reg, checks); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	m.SetConcurrency(cfg.Concurrency)
	httpAddr, stopServing, err := serveHTTP(cfg.HTTPAddr, metrics.Handler(reg, checks, log), log)
	if err != nil {
		return err
	}
	stopHTTP := sync.OnceFunc(stopServing) // after the worker, before the NATS drain
	defer stopHTTP()
	if cfg.PprofAddr != "" {
		_, stopPprof, err := serveHTTP(cfg.PprofAddr, metrics.PprofHandler(), log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}

	natsURL := cfg.NATSURL
	if natsURL == "" {
		emb, err := startEmbedded(cfg, log)
		if err != nil {
			return err
		}
		defer emb.Shutdown()
		natsURL = emb.ClientURL()
		log.Info("NATS_URL is not set: started an embedded JetStream server", "url", natsURL, "data_dir", cfg.DataDir)
	}
	cc := queue.ConnConfigFromEnv(getenv)
	cc.URL = natsURL
	cc.Name = "reprocessor/" + cfg.Instance
	cc.OnAckRefused = func(err error) { ackRefusal.Store(&ackRefused{at: time.Now(), err: err}) }
	nc, err := queue.Connect(ctx, cc, log)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", cc.Redacted(), err)
	}
	defer func() {
		if err := drain(nc, 10*time.Second); err != nil {
			log.Warn("NATS drain", "err", err)
		}
	}()
	ncReady.Store(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	q, err := setupQueue(ctx, js, queueConfig(cfg), log)
	if err != nil {
		return err
	}
	if q == nil {
		return nil // stopped before NATS could be reached
	}

	credCtx, stopCred := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCred()
	// The worker holds fetching until there is a token; the first token (or the first after
	// an outage) wakes it at once instead of at its next poll.
	cred, client, err := newGraph(cfg, getenv, opts.graphHTTP, m, log, func() {
		if w := wReady.Load(); w != nil {
			w.Wake()
		}
	})
	if err != nil {
		return err
	}
	credReady.Store(cred)
	credDone := make(chan struct{})
	go func() { defer close(credDone); cred.Run(credCtx) }()
	defer func() { stopCred(); <-credDone; cred.Close() }()
	log.Info("Graph client ready", "graph_url", cfg.GraphURL, "api_version", cfg.GraphAPIVersion, "credential", cred.Kind())

	rc, err := startRateControl(cfg, nc, m, log)
	if err != nil {
		return err
	}
	defer rc.Close() // after the worker has stopped, before the NATS drain
	w, err := worker.New(workerConfig(cfg, log), worker.Deps{
		Source:      q,
		Graph:       graph.ForWorker(client),
		Events:      q,
		DeadLetters: q,
		Limiter:     rc.limiter,
		Gate:        rc.gate,
		Observer:    m,
		Checks:      q.Checks(),
		Scheduler:   q,
		States:      graph.ForWorker(client),
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

	wReady.Store(w)
	pollCtx, stopPoll := context.WithCancel(context.WithoutCancel(ctx))
	pollDone := make(chan struct{})
	go func() { defer close(pollDone); pollQueue(pollCtx, q, m, &queueErr, log) }()
	defer func() { stopPoll(); <-pollDone }()

	if opts.started != nil {
		opts.started(started{NATSURL: natsURL, HTTPAddr: httpAddr})
	}
	log.Info("worker running", "requests", q.Config().Prefix+".requests", "concurrency", cfg.Concurrency, "rate", rc.describe(cfg), "http", httpAddr)

	// nats.go reconnects forever but gives up for good on some errors (an authorization
	// violation twice in a row): then stop, and say why, so that a supervisor restarts us.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				if nc.IsClosed() {
					stopRun(fmt.Errorf("the NATS connection was closed: %w", cmp.Or(nc.LastError(), errors.New("no error given"))))
					return
				}
			}
		}
	}()
	err = w.Run(runCtx)
	stopRun(nil)
	<-watchDone
	stopHTTP()
	if cause := context.Cause(runCtx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

func startEmbedded(cfg Config, log *slog.Logger) (*queue.Embedded, error) {
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

func queueConfig(cfg Config) queue.Config {
	return queue.Config{
		Prefix:        cfg.SubjectPrefix,
		EventsMaxAge:  cfg.EventsMaxAge,
		DLQMaxAge:     cfg.DLQMaxAge,
		Replicas:      cfg.StreamReplicas,
		AckWait:       cfg.AckWait,
		MaxAckPending: cfg.EffectiveMaxAckPending(),
		NoCreate:      cfg.NoCreate,
	}
}

func workerConfig(cfg Config, log *slog.Logger) worker.Config {
	coalesce := cfg.CoalesceWindow
	if coalesce == 0 {
		coalesce = -1 // worker: negative turns the window off, zero means its default
	}
	return worker.Config{
		Source:           "reprocessor/" + cfg.Instance,
		Concurrency:      cfg.Concurrency,
		MaxDeliver:       cfg.MaxDeliver,
		DeliveryBudget:   cfg.DeliveryBudget,
		Backoff:          worker.Backoff{Initial: cfg.BackoffInitial, Max: cfg.BackoffMax},
		CoalesceWindow:   coalesce,
		CircuitThreshold: cfg.CircuitThreshold,
		CircuitCooldown:  cfg.CircuitCooldown,
		Heartbeat:        max(cfg.AckWait/3, 100*time.Millisecond),
		ShutdownTimeout:  cfg.ShutdownTimeout,
		Logger:           log,
		Verify: worker.VerifyConfig{
			Enabled:     cfg.Verify,
			Concurrency: cfg.VerifyConcurrency,
			FirstDelay:  cfg.VerifyDelay,
			Deadline:    cfg.VerifyDeadline,
			Precheck:    cfg.Precheck,
		},
	}
}

// newGraph returns the Graph credential and client of cfg; onReady (may be nil) is called
// when a token is obtained while none was held.
func newGraph(cfg Config, getenv func(string) string, httpClient *http.Client, m *metrics.Metrics, log *slog.Logger, onReady func()) (*graph.Credential, *graph.Client, error) {
	cloud, err := graph.CloudByName(cfg.Cloud)
	if err != nil {
		return nil, nil, fmt.Errorf("REPROCESSOR_CLOUD: %w", err)
	}
	cred, err := graph.NewCredential(getenv, cloud, graph.CredentialOptions{GraphURL: cfg.GraphURL, HTTPClient: httpClient, Logger: log, OnReady: onReady})
	if err != nil {
		return nil, nil, fmt.Errorf("graph credential: %w", err)
	}
	client, err := graph.New(graph.Config{
		BaseURL:    cfg.GraphURL,
		APIVersion: cfg.GraphAPIVersion,
		Timeout:    cfg.GraphTimeout,
		HTTPClient: httpClient,
		Tokens:     cred,
		Observe:    m.ObserveGraph,
		Logger:     log,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("graph client: %w", err)
	}
	return cred, client, nil
}

// pollQueue keeps the queue gauges and the streams' and consumers' health current: what
// is missing (an operator deleted a stream or the consumer while the worker runs) makes
// readiness fail, and is created again unless creation is turned off.
func pollQueue(ctx context.Context, q *queue.Queue, m *metrics.Metrics, health *atomic.Pointer[error], log *slog.Logger) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		pending, ackPending, err := q.Health(callCtx)
		if errors.Is(err, queue.ErrNotProvisioned) && ctx.Err() == nil {
			log.Error("JetStream streams or consumers are missing", "err", err)
			health.Store(&err)
			if rerr := q.Repair(callCtx); rerr != nil {
				log.Error("cannot create them again", "err", rerr)
				err = fmt.Errorf("%w; %w", err, rerr)
			} else {
				log.Warn("created the missing streams and consumers again")
				pending, ackPending, err = q.Health(callCtx)
			}
		}
		cancel()
		if err != nil {
			if old := health.Swap(&err); old == nil && ctx.Err() == nil {
				log.Warn("consumer info unavailable", "err", err)
			}
		} else {
			health.Store(nil)
			m.SetQueue(pending, ackPending)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serveHTTP serves h on addr ("" or "off": nothing) and returns the address bound and a
// function that stops the server.
func serveHTTP(addr string, h http.Handler, log *slog.Logger) (string, func(), error) {
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

// drain drains the connection, flushing what it publishes, and waits until it is closed.
func drain(nc *nats.Conn, timeout time.Duration) error {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return err
	}
	select {
	case <-closed:
		return nil
	case <-time.After(timeout):
		nc.Close()
		return errors.New("drain timed out")
	}
}

package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded server defaults.
const (
	DefaultEmbeddedHost = "127.0.0.1"
	DefaultEmbeddedPort = 4222
	embeddedReady       = 10 * time.Second
)

// EmbeddedConfig configures the embedded JetStream server.
type EmbeddedConfig struct {
	Host    string // default 127.0.0.1
	Port    int    // default 4222; -1 picks a free port
	DataDir string // required: JetStream keeps its store under it
	// Logger receives the server's log: notices and debug at debug level, warnings and
	// errors at their own levels. Nil discards it.
	Logger *slog.Logger
}

// Embedded is a nats-server with JetStream running in this process.
type Embedded struct {
	srv *server.Server
}

// StartEmbedded starts a nats-server with JetStream, its store under cfg.DataDir, and
// returns once it accepts connections.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded nats: DataDir is required")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	port := cfg.Port
	if port == 0 {
		port = DefaultEmbeddedPort
	}
	opts := &server.Options{
		ServerName: "reprocessor-embedded",
		Host:       cmp.Or(cfg.Host, DefaultEmbeddedHost),
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	sl := &serverLogger{logger: logger}
	srv.SetLoggerV2(sl, logger.Enabled(context.Background(), slog.LevelDebug), false, false)
	srv.Start()
	if !srv.ReadyForConnections(embeddedReady) || !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		if msg := sl.lastError(); msg != "" {
			return nil, fmt.Errorf("embedded nats on %s:%d: not ready: %s", opts.Host, port, msg)
		}
		return nil, fmt.Errorf("embedded nats on %s:%d: not ready within %s", opts.Host, port, embeddedReady)
	}
	return &Embedded{srv: srv}, nil
}

// ClientURL returns the URL clients connect to.
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Shutdown stops the server and waits until it has stopped.
func (e *Embedded) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
}

// serverLogger routes the server's log to slog and remembers the last error, so that a
// failed start can say why.
type serverLogger struct {
	logger *slog.Logger
	mu     sync.Mutex
	last   string
}

func (l *serverLogger) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

func (l *serverLogger) remember(msg string) {
	l.mu.Lock()
	l.last = msg
	l.mu.Unlock()
}

func (l *serverLogger) log(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if !l.logger.Enabled(ctx, level) {
		return
	}
	l.logger.Log(ctx, level, fmt.Sprintf(format, v...))
}

// Noticef logs a notice at debug level: the server's start-up chatter.
func (l *serverLogger) Noticef(format string, v ...any) { l.log(slog.LevelDebug, format, v) }

// Warnf logs a warning.
func (l *serverLogger) Warnf(format string, v ...any) { l.log(slog.LevelWarn, format, v) }

// Fatalf logs at error level and remembers the message; it does not exit.
func (l *serverLogger) Fatalf(format string, v ...any) {
	l.remember(fmt.Sprintf(format, v...))
	l.log(slog.LevelError, format, v)
}

// Errorf logs an error and remembers it.
func (l *serverLogger) Errorf(format string, v ...any) {
	l.remember(fmt.Sprintf(format, v...))
	l.log(slog.LevelError, format, v)
}

// Debugf logs at debug level.
func (l *serverLogger) Debugf(format string, v ...any) { l.log(slog.LevelDebug, format, v) }

// Tracef discards protocol traces.
func (l *serverLogger) Tracef(string, ...any) {}

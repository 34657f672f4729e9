package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// ConnConfig says how to reach NATS; it takes the NATS CLI's variables.
type ConnConfig struct {
	URL      string // NATS_URL: one or more comma-separated server URLs
	Creds    string // NATS_CREDS: a credentials file (JWT and seed)
	NKey     string // NATS_NKEY: a file holding a user nkey seed
	User     string // NATS_USER
	Password string // NATS_PASSWORD
	Token    string // NATS_TOKEN
	CA       string // NATS_CA: a PEM file of CAs to trust
	Cert     string // NATS_CERT: a PEM client certificate
	Key      string // NATS_KEY: the client certificate's PEM key
	JWT      string // NATS_JWT: a user JWT, with NATS_SEED
	Seed     string // NATS_SEED: the user's nkey seed (secret), with NATS_JWT
	Name     string // the connection name shown by the server

	// Context, when set, is the NATS CLI context the settings come from: its options
	// (authentication, TLS, inbox prefix) replace those of the fields above.
	Context     string
	contextOpts []nats.Option

	// OnAckRefused, if set, is called when the server refuses an acknowledgement (a
	// permissions violation for a publish to $JS.ACK): acks are not awaited, so this is
	// how a worker learns that its messages will come back.
	OnAckRefused func(error)
}

// ConnConfigFromEnv reads the NATS CLI's variables through getenv.
func ConnConfigFromEnv(getenv func(string) string) ConnConfig {
	return ConnConfig{
		URL:      getenv("NATS_URL"),
		Creds:    getenv("NATS_CREDS"),
		NKey:     getenv("NATS_NKEY"),
		User:     getenv("NATS_USER"),
		Password: getenv("NATS_PASSWORD"),
		Token:    getenv("NATS_TOKEN"),
		CA:       getenv("NATS_CA"),
		Cert:     getenv("NATS_CERT"),
		Key:      getenv("NATS_KEY"),
		JWT:      getenv("NATS_JWT"),
		Seed:     getenv("NATS_SEED"),
	}
}

// url returns the server URLs, nats.DefaultURL when none is set.
func (c ConnConfig) url() string { return cmp.Or(c.URL, nats.DefaultURL) }

// authMethod names the authentication in use, never its secret.
func (c ConnConfig) authMethod() string {
	switch {
	case c.Creds != "":
		return "creds"
	case c.NKey != "":
		return "nkey"
	case c.User != "":
		return "user/password"
	case c.Token != "":
		return "token"
	case c.JWT != "":
		return "jwt"
	case userInfoPattern.MatchString(c.URL):
		return "url credentials"
	default:
		return "none"
	}
}

// Redacted describes the connection for logs: the URLs without user info, the
// authentication method and the TLS files in use. It holds no secret.
func (c ConnConfig) Redacted() string {
	var b strings.Builder
	fmt.Fprintf(&b, "url=%s auth=%s", c.redactedURL(), c.authMethod())
	switch {
	case c.CA != "" && c.Cert != "":
		b.WriteString(" tls=ca,client-cert")
	case c.CA != "":
		b.WriteString(" tls=ca")
	case c.Cert != "":
		b.WriteString(" tls=client-cert")
	}
	return b.String()
}

// validate rejects conflicting or incomplete settings, naming the variables.
func (c ConnConfig) validate() error {
	var set []string
	for _, v := range []struct{ name, value string }{
		{"NATS_CREDS", c.Creds}, {"NATS_NKEY", c.NKey}, {"NATS_USER", c.User}, {"NATS_TOKEN", c.Token}, {"NATS_JWT", c.JWT},
	} {
		if v.value != "" {
			set = append(set, v.name)
		}
	}
	switch {
	case len(set) > 1:
		return fmt.Errorf("nats config: %s are all set: choose one way to authenticate", strings.Join(set, ", "))
	case c.Password != "" && c.User == "":
		return errors.New("nats config: NATS_PASSWORD is set without NATS_USER")
	case (c.Cert == "") != (c.Key == ""):
		return errors.New("nats config: NATS_CERT and NATS_KEY go together")
	case (c.JWT == "") != (c.Seed == ""):
		return errors.New("nats config: NATS_JWT and NATS_SEED go together")
	}
	return nil
}

// options returns the authentication and TLS options.
func (c ConnConfig) options() ([]nats.Option, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	if c.Context != "" {
		return append(opts, c.contextOpts...), nil
	}
	switch {
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("nats config: NATS_NKEY %s: %w", c.NKey, err)
		}
		opts = append(opts, opt)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	case c.JWT != "":
		opts = append(opts, nats.UserJWTAndSeed(c.JWT, c.Seed))
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	if c.Cert != "" {
		opts = append(opts, nats.ClientCert(c.Cert, c.Key))
	}
	return opts, nil
}

// Reconnect pacing: exponential from reconnectBase, capped at reconnectMax, jittered.
const (
	reconnectBase = 100 * time.Millisecond
	reconnectMax  = 5 * time.Second
)

// reconnectDelay returns the wait before reconnect round attempts: exponential, capped,
// with the upper half jittered so that many workers do not reconnect in step.
func reconnectDelay(attempts int) time.Duration {
	d := reconnectMax
	if attempts < 8 {
		d = min(reconnectBase<<attempts, reconnectMax)
	}
	return d/2 + rand.N(d/2+1)
}

// Connect connects to NATS. It reconnects forever, and keeps retrying a first connection
// that fails, so that a worker may start before NATS does; it returns once connected, or
// when ctx is done or the connection is closed (for example after repeated authorization
// failures). Connection events are logged without secrets: user info in URLs and the
// configured password and token are cut out of every logged or returned error.
func Connect(ctx context.Context, cc ConnConfig, logger *slog.Logger) (*nats.Conn, error) {
	opts, err := cc.options()
	if err != nil {
		return nil, err
	}
	r := redactor{cc: cc}
	connected := make(chan struct{}, 1)
	closed := make(chan struct{})
	var closeOnce sync.Once
	var lastErr atomic.Pointer[string]
	signal := func() {
		select {
		case connected <- struct{}{}:
		default:
		}
	}
	opts = append(opts,
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.PingInterval(20*time.Second),
		nats.MaxPingsOutstanding(3),
		nats.ConnectHandler(func(nc *nats.Conn) {
			logger.Info("nats connected", "server", redactURLs(nc.ConnectedUrlRedacted()), "server_id", nc.ConnectedServerId())
			signal()
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", "server", redactURLs(nc.ConnectedUrlRedacted()))
			signal()
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "error", r.string(err))
			} else {
				logger.Debug("nats disconnected")
			}
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			msg := r.string(err)
			lastErr.Store(&msg)
			logger.Warn("nats connection attempt failed", "error", msg)
		}),
		nats.ClosedHandler(func(_ *nats.Conn) {
			logger.Info("nats connection closed")
			closeOnce.Do(func() { close(closed) })
		}),
		nats.LameDuckModeHandler(func(_ *nats.Conn) {
			logger.Warn("nats server entering lame duck mode; will reconnect elsewhere")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if cc.OnAckRefused != nil && AckRefused(err) {
				cc.OnAckRefused(err)
			}
			attrs := []any{"error", r.string(err)}
			if sub != nil {
				attrs = append(attrs, "subject", sub.Subject)
			}
			logger.Error("nats asynchronous error", attrs...)
		}),
	)
	nc, err := nats.Connect(cc.url(), opts...)
	if err != nil {
		return nil, r.wrap(fmt.Sprintf("connect to nats (%s)", cc.Redacted()), err)
	}
	if nc.IsConnected() {
		return nc, nil
	}
	logger.Info("waiting for nats", "nats", cc.Redacted())
	last := func() string {
		if p := lastErr.Load(); p != nil {
			return "; last error: " + *p
		}
		return ""
	}
	select {
	case <-connected:
		return nc, nil
	case <-closed:
		return nil, fmt.Errorf("connect to nats (%s): connection closed%s", cc.Redacted(), last())
	case <-ctx.Done():
		nc.Close()
		return nil, fmt.Errorf("connect to nats (%s): %w%s", cc.Redacted(), ctx.Err(), last())
	}
}

// userInfoPattern matches the user info of a URL, with or without a scheme.
var userInfoPattern = regexp.MustCompile(`(^|[\s,"'(\[]|[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s,"'()\[\]]+@`)

// redactURLs cuts user info out of every URL in s.
func redactURLs(s string) string { return userInfoPattern.ReplaceAllString(s, "$1") }

// redactedURL returns the server URLs with their passwords and tokens redacted.
func (c ConnConfig) redactedURL() string { return RedactURLs(c.url()) }

// secrets returns the configured secrets: password, token and URL user info.
func (c ConnConfig) secrets() []string {
	return append([]string{c.Password, c.Token, c.Seed}, URLSecrets(c.URL)...)
}

// AckRefused reports whether an asynchronous error of the connection says the server
// refused an acknowledgement: a permissions violation for a publish to $JS.ACK.
func AckRefused(err error) bool {
	return errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), "$JS.ACK.")
}

// redactor cuts secrets out of error text.
type redactor struct{ cc ConnConfig }

// string returns err's text without user info in URLs or the configured secrets.
func (r redactor) string(err error) string {
	s := err.Error()
	for _, secret := range r.cc.secrets() {
		if len(secret) >= 3 {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return redactURLs(s)
}

// wrap returns an error with context whose text is redacted and which still unwraps to err.
func (r redactor) wrap(context string, err error) error {
	return &redactedError{msg: context + ": " + r.string(err), err: err}
}

// redactedError shows a redacted text and unwraps to the original error.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// Drain drains the connection, flushing what it publishes, and waits until it is closed.
func Drain(nc *nats.Conn, timeout time.Duration) error {
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

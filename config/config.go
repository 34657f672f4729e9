// Package config is reprocessor's configuration: the table of settings (each an
// environment variable and, except secrets, a flag), their defaults, loading from the
// environment and flags, validation with an error naming each bad variable, redaction of
// secrets, and the summary check-config prints.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// Config is the whole configuration of the command. It is read from the environment and
// from flags (flags win) by Load or Bind; secrets come only from the
// environment. Print it with Summary, never with %v of its fields.
type Config struct {
	// NATS, with the NATS CLI's variables. NATSURL unset means an embedded server.
	NATSURL      string // NATS_URL, comma-separated URLs; may hold user:password or a token
	NATSCreds    string // NATS_CREDS, a credentials file
	NATSNKey     string // NATS_NKEY, an nkey seed file
	NATSUser     string // NATS_USER
	NATSPassword string // NATS_PASSWORD, secret
	NATSToken    string // NATS_TOKEN, secret
	NATSJWT      string // NATS_JWT: a user JWT, with NATS_SEED
	NATSSeed     string // NATS_SEED, secret
	NATSContext  string // NATS_CONTEXT or --context: a NATS CLI context to connect with
	NATSCA       string // NATS_CA, a CA certificate file
	NATSCert     string // NATS_CERT, a client certificate file
	NATSKey      string // NATS_KEY, the client certificate's key file

	// Graph credentials, with azidentity's variables.
	AzureTenantID           string // AZURE_TENANT_ID
	AzureClientID           string // AZURE_CLIENT_ID
	AzureClientSecret       string // AZURE_CLIENT_SECRET, secret
	AzureClientCertPath     string // AZURE_CLIENT_CERTIFICATE_PATH
	AzureClientCertPassword string // AZURE_CLIENT_CERTIFICATE_PASSWORD, secret
	AzureFederatedTokenFile string // AZURE_FEDERATED_TOKEN_FILE
	AzureAuthorityHost      string // AZURE_AUTHORITY_HOST, https; empty means the cloud's

	Cloud           string        // public, usgov, usgovdod or china
	GraphURL        string        // https, without a trailing slash; the cloud's when not set
	GraphAPIVersion string        // v1.0 or beta
	GraphTimeout    time.Duration // per Graph call
	SubjectPrefix   string        // NATS subject prefix, e.g. entitlement.reprocess

	Concurrency      int           // Graph calls in flight at once
	RateAuto         bool          // find the rate from Graph's answers (ratelimit.Adaptive); Rate is then unused
	Rate             float64       // fixed Graph calls per second, process-wide; 0 means unlimited
	RateCeiling      float64       // auto: the highest rate, calls per second per replica
	RateInitial      float64       // auto: the rate to start from
	RateStep         float64       // auto: calls per second added per second of success; 0 means 5% of the current rate, at least 1
	MaxDeliver       int           // deliveries of a request before it fails retries_exhausted
	DeliveryBudget   time.Duration // in-process retry time within one delivery before NakWithDelay
	BackoffInitial   time.Duration
	BackoffMax       time.Duration
	CoalesceWindow   time.Duration // 0 coalesces only requests in flight
	CircuitThreshold int           // consecutive 401/403 answers that open the circuit
	CircuitCooldown  time.Duration // before the open circuit probes Graph

	Verify            bool          // check the assignment's state after accepted
	VerifyDeadline    time.Duration // give up checking a state still delivering after this
	VerifyDelay       time.Duration // from accepted to the first check
	VerifyConcurrency int           // state checks at once
	Precheck          bool          // read the assignment's state before reprocess too
	VerifyResources   bool          // once delivered, check the target holds the package's resources

	AckWait        time.Duration
	MaxAckPending  int // 0 means derived: see EffectiveMaxAckPending
	EventsMaxAge   time.Duration
	DLQMaxAge      time.Duration
	StreamReplicas int
	NoCreate       bool // bind to existing streams and consumers; create or update nothing

	HTTPAddr  string // metrics and health listener; empty means off
	PprofAddr string // separate pprof listener; empty means off

	LogLevel  string // debug, info, warn or error
	LogFormat string // text or json

	DataDir         string // the embedded NATS server's store
	EmbeddedAddr    string // the embedded NATS server's listen address
	ShutdownTimeout time.Duration
	Instance        string // names this process: the events' "instance" attribute, the NATS connection
	Credential      string // REPROCESSOR_CREDENTIAL: auto (the AZURE_* variables decide), azure-cli, azd, developer
	EventSource     string // the events' CloudEvents source: the deployment; default urn:reprocessor:<subject prefix>
}

// Defaults returns the default of every setting; GraphURL and Instance are derived when
// left empty (see fillDerived). What the worker and the queue own (retries, verification,
// streams) is read from their own defaults, so that each is written once.
func Defaults() Config {
	w := worker.Defaults()
	return Config{
		Cloud:             "public",
		Credential:        graph.LoginAuto,
		GraphAPIVersion:   "v1.0",
		GraphTimeout:      30 * time.Second,
		SubjectPrefix:     queue.DefaultPrefix,
		Concurrency:       w.Concurrency,
		RateAuto:          true,
		RateCeiling:       DefaultRateCeiling,
		RateInitial:       10,
		MaxDeliver:        w.MaxDeliver,
		DeliveryBudget:    w.DeliveryBudget,
		BackoffInitial:    w.Backoff.Initial,
		BackoffMax:        w.Backoff.Max,
		CoalesceWindow:    w.CoalesceWindow,
		CircuitThreshold:  w.CircuitThreshold,
		CircuitCooldown:   w.CircuitCooldown,
		Verify:            true,
		VerifyDeadline:    w.Verify.Deadline,
		VerifyDelay:       w.Verify.FirstDelay,
		VerifyConcurrency: w.Verify.Concurrency,
		AckWait:           queue.DefaultAckWait,
		EventsMaxAge:      queue.DefaultEventsMaxAge,
		DLQMaxAge:         queue.DefaultDLQMaxAge,
		StreamReplicas:    queue.DefaultReplicas,
		HTTPAddr:          ":9464",
		LogLevel:          "info",
		LogFormat:         "text",
		DataDir:           "./data",
		EmbeddedAddr:      "127.0.0.1:4222",
		ShutdownTimeout:   w.ShutdownTimeout,
	}
}

// MinRate and MaxRate bound every rate setting, in calls per second.
const (
	MinRate = 0.01
	MaxRate = 1e6
)

// DefaultRateCeiling is the highest rate REPROCESSOR_RATE=auto uses by default, in calls per
// second per replica. Graph publishes no limit for entitlement management, so auto finds it
// from Graph's 429s, and the default ceiling must not bind before Graph does: 5,000/s is
// well above anything entitlement management has been seen to admit and below the global
// limit of 130,000 requests per 10 s per application (13,000/s). It is a safety net, not a
// tuning knob: set REPROCESSOR_RATE_CEILING lower to share a tenant's quota deliberately.
const DefaultRateCeiling = 5000

// cloudGraphURL returns the Graph endpoint of a national cloud, as graph knows them.
func cloudGraphURL(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	c, err := graph.CloudByName(name)
	return c.GraphURL, err == nil
}

// EffectiveMaxAckPending returns MaxAckPending or, when it is 0, ten times the concurrency
// and at least 1000. The limit is the consumer's, shared by every replica, and messages
// handed back with a delay count against it until they are delivered again, so it must sit
// well above one replica's concurrency; each replica's fetches are bounded by its own
// free slots anyway.
func (c Config) EffectiveMaxAckPending() int {
	if c.MaxAckPending > 0 {
		return c.MaxAckPending
	}
	return max(1000, 10*c.Concurrency)
}

// Load reads the configuration from getenv and then from args (flags win) and
// returns it with the arguments left after the flags. Flags end at the first non-flag
// argument, so "--concurrency 4 run" leaves ["run"].
//
// The error joins every problem found; each line names the variable and the bad value,
// never a secret. "-h" returns flag.ErrHelp: print WriteUsage then. Nothing is
// printed here. On error the Config holds what could be read, for check-config to show.
func Load(args []string, getenv func(string) string) (Config, []string, error) {
	fs := flag.NewFlagSet("reprocessor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	load := Bind(fs, getenv)
	parseErr := fs.Parse(args)
	cfg, err := load()
	if parseErr != nil {
		// Later flags were not read: their problems would mislead.
		return cfg, fs.Args(), redactError(parseErr, cfg.Secrets())
	}
	return cfg, fs.Args(), err
}

// Bind applies the defaults and getenv to a new Config and registers a flag for every
// setting that has one on fs, so that a subcommand can add flags of its own to the same
// set. Call the returned function after fs.Parse: it returns the Config and the problems
// found, as Load does.
func Bind(fs *flag.FlagSet, getenv func(string) string) func() (Config, error) {
	c := Defaults()
	settings := c.settings()
	envErrs := make(map[string]error)
	for _, s := range settings {
		if v := getenv(s.env); v != "" {
			if err := s.value.Set(v); err != nil {
				envErrs[s.env] = fmt.Errorf("%s: %w", s.env, err)
			}
		}
		if name := s.flagName(); name != "" {
			fs.Var(s.value, name, fmt.Sprintf("%s ($%s)", s.help, s.env))
		}
	}
	return func() (Config, error) {
		// A flag replaces its variable, bad value and all.
		fs.Visit(func(f *flag.Flag) {
			for _, s := range settings {
				if s.flagName() == f.Name {
					delete(envErrs, s.env)
				}
			}
		})
		var errs []error
		for _, s := range settings {
			if err, ok := envErrs[s.env]; ok {
				errs = append(errs, err)
			}
		}
		cfg := c
		cfg.fillDerived(os.Hostname)
		errs = append(errs, cfg.problems()...)
		return cfg, redactError(errors.Join(errs...), cfg.Secrets())
	}
}

// fillDerived fills the settings whose defaults depend on others or on the host.
func (c *Config) fillDerived(hostname func() (string, error)) {
	c.Cloud = canonical(c.Cloud, "public", "usgov", "usgovdod", "china")
	c.GraphAPIVersion = canonical(c.GraphAPIVersion, "v1.0", "beta")
	c.LogLevel = canonical(c.LogLevel, "debug", "info", "warn", "error")
	c.LogFormat = canonical(c.LogFormat, "text", "json")
	c.GraphURL = strings.TrimRight(c.GraphURL, "/")
	if c.GraphURL == "" {
		c.GraphURL, _ = cloudGraphURL(c.Cloud)
	}
	if c.EventSource == "" {
		c.EventSource = "urn:reprocessor:" + c.SubjectPrefix
	}
	if c.Instance == "" {
		h, err := hostname()
		if err != nil || h == "" {
			h = "reprocessor"
		}
		c.Instance = h
	}
}

// canonical returns the known value that v names in any case, or v unchanged: an unknown
// value is reported as written, so that a secret pasted there is still recognised.
func canonical(v string, known ...string) string {
	for _, k := range known {
		if strings.EqualFold(v, k) {
			return k
		}
	}
	return v
}

// WriteUsage writes a table of every setting: its flag, environment variable,
// default and meaning.
func WriteUsage(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "FLAG\tENVIRONMENT\tDEFAULT\tMEANING")
	c := Defaults()
	for _, s := range c.settings() {
		name := "(environment only)"
		if n := s.flagName(); n != "" {
			name = "--" + n
		}
		def := s.def
		if def == "" && !s.secret() {
			def = s.value.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, s.env, def, s.help)
	}
	return tw.Flush()
}

// Summary returns every setting, keyed by its environment variable, for check-config and
// the startup log. Secrets show only as "set" or "unset", URLs without their credentials.
func (c Config) Summary() []slog.Attr {
	settings := c.settings()
	attrs := make([]slog.Attr, 0, len(settings))
	for _, s := range settings {
		attrs = append(attrs, slog.Attr{Key: s.env, Value: s.value.summary()})
	}
	return attrs
}

// LogValue logs the Config as its Summary, so that slog never prints a secret.
func (c Config) LogValue() slog.Value { return slog.GroupValue(c.Summary()...) }

// String formats the Config as its Summary, so that fmt never prints a secret.
func (c Config) String() string {
	var b strings.Builder
	for i, a := range c.Summary() {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%q", a.Key, a.Value.String())
	}
	return b.String()
}

// GoString formats the Config as String does, for %#v.
func (c Config) GoString() string { return c.String() }

// Environ returns every setting that is not secret as NAME=value, as the environment of a
// child "reprocessor run" with this configuration.
func (c Config) Environ() []string {
	var env []string
	for _, s := range c.settings() {
		if !s.secret() {
			env = append(env, s.env+"="+s.value.String())
		}
	}
	return env
}

// Secrets returns the secret values of the Config: passwords, tokens, client secrets and
// the credentials inside URLs. Pass them to logging.New.
func (c Config) Secrets() []string {
	candidates := []string{c.NATSPassword, c.NATSToken, c.NATSSeed, c.AzureClientSecret, c.AzureClientCertPassword}
	for _, u := range []string{c.NATSURL, c.GraphURL, c.AzureAuthorityHost} {
		candidates = append(candidates, urlSecrets(u)...)
	}
	var secrets []string
	seen := make(map[string]bool)
	for _, s := range candidates {
		if s != "" && !seen[s] {
			seen[s] = true
			secrets = append(secrets, s)
		}
	}
	return secrets
}

// Redact returns s with every secret of the Config at least logging.MinSecretLen long replaced
// by [REDACTED].
func (c Config) Redact(s string) string { return logging.NewRedactor(c.Secrets()).Redact(s) }

// redactError returns err, or an error with the same text redacted when the text holds a
// secret. The redacted error no longer wraps err: nothing must reach the secret through it.
func redactError(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if red := logging.NewRedactor(secrets).Redact(msg); red != msg {
		return errors.New(red)
	}
	return err
}

// validate returns every problem of the Config, joined; nil when there is none.
func (c Config) validate() error {
	return redactError(errors.Join(c.problems()...), c.Secrets())
}

// problems lists what is wrong with the Config, each naming the variable and its value
// unless the value is secret.
func (c Config) problems() []error {
	var errs []error
	bad := func(env, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{env}, args...)...))
	}

	_, knownCloud := cloudGraphURL(c.Cloud)
	if !knownCloud {
		bad("REPROCESSOR_CLOUD", "must be one of public, usgov, usgovdod, china, got %q", c.Cloud)
	}
	// An unknown cloud leaves no Graph URL to default to: that is the cloud's problem.
	if c.GraphURL != "" || knownCloud {
		if err := checkHTTPSURL(c.GraphURL); err != nil {
			bad("REPROCESSOR_GRAPH_URL", "%w", err)
		}
	}
	if c.GraphAPIVersion != "v1.0" && c.GraphAPIVersion != "beta" {
		bad("REPROCESSOR_GRAPH_API_VERSION", "must be v1.0 or beta, got %q", c.GraphAPIVersion)
	}
	if c.AzureAuthorityHost != "" {
		if err := checkHTTPSURL(c.AzureAuthorityHost); err != nil {
			bad("AZURE_AUTHORITY_HOST", "%w", err)
		}
	}
	if c.AzureClientSecret != "" || c.AzureClientCertPath != "" || c.AzureFederatedTokenFile != "" {
		const needed = "required when AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE is set"
		if c.AzureTenantID == "" {
			bad("AZURE_TENANT_ID", needed)
		}
		if c.AzureClientID == "" {
			bad("AZURE_CLIENT_ID", needed)
		}
	}
	if c.AzureClientCertPassword != "" && c.AzureClientCertPath == "" {
		bad("AZURE_CLIENT_CERTIFICATE_PASSWORD", "set without AZURE_CLIENT_CERTIFICATE_PATH")
	}

	if err := checkNATSURLs(c.NATSURL); err != nil {
		bad("NATS_URL", "%w", err)
	}
	if c.NATSCert != "" && c.NATSKey == "" {
		bad("NATS_CERT", "set without NATS_KEY")
	}
	if c.NATSKey != "" && c.NATSCert == "" {
		bad("NATS_KEY", "set without NATS_CERT")
	}
	if !validSubjectPrefix(c.SubjectPrefix) {
		bad("REPROCESSOR_SUBJECT_PREFIX", "must be NATS subject tokens separated by dots, without wildcards or white space, got %q", c.SubjectPrefix)
	} else if err := queue.CheckReservedPrefix(c.SubjectPrefix); err != nil {
		bad("REPROCESSOR_SUBJECT_PREFIX", "%s, got %q", err.Error(), c.SubjectPrefix)
	}

	if c.Concurrency < 1 || c.Concurrency > 10000 {
		bad("REPROCESSOR_CONCURRENCY", "must be between 1 and 10000, got %q", strconv.Itoa(c.Concurrency))
	}
	// A rate is calls per second between MinRate (one call every 100 s: anything slower
	// stalls the worker while it looks alive) and MaxRate.
	inRange := func(r float64) bool { return r >= MinRate && r <= MaxRate }
	if c.Rate != 0 && !inRange(c.Rate) {
		bad("REPROCESSOR_RATE", "must be auto, 0 (unlimited) or a number of calls per second from %s to %s, got %q", formatFloat(MinRate), formatFloat(MaxRate), formatFloat(c.Rate))
	}
	if !inRange(c.RateCeiling) {
		bad("REPROCESSOR_RATE_CEILING", "must be a number of calls per second from %s to %s, got %q", formatFloat(MinRate), formatFloat(MaxRate), formatFloat(c.RateCeiling))
	}
	if !inRange(c.RateInitial) {
		bad("REPROCESSOR_RATE_INITIAL", "must be a number of calls per second from %s to %s, got %q", formatFloat(MinRate), formatFloat(MaxRate), formatFloat(c.RateInitial))
	}
	if c.RateStep != 0 && !inRange(c.RateStep) {
		bad("REPROCESSOR_RATE_STEP", "must be 0 (derived) or a number of calls per second from %s to %s, got %q", formatFloat(MinRate), formatFloat(MaxRate), formatFloat(c.RateStep))
	}
	if c.MaxDeliver < 1 {
		bad("REPROCESSOR_MAX_DELIVER", "must be at least 1, got %q", strconv.Itoa(c.MaxDeliver))
	}
	if c.CircuitThreshold < 1 {
		bad("REPROCESSOR_CIRCUIT_THRESHOLD", "must be at least 1, got %q", strconv.Itoa(c.CircuitThreshold))
	}
	if c.VerifyConcurrency < 1 || c.VerifyConcurrency > 10000 {
		bad("REPROCESSOR_VERIFY_CONCURRENCY", "must be between 1 and 10000, got %q", strconv.Itoa(c.VerifyConcurrency))
	}
	if c.MaxAckPending != 0 && c.MaxAckPending < c.Concurrency {
		bad("REPROCESSOR_MAX_ACK_PENDING", "must be 0 (derived from REPROCESSOR_CONCURRENCY) or at least REPROCESSOR_CONCURRENCY (%d), got %q", c.Concurrency, strconv.Itoa(c.MaxAckPending))
	}
	if c.AckWait > 0 && c.AckWait < time.Second {
		bad("REPROCESSOR_ACK_WAIT", "must be at least 1s, got %q", formatDuration(c.AckWait))
	}
	var natsAuth []string
	for _, v := range []struct{ env, value string }{
		{"NATS_CREDS", c.NATSCreds}, {"NATS_NKEY", c.NATSNKey}, {"NATS_USER", c.NATSUser}, {"NATS_TOKEN", c.NATSToken}, {"NATS_JWT", c.NATSJWT},
	} {
		if v.value != "" {
			natsAuth = append(natsAuth, v.env)
		}
	}
	if len(natsAuth) > 1 {
		bad(natsAuth[0], "set together with %s: choose one way to authenticate to NATS", strings.Join(natsAuth[1:], ", "))
	}
	if c.NATSPassword != "" && c.NATSUser == "" {
		bad("NATS_PASSWORD", "set without NATS_USER")
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		bad("REPROCESSOR_STREAM_REPLICAS", "must be between 1 and 5, got %q", strconv.Itoa(c.StreamReplicas))
	}

	for _, d := range []struct {
		env string
		d   time.Duration
	}{
		{"REPROCESSOR_GRAPH_TIMEOUT", c.GraphTimeout},
		{"REPROCESSOR_DELIVERY_BUDGET", c.DeliveryBudget},
		{"REPROCESSOR_BACKOFF_INITIAL", c.BackoffInitial},
		{"REPROCESSOR_BACKOFF_MAX", c.BackoffMax},
		{"REPROCESSOR_CIRCUIT_COOLDOWN", c.CircuitCooldown},
		{"REPROCESSOR_VERIFY_DEADLINE", c.VerifyDeadline},
		{"REPROCESSOR_VERIFY_DELAY", c.VerifyDelay},
		{"REPROCESSOR_ACK_WAIT", c.AckWait},
		{"REPROCESSOR_EVENTS_MAX_AGE", c.EventsMaxAge},
		{"REPROCESSOR_DLQ_MAX_AGE", c.DLQMaxAge},
		{"REPROCESSOR_SHUTDOWN_TIMEOUT", c.ShutdownTimeout},
	} {
		if d.d <= 0 {
			bad(d.env, "must be positive, got %q", formatDuration(d.d))
		}
	}
	if c.CoalesceWindow < 0 {
		bad("REPROCESSOR_COALESCE_WINDOW", "must not be negative, got %q", formatDuration(c.CoalesceWindow))
	}
	if c.BackoffInitial > 0 && c.BackoffMax > 0 && c.BackoffMax < c.BackoffInitial {
		bad("REPROCESSOR_BACKOFF_MAX", "must not be less than REPROCESSOR_BACKOFF_INITIAL (%s), got %q", formatDuration(c.BackoffInitial), formatDuration(c.BackoffMax))
	}

	if c.HTTPAddr != "" && !validListenAddr(c.HTTPAddr) {
		bad("REPROCESSOR_HTTP_ADDR", `must be host:port, ":port" or "off", got %q`, c.HTTPAddr)
	}
	if c.PprofAddr != "" && !validListenAddr(c.PprofAddr) {
		bad("REPROCESSOR_PPROF_ADDR", `must be host:port, ":port" or "off", got %q`, c.PprofAddr)
	}
	if c.PprofAddr != "" && c.PprofAddr == c.HTTPAddr {
		bad("REPROCESSOR_PPROF_ADDR", "must differ from REPROCESSOR_HTTP_ADDR, got %q", c.PprofAddr)
	}
	if _, ok := logging.ParseLevel(c.LogLevel); !ok {
		bad("REPROCESSOR_LOG_LEVEL", "must be one of debug, info, warn, error, got %q", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("REPROCESSOR_LOG_FORMAT", "must be text or json, got %q", c.LogFormat)
	}

	if !validListenAddr(c.EmbeddedAddr) {
		bad("REPROCESSOR_EMBEDDED_ADDR", "must be host:port, got %q", c.EmbeddedAddr)
	}
	if c.NATSURL == "" && c.DataDir == "" {
		bad("REPROCESSOR_DATA_DIR", "must be set when NATS_URL is not")
	}
	if !slices.Contains(graph.Logins, c.Credential) {
		bad("REPROCESSOR_CREDENTIAL", "valid values are %s, got %q", strings.Join(graph.Logins, ", "), c.Credential)
	}
	if !validEventSource(c.EventSource) && validSubjectPrefix(c.SubjectPrefix) {
		bad("REPROCESSOR_EVENT_SOURCE", "must be a URI reference of at most 256 printable ASCII characters without spaces, got %q", c.EventSource)
	}
	if !validInstance(c.Instance) {
		bad("REPROCESSOR_INSTANCE", "must be letters, digits, '.', '-', '_' or ':', got %q", c.Instance)
	}
	return errs
}

// checkHTTPSURL checks an absolute https URL without credentials, query or fragment.
// Its errors show the URL without credentials.
func checkHTTPSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Scheme, "https") {
		return fmt.Errorf("must be an https URL, got %q", redactURLs(raw))
	}
	if u.User != nil {
		return fmt.Errorf("must not hold credentials, got %q", redactURLs(raw))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("must not have a query or fragment, got %q", redactURLs(raw))
	}
	return nil
}

// checkNATSURLs checks a comma-separated list of NATS server URLs. An entry without a
// scheme is a host:port, as nats.go takes it.
func checkNATSURLs(list string) error {
	if list == "" {
		return nil
	}
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return fmt.Errorf("has an empty entry, got %q", redactURLs(list))
		}
		if !strings.Contains(raw, "://") {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return fmt.Errorf("must be nats, tls, ws or wss URLs, got %q", redactURLs(raw))
		}
		switch strings.ToLower(u.Scheme) {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("must be nats, tls, ws or wss URLs, got %q", redactURLs(raw))
		}
	}
	return nil
}

// urlSecrets returns the passwords and tokens held in a comma-separated list of URLs.
func urlSecrets(list string) []string { return queue.URLSecrets(list) }

// redactURLs returns a comma-separated list of URLs with their passwords and tokens
// replaced by [REDACTED], whatever their length and whether or not they have a scheme.
func redactURLs(list string) string { return queue.RedactURLs(list) }

// validSubjectPrefix reports whether p is one or more NATS subject tokens: no empty token,
// no wildcard, no white space or control character.
func validSubjectPrefix(p string) bool {
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for _, r := range tok {
			if r <= ' ' || r == 0x7f || r == '*' || r == '>' {
				return false
			}
		}
	}
	return true
}

// validListenAddr reports whether a is host:port with a numeric port; the host may be empty.
func validListenAddr(a string) bool {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535
}

// validEventSource reports whether s can be a CloudEvents source: a non-empty URI
// reference (RFC 3986), here of printable ASCII without spaces.
func validEventSource(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f || strings.IndexByte(`"<>\^{|}`+"`", s[i]) >= 0 {
			return false
		}
	}
	_, err := url.Parse(s)
	return err == nil
}

// validInstance reports whether s can name the instance in a CloudEvent source.
func validInstance(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case r == '.', r == '-', r == '_', r == ':':
		default:
			return false
		}
	}
	return true
}

const envPrefix = "REPROCESSOR_"

// setting is one variable of the configuration, bound to its Config field.
type setting struct {
	env   string
	help  string
	def   string // the default as shown in the usage, when the field's own value does not say it
	value configValue
}

// flagName returns the setting's flag: the REPROCESSOR_ variables, NATS_URL and NATS_CONTEXT (--context) have one,
// named in kebab case without the prefix; the others are read from the environment only.
func (s setting) flagName() string {
	if s.env == "NATS_CONTEXT" {
		return "context" // as the NATS CLI names it
	}
	if s.env != "NATS_URL" && !strings.HasPrefix(s.env, envPrefix) {
		return ""
	}
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.env, envPrefix)), "_", "-")
}

func (s setting) secret() bool {
	_, ok := s.value.(*secretValue)
	return ok
}

// settings binds every setting to its field of c, in the order of the usage text.
func (c *Config) settings() []setting {
	return []setting{
		{env: "NATS_URL", help: "NATS server URLs, comma-separated", def: "embedded server", value: (*urlValue)(&c.NATSURL)},
		{env: "NATS_CREDS", help: "NATS credentials file", value: (*stringValue)(&c.NATSCreds)},
		{env: "NATS_NKEY", help: "NATS nkey seed file", value: (*stringValue)(&c.NATSNKey)},
		{env: "NATS_USER", help: "NATS user", value: (*stringValue)(&c.NATSUser)},
		{env: "NATS_PASSWORD", help: "NATS password (secret)", value: (*secretValue)(&c.NATSPassword)},
		{env: "NATS_TOKEN", help: "NATS token (secret)", value: (*secretValue)(&c.NATSToken)},
		{env: "NATS_CA", help: "CA certificate file for NATS TLS", value: (*stringValue)(&c.NATSCA)},
		{env: "NATS_CERT", help: "client certificate file for NATS TLS", value: (*stringValue)(&c.NATSCert)},
		{env: "NATS_KEY", help: "client key file for NATS TLS", value: (*stringValue)(&c.NATSKey)},
		{env: "NATS_JWT", help: "NATS user JWT (with NATS_SEED)", value: (*stringValue)(&c.NATSJWT)},
		{env: "NATS_SEED", help: "NATS user nkey seed (secret, with NATS_JWT)", value: (*secretValue)(&c.NATSSeed)},
		{env: "NATS_CONTEXT", help: "NATS CLI context to connect with (default: the one nats context select chose; NATS_URL, if set, wins)", value: (*stringValue)(&c.NATSContext)},

		{env: "AZURE_TENANT_ID", help: "Entra tenant of the Graph application", value: (*stringValue)(&c.AzureTenantID)},
		{env: "AZURE_CLIENT_ID", help: "application (client) id", value: (*stringValue)(&c.AzureClientID)},
		{env: "AZURE_CLIENT_SECRET", help: "client secret (secret)", value: (*secretValue)(&c.AzureClientSecret)},
		{env: "AZURE_CLIENT_CERTIFICATE_PATH", help: "client certificate file (PEM or PKCS#12)", value: (*stringValue)(&c.AzureClientCertPath)},
		{env: "AZURE_CLIENT_CERTIFICATE_PASSWORD", help: "client certificate password (secret)", value: (*secretValue)(&c.AzureClientCertPassword)},
		{env: "AZURE_FEDERATED_TOKEN_FILE", help: "workload identity token file", value: (*stringValue)(&c.AzureFederatedTokenFile)},
		{env: "AZURE_AUTHORITY_HOST", help: "https token authority", def: "the cloud's", value: (*urlValue)(&c.AzureAuthorityHost)},

		{env: "REPROCESSOR_CLOUD", help: "public, usgov, usgovdod or china", value: (*stringValue)(&c.Cloud)},
		{env: "REPROCESSOR_GRAPH_URL", help: "https Graph endpoint", def: "the cloud's", value: (*urlValue)(&c.GraphURL)},
		{env: "REPROCESSOR_GRAPH_API_VERSION", help: "v1.0 or beta", value: (*stringValue)(&c.GraphAPIVersion)},
		{env: "REPROCESSOR_GRAPH_TIMEOUT", help: "timeout of one Graph call", value: (*durationValue)(&c.GraphTimeout)},
		{env: "REPROCESSOR_SUBJECT_PREFIX", help: "NATS subject prefix of requests, events and dead letters", value: (*stringValue)(&c.SubjectPrefix)},

		{env: "REPROCESSOR_CONCURRENCY", help: "the most requests worked at once, 1 to 10000; the limit follows rate × latency below it", value: (*intValue)(&c.Concurrency)},
		{env: "REPROCESSOR_RATE", help: "Graph calls per second, process-wide: auto finds it; 0 is unlimited", value: &rateValue{auto: &c.RateAuto, rate: &c.Rate}},
		{env: "REPROCESSOR_RATE_CEILING", help: "auto: highest calls per second of this process", value: (*floatValue)(&c.RateCeiling)},
		{env: "REPROCESSOR_RATE_INITIAL", help: "auto: calls per second to start from", value: (*floatValue)(&c.RateInitial)},
		{env: "REPROCESSOR_RATE_STEP", help: "auto: calls per second added per second of success", def: "5% of the rate, at least 1", value: (*floatValue)(&c.RateStep)},
		{env: "REPROCESSOR_MAX_DELIVER", help: "deliveries of a request before it fails", value: (*intValue)(&c.MaxDeliver)},
		{env: "REPROCESSOR_DELIVERY_BUDGET", help: "retry time within one delivery before the request is handed back", value: (*durationValue)(&c.DeliveryBudget)},
		{env: "REPROCESSOR_BACKOFF_INITIAL", help: "first retry delay", value: (*durationValue)(&c.BackoffInitial)},
		{env: "REPROCESSOR_BACKOFF_MAX", help: "longest retry delay", value: (*durationValue)(&c.BackoffMax)},
		{env: "REPROCESSOR_COALESCE_WINDOW", help: "how long an accepted id absorbs duplicates; 0 only while in flight", value: (*durationValue)(&c.CoalesceWindow)},
		{env: "REPROCESSOR_CIRCUIT_THRESHOLD", help: "consecutive 401/403 answers that stop fetching", value: (*intValue)(&c.CircuitThreshold)},
		{env: "REPROCESSOR_CIRCUIT_COOLDOWN", help: "wait before an open circuit probes Graph", value: (*durationValue)(&c.CircuitCooldown)},

		{env: "REPROCESSOR_VERIFY", help: "check assignment state after accepted", value: (*boolValue)(&c.Verify)},
		{env: "REPROCESSOR_VERIFY_DEADLINE", help: "stop checking a state still delivering after this", value: (*durationValue)(&c.VerifyDeadline)},
		{env: "REPROCESSOR_VERIFY_DELAY", help: "from accepted to the first state check", value: (*durationValue)(&c.VerifyDelay)},
		{env: "REPROCESSOR_VERIFY_CONCURRENCY", help: "state checks at once, 1 to 10000", value: (*intValue)(&c.VerifyConcurrency)},
		{env: "REPROCESSOR_PRECHECK", help: "read assignment state before reprocess too", value: (*boolValue)(&c.Precheck)},
		{env: "REPROCESSOR_VERIFY_RESOURCES", help: "once delivered, check the user holds the package's groups and app roles", value: (*boolValue)(&c.VerifyResources)},

		{env: "REPROCESSOR_ACK_WAIT", help: "JetStream ack wait of the consumers", value: (*durationValue)(&c.AckWait)},
		{env: "REPROCESSOR_MAX_ACK_PENDING", help: "JetStream max ack pending of the requests consumer; 0 is ten times the concurrency, at least 1000", value: (*intValue)(&c.MaxAckPending)},
		{env: "REPROCESSOR_EVENTS_MAX_AGE", help: "max age of the events stream", value: (*durationValue)(&c.EventsMaxAge)},
		{env: "REPROCESSOR_DLQ_MAX_AGE", help: "max age of the dead-letter stream", value: (*durationValue)(&c.DLQMaxAge)},
		{env: "REPROCESSOR_STREAM_REPLICAS", help: "replicas of the streams, 1 to 5", value: (*intValue)(&c.StreamReplicas)},
		{env: "REPROCESSOR_NO_CREATE", help: "only bind to existing streams and consumers", value: (*boolValue)(&c.NoCreate)},

		{env: "REPROCESSOR_HTTP_ADDR", help: `metrics and health listener; "off" disables`, value: (*listenAddrValue)(&c.HTTPAddr)},
		{env: "REPROCESSOR_PPROF_ADDR", help: "pprof listener, separate; off unless set", def: "off", value: (*listenAddrValue)(&c.PprofAddr)},
		{env: "REPROCESSOR_LOG_LEVEL", help: "debug, info, warn or error", value: (*stringValue)(&c.LogLevel)},
		{env: "REPROCESSOR_LOG_FORMAT", help: "text or json", value: (*stringValue)(&c.LogFormat)},

		{env: "REPROCESSOR_DATA_DIR", help: "store of the embedded NATS server", value: (*stringValue)(&c.DataDir)},
		{env: "REPROCESSOR_EMBEDDED_ADDR", help: "listen address of the embedded NATS server", value: (*stringValue)(&c.EmbeddedAddr)},
		{env: "REPROCESSOR_SHUTDOWN_TIMEOUT", help: "time allowed to finish in-flight work on shutdown", value: (*durationValue)(&c.ShutdownTimeout)},
		{env: "REPROCESSOR_INSTANCE", help: `this process: the events' "instance" attribute and the NATS connection name`, def: "host name", value: (*stringValue)(&c.Instance)},
		{env: "REPROCESSOR_CREDENTIAL", help: "Graph credential: auto (AZURE_* decide), or a developer's own login: azure-cli, azd, developer (az then azd); never inside Kubernetes", value: (*stringValue)(&c.Credential)},
		{env: "REPROCESSOR_EVENT_SOURCE", help: "the events' CloudEvents source, naming the deployment (a URI reference)", def: "urn:reprocessor:<subject prefix>", value: (*stringValue)(&c.EventSource)},
	}
}

// configValue is a flag.Value that also says how the Summary shows it.
type configValue interface {
	flag.Value
	summary() slog.Value
}

// stringValue is a plain string setting, trimmed of surrounding white space.
type stringValue string

func (v *stringValue) Set(s string) error  { *v = stringValue(strings.TrimSpace(s)); return nil }
func (v *stringValue) summary() slog.Value { return slog.StringValue(v.String()) }
func (v *stringValue) String() string {
	if v == nil {
		return ""
	}
	return string(*v)
}

// urlValue is a URL, or a list of them, that may hold credentials.
type urlValue string

func (v *urlValue) Set(s string) error  { *v = urlValue(strings.TrimSpace(s)); return nil }
func (v *urlValue) summary() slog.Value { return slog.StringValue(redactURLs(v.String())) }
func (v *urlValue) String() string {
	if v == nil {
		return ""
	}
	return redactURLs(string(*v))
}

// listenAddrValue is a listen address that "off" (or nothing) disables.
type listenAddrValue string

func (v *listenAddrValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "off") {
		s = ""
	}
	*v = listenAddrValue(s)
	return nil
}
func (v *listenAddrValue) summary() slog.Value { return slog.StringValue(v.String()) }
func (v *listenAddrValue) String() string {
	if v == nil || *v == "" {
		return "off"
	}
	return string(*v)
}

// secretValue is a secret, kept as given; it shows only as "set" or "unset".
type secretValue string

func (v *secretValue) Set(s string) error  { *v = secretValue(s); return nil }
func (v *secretValue) summary() slog.Value { return slog.StringValue(v.String()) }
func (v *secretValue) String() string {
	if v == nil || *v == "" {
		return "unset"
	}
	return "set"
}

// durationValue is a duration in Go syntax ("30s", "2m", "1h30m").
type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) summary() slog.Value { return slog.StringValue(v.String()) }
func (v *durationValue) String() string {
	if v == nil {
		return "0s"
	}
	return formatDuration(time.Duration(*v))
}

// parseDuration parses a duration in Go syntax and tells the user how to write a bare
// number.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	d, err := time.ParseDuration(s)
	if err == nil {
		return d, nil
	}
	if _, numErr := strconv.ParseFloat(s, 64); numErr == nil {
		return 0, fmt.Errorf("missing unit in duration %q: write %q", s, s+"s")
	}
	return 0, fmt.Errorf(`invalid duration %q: write a number with a unit, such as "30s", "2m" or "1h30m"`, s)
}

// formatDuration writes d as Go does, without the zero units at its end: "1m", not "1m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// intValue is a decimal integer.
type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("must be an integer, got %q", s)
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) summary() slog.Value { return slog.IntValue(int(*v)) }
func (v *intValue) String() string {
	if v == nil {
		return "0"
	}
	return strconv.Itoa(int(*v))
}

// floatValue is a decimal number.
type floatValue float64

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return fmt.Errorf("must be a number, got %q", s)
	}
	*v = floatValue(f)
	return nil
}
func (v *floatValue) summary() slog.Value { return slog.Float64Value(float64(*v)) }
func (v *floatValue) String() string {
	if v == nil {
		return "0"
	}
	return formatFloat(float64(*v))
}

// rateValue is "auto" or a decimal number of calls per second.
type rateValue struct {
	auto *bool
	rate *float64
}

func (v *rateValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "auto") {
		*v.auto, *v.rate = true, 0
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("must be auto or a number, got %q", s)
	}
	*v.auto, *v.rate = false, f
	return nil
}
func (v *rateValue) summary() slog.Value { return slog.StringValue(v.String()) }
func (v *rateValue) String() string {
	if v == nil || v.auto == nil || *v.auto {
		return "auto"
	}
	return formatFloat(*v.rate)
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// boolValue is true/false, 1/0 or yes/no, in any case. As a flag, naming it sets it.
type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := parseBool(s)
	if err != nil {
		return err
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) IsBoolFlag() bool    { return true }
func (v *boolValue) summary() slog.Value { return slog.BoolValue(bool(*v)) }
func (v *boolValue) String() string {
	if v == nil {
		return "false"
	}
	return strconv.FormatBool(bool(*v))
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1", "yes":
		return true, nil
	case "false", "0", "no":
		return false, nil
	}
	return false, fmt.Errorf("must be true or false (or 1/0, yes/no), got %q", s)
}

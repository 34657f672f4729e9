package config

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/logging"
)

// readEnvFile reads a testdata file of VAR=value lines; "# want: " lines give the exact
// lines of the expected error, in order; other "#" lines are comments.
// env is a fake environment.
type env map[string]string

func (e env) get(name string) string { return e[name] }

func readEnvFile(t *testing.T, path string) (env, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := env{}
	var want []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# want: "):
			want = append(want, strings.TrimPrefix(line, "# want: "))
		case line == "" || strings.HasPrefix(line, "#"):
		default:
			name, value, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not VAR=value: %q", path, line)
			}
			vars[name] = value
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vars, want
}

// TestLoadWithNothingSet: with nothing set, Load gives Defaults with the derived settings
// filled in. The values themselves are the settings table's (docs/configuration.md, checked
// by TestSettingsTableMatchesDocs); they are not restated here.
func TestLoadWithNothingSet(t *testing.T) {
	t.Parallel()
	cfg, rest, err := Load(nil, env{"REPROCESSOR_INSTANCE": "test-1"}.get)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(rest) != 0 {
		t.Errorf("remaining args = %q, want none", rest)
	}
	want := Defaults()
	want.GraphURL, want.Instance = "https://graph.microsoft.com", "test-1"
	want.EventSource = "urn:reprocessor:entitlement.reprocess"
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults:\n got %s\nwant %s", cfg, want)
	}
	if got := cfg.EffectiveMaxAckPending(); got != 20480 {
		t.Errorf("EffectiveMaxAckPending() = %d, want 20480", got)
	}
}

func TestLoadConfigInstanceDefaultsToHostname(t *testing.T) {
	t.Parallel()
	cfg, _, err := Load(nil, env{}.get)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	host, herr := os.Hostname()
	if herr != nil || host == "" {
		host = "reprocessor"
	}
	if cfg.Instance != host {
		t.Errorf("Instance = %q, want the host name %q", cfg.Instance, host)
	}
}

// loadFull loads testdata/full.env, which sets every variable: it is valid but for the one
// problem that every NATS authentication method is set at once.
func loadFull(t *testing.T) Config {
	t.Helper()
	vars, _ := readEnvFile(t, filepath.Join("testdata", "full.env"))
	cfg, _, err := Load(nil, vars.get)
	const only = "NATS_CREDS: set together with NATS_NKEY, NATS_USER, NATS_TOKEN: choose one way to authenticate to NATS"
	if err == nil || err.Error() != only {
		t.Fatalf("Load(full.env) = %v, want only %q", err, only)
	}
	return cfg
}

func TestLoadConfigEveryVariable(t *testing.T) {
	t.Parallel()
	cfg := loadFull(t)
	want := Config{
		NATSURL:                 "nats://app:canary-nats-url-pw@nats-1.example.com:4222, tls://nats-2.example.com:4222",
		NATSCreds:               "/etc/nats/app.creds",
		NATSNKey:                "/etc/nats/app.nk",
		NATSUser:                "app",
		NATSPassword:            "canary-nats-password",
		NATSToken:               "canary-nats-token",
		NATSCA:                  "/etc/nats/ca.pem",
		NATSCert:                "/etc/nats/cert.pem",
		NATSKey:                 "/etc/nats/key.pem",
		AzureTenantID:           "11111111-2222-3333-4444-555555555555",
		AzureClientID:           "66666666-7777-8888-9999-000000000000",
		AzureClientSecret:       "canary-azure-secret",
		AzureClientCertPath:     "/etc/azure/cert.pfx",
		AzureClientCertPassword: "canary-cert-password",
		AzureFederatedTokenFile: "/var/run/secrets/azure/token",
		AzureAuthorityHost:      "https://login.microsoftonline.us/",
		Cloud:                   "usgov",
		GraphURL:                "https://graph.example.com",
		GraphAPIVersion:         "beta",
		GraphTimeout:            10 * time.Second,
		SubjectPrefix:           "acme.entitlement",
		Concurrency:             64,
		Rate:                    2.5,
		RateCeiling:             400,
		RateInitial:             5,
		RateStep:                2,
		MaxDeliver:              9,
		DeliveryBudget:          2 * time.Minute,
		BackoffInitial:          500 * time.Millisecond,
		BackoffMax:              90 * time.Minute,
		CoalesceWindow:          0,
		CircuitThreshold:        3,
		CircuitCooldown:         time.Minute,
		Verify:                  false,
		VerifyDeadline:          20 * time.Minute,
		VerifyDelay:             2 * time.Second,
		VerifyConcurrency:       8,
		Precheck:                true,
		AckWait:                 45 * time.Second,
		MaxAckPending:           100,
		EventsMaxAge:            24 * time.Hour,
		DLQMaxAge:               48 * time.Hour,
		StreamReplicas:          3,
		NoCreate:                true,
		HTTPAddr:                "",
		PprofAddr:               "127.0.0.1:6060",
		LogLevel:                "debug",
		LogFormat:               "json",
		DataDir:                 "/var/lib/reprocessor",
		EmbeddedAddr:            "127.0.0.1:14222",
		ShutdownTimeout:         time.Minute,
		Instance:                "worker-7",
		EventSource:             "https://acme.example/reprocessor/prod",
		Credential:              "developer",
	}
	if !reflect.DeepEqual(cfg, want) {
		// Secrets stay out of the failure message too: compare field by field.
		gv, wv := reflect.ValueOf(cfg), reflect.ValueOf(want)
		for i := range gv.NumField() {
			if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
				t.Errorf("%s differs", gv.Type().Field(i).Name)
			}
		}
	}
	if got := cfg.EffectiveMaxAckPending(); got != 100 {
		t.Errorf("EffectiveMaxAckPending() = %d, want 100", got)
	}
}

// TestSettingsCoverConfig keeps the settings table and the struct in step: every field
// has exactly one variable, so Summary, the usage and the loader see it.
func TestSettingsCoverConfig(t *testing.T) {
	t.Parallel()
	var c Config
	settings := c.settings()
	fields := reflect.TypeOf(c).NumField() - 1 // REPROCESSOR_RATE sets RateAuto and Rate
	if len(settings) != fields {
		t.Errorf("%d settings for %d Config fields", len(settings), fields)
	}
	seenField := map[uintptr]string{}
	seenEnv := map[string]bool{}
	base := reflect.ValueOf(&c).Pointer()
	for _, s := range settings {
		off := reflect.ValueOf(s.value).Pointer() - base
		if prev, ok := seenField[off]; ok {
			t.Errorf("%s and %s set the same field", prev, s.env)
		}
		seenField[off] = s.env
		if seenEnv[s.env] {
			t.Errorf("%s listed twice", s.env)
		}
		seenEnv[s.env] = true
	}
}

func TestFlagNames(t *testing.T) {
	t.Parallel()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	Bind(fs, env{}.get)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	for _, want := range []string{
		"nats-url", "cloud", "graph-url", "graph-api-version", "graph-timeout", "subject-prefix",
		"concurrency", "rate", "rate-ceiling", "rate-initial", "rate-step", "max-deliver", "delivery-budget", "backoff-initial", "backoff-max",
		"coalesce-window", "circuit-threshold", "circuit-cooldown", "ack-wait", "max-ack-pending",
		"events-max-age", "dlq-max-age", "stream-replicas", "no-create", "http-addr", "pprof-addr",
		"log-level", "log-format", "data-dir", "embedded-addr", "shutdown-timeout", "instance",
		"verify", "verify-deadline", "precheck",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("no flag --%s", want)
		}
	}
	// Secrets and the other NATS_ and AZURE_ variables come only from the environment.
	for _, name := range names {
		if strings.Contains(name, "password") || strings.Contains(name, "secret") ||
			strings.Contains(name, "token") || strings.HasPrefix(name, "azure") ||
			(strings.HasPrefix(name, "nats") && name != "nats-url") {
			t.Errorf("unexpected flag --%s", name)
		}
	}
}

func TestFlagsOverrideEnvironment(t *testing.T) {
	t.Parallel()
	vars := env{
		"REPROCESSOR_CONCURRENCY":   "8",
		"REPROCESSOR_GRAPH_TIMEOUT": "30", // bad, but the flag replaces it
		"REPROCESSOR_LOG_FORMAT":    "json",
		"REPROCESSOR_NO_CREATE":     "true",
		"REPROCESSOR_HTTP_ADDR":     ":1234",
		"NATS_URL":                  "nats://env.example.com:4222",
		"REPROCESSOR_INSTANCE":      "test-1",
	}
	args := []string{
		"--concurrency", "4",
		"--graph-timeout=5s",
		"-rate", "0",
		"--no-create=no",
		"--http-addr", "off",
		"--nats-url", "nats://flag.example.com:4222",
		"--verify=false",
		"--cloud", "China",
		"run", "--not-a-config-flag", "x",
	}
	cfg, rest, err := Load(args, vars.get)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if want := []string{"run", "--not-a-config-flag", "x"}; !slices.Equal(rest, want) {
		t.Errorf("remaining args = %q, want %q", rest, want)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"Concurrency", cfg.Concurrency, 4},
		{"GraphTimeout", cfg.GraphTimeout, 5 * time.Second},
		{"Rate", cfg.Rate, 0.0},
		{"RateAuto", cfg.RateAuto, false},
		{"NoCreate", cfg.NoCreate, false},
		{"HTTPAddr", cfg.HTTPAddr, ""},
		{"NATSURL", cfg.NATSURL, "nats://flag.example.com:4222"},
		{"Verify", cfg.Verify, false},
		{"Cloud", cfg.Cloud, "china"},
		{"GraphURL", cfg.GraphURL, "https://microsoftgraph.chinacloudapi.cn"},
		{"LogFormat", cfg.LogFormat, "json"}, // from the environment: no flag given
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestBoolFlagAlone(t *testing.T) {
	t.Parallel()
	cfg, _, err := Load([]string{"--no-create", "--precheck"}, env{"REPROCESSOR_INSTANCE": "i"}.get)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if !cfg.NoCreate || !cfg.Precheck {
		t.Errorf("NoCreate = %v, Precheck = %v, want true, true", cfg.NoCreate, cfg.Precheck)
	}
}

func TestBindConfigWithSubcommandFlags(t *testing.T) {
	t.Parallel()
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	file := fs.String("file", "", "ids to enqueue")
	load := Bind(fs, env{"REPROCESSOR_RATE": "5", "REPROCESSOR_INSTANCE": "i"}.get)
	if err := fs.Parse([]string{"--file", "ids.txt", "--concurrency", "2"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := load()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if *file != "ids.txt" || cfg.Concurrency != 2 || cfg.Rate != 5 {
		t.Errorf("file = %q, Concurrency = %d, Rate = %v", *file, cfg.Concurrency, cfg.Rate)
	}
}

func TestCloudGraphURL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ cloud, graphURL, want string }{
		{"", "", "https://graph.microsoft.com"},
		{"public", "", "https://graph.microsoft.com"},
		{"usgov", "", "https://graph.microsoft.us"},
		{"usgovdod", "", "https://dod-graph.microsoft.us"},
		{"china", "", "https://microsoftgraph.chinacloudapi.cn"},
		{"USGovDoD", "", "https://dod-graph.microsoft.us"},
		{"china", "https://127.0.0.1:8443/", "https://127.0.0.1:8443"},
		{"public", "https://graph.example.com/proxy/", "https://graph.example.com/proxy"},
	} {
		vars := env{"REPROCESSOR_CLOUD": c.cloud, "REPROCESSOR_GRAPH_URL": c.graphURL, "REPROCESSOR_INSTANCE": "i"}
		cfg, _, err := Load(nil, vars.get)
		if err != nil {
			t.Errorf("cloud %q, graph URL %q: %v", c.cloud, c.graphURL, err)
			continue
		}
		if cfg.GraphURL != c.want {
			t.Errorf("cloud %q, graph URL %q: GraphURL = %q, want %q", c.cloud, c.graphURL, cfg.GraphURL, c.want)
		}
	}
}

// TestBadConfigs loads every testdata/bad-*.env and compares the error with its "# want:"
// lines, exactly and in order.
func TestBadConfigs(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("testdata", "bad-*.env"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/bad-*.env")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".env"), func(t *testing.T) {
			t.Parallel()
			vars, want := readEnvFile(t, file)
			if len(want) == 0 {
				t.Fatalf("%s has no # want: line", file)
			}
			if vars["REPROCESSOR_INSTANCE"] == "" {
				vars["REPROCESSOR_INSTANCE"] = "test-1"
			}
			cfg, _, err := Load(nil, vars.get)
			if err == nil {
				t.Fatalf("no error, want:\n%s", strings.Join(want, "\n"))
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, want) {
				t.Errorf("error:\n%s\nwant:\n%s", err, strings.Join(want, "\n"))
			}
			for _, v := range vars {
				assertNoCanary(t, "error", err.Error(), canaryWord.FindAllString(v, -1)...)
			}
			// validate on the returned Config finds the validation problems again.
			if verr := cfg.validate(); verr != nil && !strings.Contains(err.Error(), verr.Error()) {
				t.Errorf("validate() = %q, not part of the load error", verr)
			}
		})
	}
}

func TestFlagErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--graph-timeout", "30"}, `invalid value "30" for flag -graph-timeout: missing unit in duration "30": write "30s"`},
		{[]string{"--ack-wait=2 minutes"}, `invalid value "2 minutes" for flag -ack-wait: invalid duration "2 minutes"`},
		{[]string{"--concurrency", "many"}, `invalid value "many" for flag -concurrency: must be an integer, got "many"`},
		{[]string{"--no-create=perhaps"}, `invalid boolean value "perhaps" for -no-create: must be true or false (or 1/0, yes/no), got "perhaps"`},
		{[]string{"--nats-password", "x"}, "flag provided but not defined: -nats-password"},
		{[]string{"--azure-client-secret", "x"}, "flag provided but not defined: -azure-client-secret"},
		{[]string{"--concurrency", "0"}, `REPROCESSOR_CONCURRENCY: must be between 1 and 10000, got "0"`},
	} {
		_, _, err := Load(c.args, env{"REPROCESSOR_INSTANCE": "i"}.get)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%q) = %v, want an error containing %q", c.args, err, c.want)
		}
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	_, _, err := Load([]string{"-h"}, env{}.get)
	if !errors.Is(err, flag.ErrHelp) {
		t.Errorf("Load(-h) = %v, want flag.ErrHelp", err)
	}
}

func TestParseBool(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{
		"true": true, "TRUE": true, "True": true, "1": true, "yes": true, "YES": true, " yes ": true,
		"false": false, "FALSE": false, "0": false, "no": false, "No": false,
	} {
		got, err := parseBool(in)
		if err != nil || got != want {
			t.Errorf("parseBool(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "on", "off", "y", "2", "truee"} {
		if _, err := parseBool(in); err == nil {
			t.Errorf("parseBool(%q): no error", in)
		}
	}
}

func TestParseDuration(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{
		"30s": 30 * time.Second, "2m": 2 * time.Minute, "1h30m": 90 * time.Minute,
		"250ms": 250 * time.Millisecond, "0": 0, " 5s ": 5 * time.Second,
	} {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"30":   `missing unit in duration "30": write "30s"`,
		"1.5":  `missing unit in duration "1.5": write "1.5s"`,
		"-10":  `missing unit in duration "-10": write "-10s"`,
		"soon": `invalid duration "soon": write a number with a unit, such as "30s", "2m" or "1h30m"`,
		"":     `invalid duration "": write a number with a unit, such as "30s", "2m" or "1h30m"`,
	} {
		if _, err := parseDuration(in); err == nil || err.Error() != want {
			t.Errorf("parseDuration(%q) = %v, want %q", in, err, want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		0: "0s", time.Second: "1s", time.Minute: "1m", 90 * time.Minute: "1h30m",
		168 * time.Hour: "168h", 500 * time.Millisecond: "500ms", 61 * time.Second: "1m1s",
		time.Hour + time.Second: "1h0m1s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestSummary(t *testing.T) {
	t.Parallel()
	cfg := loadFull(t)
	got := map[string]string{}
	var keys []string
	for _, a := range cfg.Summary() {
		got[a.Key] = a.Value.String()
		keys = append(keys, a.Key)
	}
	for _, s := range cfg.settings() {
		if _, ok := got[s.env]; !ok {
			t.Errorf("Summary lacks %s", s.env)
		}
	}
	if len(keys) != len(got) {
		t.Errorf("Summary repeats keys: %q", keys)
	}
	for k, want := range map[string]string{
		"NATS_URL":                          "nats://app:[REDACTED]@nats-1.example.com:4222, tls://nats-2.example.com:4222",
		"NATS_PASSWORD":                     "set",
		"NATS_TOKEN":                        "set",
		"AZURE_CLIENT_SECRET":               "set",
		"AZURE_CLIENT_CERTIFICATE_PASSWORD": "set",
		"AZURE_CLIENT_ID":                   "66666666-7777-8888-9999-000000000000",
		"REPROCESSOR_GRAPH_URL":             "https://graph.example.com",
		"REPROCESSOR_CONCURRENCY":           "64",
		"REPROCESSOR_RATE":                  "2.5",
		"REPROCESSOR_BACKOFF_MAX":           "1h30m",
		"REPROCESSOR_NO_CREATE":             "true",
		"REPROCESSOR_HTTP_ADDR":             "off",
	} {
		if got[k] != want {
			t.Errorf("Summary %s = %q, want %q", k, got[k], want)
		}
	}

	defaults, _, err := Load(nil, env{"REPROCESSOR_INSTANCE": "i"}.get)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range defaults.Summary() {
		switch a.Key {
		case "NATS_PASSWORD", "NATS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD":
			if a.Value.String() != "unset" {
				t.Errorf("default %s = %q, want unset", a.Key, a.Value)
			}
		case "REPROCESSOR_PPROF_ADDR":
			if a.Value.String() != "off" {
				t.Errorf("default %s = %q, want off", a.Key, a.Value)
			}
		}
	}
}

// canaryWord finds the secrets in testdata: words holding "canary".
var canaryWord = regexp.MustCompile(`[\w-]*canary[\w-]*`)

// canaries are the secret values of testdata/full.env.
var canaries = []string{
	"canary-nats-url-pw", "canary-nats-password", "canary-nats-token", "canary-azure-secret",
	"canary-cert-password",
}

func assertNoCanary(t *testing.T, what, text string, canaries ...string) {
	t.Helper()
	for _, c := range canaries {
		if strings.Contains(text, c) {
			t.Errorf("%s shows the secret %q:\n%s", what, c, text)
		}
	}
}

func TestSecretsNeverShown(t *testing.T) {
	t.Parallel()
	cfg := loadFull(t)
	var summary strings.Builder
	for _, a := range cfg.Summary() {
		fmt.Fprintf(&summary, "%s=%s\n", a.Key, a.Value)
	}
	var usage bytes.Buffer
	if err := WriteUsage(&usage); err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", cfg)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("config", slog.Any("config", cfg))
	for what, text := range map[string]string{
		"Summary":         summary.String(),
		"String":          cfg.String(),
		"%v":              fmt.Sprintf("%v", cfg),
		"%+v":             fmt.Sprintf("%+v", cfg),
		"%#v":             fmt.Sprintf("%#v", cfg),
		"slog of Config":  logged.String(),
		"usage":           usage.String(),
		"Redact(secrets)": cfg.Redact(strings.Join(canaries, " and ")),
	} {
		assertNoCanary(t, what, text, canaries...)
	}

	// Validation errors, with every secret set and other settings wrong.
	vars, _ := readEnvFile(t, filepath.Join("testdata", "full.env"))
	bad := env{}
	for k, v := range vars {
		bad[k] = v
	}
	bad["REPROCESSOR_CONCURRENCY"] = "0"
	bad["REPROCESSOR_LOG_LEVEL"] = "canary-azure-secret"
	bad["NATS_URL"] = "http://user:canary-nats-url-pw@host:80"
	bad["AZURE_AUTHORITY_HOST"] = "http://x:canary-nats-password@login.example.com"
	_, _, err := Load([]string{"--rate", "canary-nats-token"}, bad.get)
	if err == nil {
		t.Fatal("no error")
	}
	assertNoCanary(t, "flag error", err.Error(), canaries...)
	cfg, _, err = Load(nil, bad.get)
	if err == nil {
		t.Fatal("no error")
	}
	assertNoCanary(t, "validation error", err.Error(), canaries...)
	assertNoCanary(t, "validate()", cfg.validate().Error(), canaries...)
	if !strings.Contains(err.Error(), "[REDACTED]") {
		t.Errorf("validation error does not say where it redacted:\n%s", err)
	}
}

func TestSecrets(t *testing.T) {
	t.Parallel()
	cfg := Config{
		NATSURL:           "nats://tok%40en-value@a:4222, nats://user:p%2Fss-word@b:4222,nats://c:4222",
		NATSPassword:      "nats-pass",
		AzureClientSecret: "abc", // too short to redact, still a secret
	}
	got := cfg.Secrets()
	want := []string{"nats-pass", "abc", "tok%40en-value", "tok@en-value", "p%2Fss-word", "p/ss-word"}
	if !slices.Equal(got, want) {
		t.Errorf("Secrets() = %q, want %q", got, want)
	}
	if got := (Config{}).Secrets(); len(got) != 0 {
		t.Errorf("Secrets() of nothing = %q", got)
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	cfg := Config{
		NATSPassword:      "pass",
		NATSToken:         "passphrase", // holds the password: replaced whole
		AzureClientSecret: "abc",        // shorter than logging.MinSecretLen: left alone
	}
	for in, want := range map[string]string{
		"":                           "",
		"nothing here":               "nothing here",
		"password pass passphrase":   "[REDACTED]word [REDACTED] [REDACTED]",
		"abc":                        "abc",
		"token=passphrase;pw=pass\n": "token=[REDACTED];pw=[REDACTED]\n",
	} {
		if got := cfg.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWriteUsage(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	if err := WriteUsage(&b); err != nil {
		t.Fatal(err)
	}
	usage := b.String()
	var c Config
	for _, s := range c.settings() {
		line := ""
		for l := range strings.Lines(usage) {
			if strings.Contains(l, " "+s.env+" ") {
				line = l
			}
		}
		if line == "" {
			t.Errorf("usage lacks %s", s.env)
			continue
		}
		if name := s.flagName(); name != "" && !strings.HasPrefix(line, "--"+name+" ") {
			t.Errorf("usage line of %s does not start with --%s: %q", s.env, name, line)
		}
		if s.flagName() == "" && !strings.HasPrefix(line, "(environment only)") {
			t.Errorf("usage line of %s does not say environment only: %q", s.env, line)
		}
	}
	for _, want := range []string{
		"--concurrency", "REPROCESSOR_CONCURRENCY", " 2048 ", " 1m ", " 168h ", "the cloud's", ":9464",
		"host name", " 127.0.0.1:4222 ",
	} {
		if !strings.Contains(usage, want) {
			t.Errorf("usage lacks %q:\n%s", want, usage)
		}
	}
}

func TestNewLoggerRedactsConfigSecrets(t *testing.T) {
	t.Parallel()
	cfg := loadFull(t)
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		log, err := logging.New(&buf, "info", format, cfg.Secrets())
		if err != nil {
			t.Fatal(err)
		}
		log.Info("starting", "config", cfg)
		log.LogAttrs(context.Background(), slog.LevelInfo, "configuration", cfg.Summary()...)
		for _, c := range canaries {
			log.Error("call failed", "err", fmt.Errorf("token request: %w", errors.New("secret "+c+" rejected")))
		}
		log.Info("nats", "url", cfg.NATSURL)
		assertNoCanary(t, format+" log", buf.String(), canaries...)
	}
}

package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// secretStringer shows a secret through String.
type secretStringer struct{ s string }

func (s secretStringer) String() string { return "stringer:" + s.s }

// secretText shows a secret through MarshalText.
type secretText struct{ s string }

func (s secretText) MarshalText() ([]byte, error) { return []byte("text:" + s.s), nil }

// secretLogValuer shows a secret through LogValue, inside a group.
type secretLogValuer struct{ s string }

func (s secretLogValuer) LogValue() slog.Value {
	return slog.GroupValue(slog.String("inner", s.s), slog.Int("n", 1))
}

func TestNewLoggerRedactsSecrets(t *testing.T) {
	t.Parallel()
	// The quote and backslash would be escaped by the handlers: redaction must come first.
	const canary = `c4n4ry"s3cr\et`
	const plain = "plain-canary-token"
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			log, err := New(&buf, "debug", format, []string{canary, plain, "abc", ""})
			if err != nil {
				t.Fatal(err)
			}
			wrapped := fmt.Errorf("connect: %w", errors.New("authorization rejected for token "+plain))
			log.Info("message with "+plain, "attr", canary)
			log.Debug("debug", slog.Group("outer", slog.Group("inner", slog.String("pw", canary))))
			log.Error("failed", "err", wrapped)
			log.Error("failed", slog.Any("err", wrapped))
			log.Warn("joined", "err", errors.Join(errors.New("one"), errors.New(canary)))
			log.With("conn", "nats://u:"+plain+"@host").WithGroup("g").Info("with", "k", canary)
			log.Info("any", "bytes", []byte(plain), "stringer", secretStringer{plain},
				"text", secretText{canary}, "valuer", secretLogValuer{plain},
				"struct", struct{ Password string }{plain}, "map", map[string]string{"k": canary})
			log.Info("key", plain, "value")
			log.Info("short", "v", "abc") // shorter than MinSecretLen: left as it is
			log.LogAttrs(context.Background(), slog.LevelInfo, "attrs", slog.String("s", plain))

			out := buf.String()
			for _, secret := range []string{canary, plain, jsonEscape(canary), `c4n4ry\"s3cr\\et`, "s3cr"} {
				if strings.Contains(out, secret) {
					t.Errorf("output shows %q:\n%s", secret, out)
				}
			}
			if n := strings.Count(out, Redacted); n < 16 {
				t.Errorf("%d redactions, want 16 or more:\n%s", n, out)
			}
			// Values without secrets are logged as usual.
			for _, want := range []string{"connect: authorization rejected", "one", "abc", "n=1", `"n":1`} {
				if (want == "n=1" && format == "json") || (want == `"n":1` && format == "text") {
					continue
				}
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if format == "json" {
				for line := range strings.Lines(out) {
					if !json.Valid([]byte(line)) {
						t.Errorf("not JSON: %s", line)
					}
				}
			}
		})
	}
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return strings.Trim(string(b), `"`)
}

func TestNewLoggerLevelAndFormat(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		level, format string
		wantDebug     bool
		wantInfo      bool
		wantJSON      bool
	}{
		{"", "", false, true, false},
		{"debug", "text", true, true, false},
		{"DEBUG", "JSON", true, true, true},
		{"info", "json", false, true, true},
		{"warn", "text", false, false, false},
		{"error", "text", false, false, false},
	} {
		var buf bytes.Buffer
		log, err := New(&buf, c.level, c.format, nil)
		if err != nil {
			t.Errorf("New(%q, %q): %v", c.level, c.format, err)
			continue
		}
		log.Debug("d-line")
		log.Info("i-line")
		out := buf.String()
		if got := strings.Contains(out, "d-line"); got != c.wantDebug {
			t.Errorf("level %q: debug logged = %v", c.level, got)
		}
		if got := strings.Contains(out, "i-line"); got != c.wantInfo {
			t.Errorf("level %q: info logged = %v", c.level, got)
		}
		if c.wantInfo {
			if got := strings.HasPrefix(out, "{"); got != c.wantJSON {
				t.Errorf("format %q: JSON = %v: %s", c.format, got, out)
			}
		}
	}
	for _, c := range []struct{ level, format, want string }{
		{"verbose", "text", `log level: must be one of debug, info, warn, error, got "verbose"`},
		{"info", "xml", `log format: must be text or json, got "xml"`},
	} {
		if _, err := New(&bytes.Buffer{}, c.level, c.format, nil); err == nil || err.Error() != c.want {
			t.Errorf("New(%q, %q) = %v, want %q", c.level, c.format, err, c.want)
		}
	}
}

func BenchmarkLoggerRedacting(b *testing.B) {
	var buf bytes.Buffer
	log, err := New(&buf, "info", "json", []string{"canary-one", "canary-two", "canary-three"})
	if err != nil {
		b.Fatal(err)
	}
	log = log.With("assignment", "0b8f4c1e-9a55-4a4e-9f3c-1f2e3d4c5b6a")
	err = errors.New("graph answered 429")
	for b.Loop() {
		buf.Reset()
		log.Info("reprocess throttled", "status", 429, "request_id", "c1a2b3", "err", err)
	}
}

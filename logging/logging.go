// Package logging builds the process's slog logger, which blanks every secret it is
// given wherever it would appear, and the Redactor it uses for other text.
package logging

import (
	"cmp"
	"encoding"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
)

// Redacted replaces a secret wherever one would be shown: in logs, and in what the NATS
// URL shows (queue.ConnConfig.Redacted).
const Redacted = "[REDACTED]"

// MinSecretLen is the length below which a value is not redacted from text: shorter
// values would mangle ordinary words and numbers, and protect nothing anyway.
const MinSecretLen = 4

// New returns a logger writing to w in format "text" or "json" at level "debug",
// "info", "warn" or "error" (empty means text and info). Every secret of at least
// MinSecretLen characters is replaced by [REDACTED] in the message, in attribute keys and
// string values (in groups too), in errors, and in any other value whose text holds it.
func New(w io.Writer, level, format string, secrets []string) (*slog.Logger, error) {
	lvl, ok := ParseLevel(cmp.Or(level, "info"))
	if !ok {
		return nil, fmt.Errorf("log level: must be one of debug, info, warn, error, got %q", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if r := NewRedactor(secrets); r != nil {
		opts.ReplaceAttr = r.replaceAttr
	}
	switch strings.ToLower(cmp.Or(format, "text")) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format: must be text or json, got %q", format)
}

// ParseLevel maps a level name, in any case, to its slog level.
func ParseLevel(name string) (slog.Level, bool) {
	switch strings.ToLower(name) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

// Redactor replaces secrets in text.
type Redactor struct {
	replacer *strings.Replacer
}

// NewRedactor returns a Redactor of the secrets at least MinSecretLen long, or nil when
// there is none. The nil Redactor returns text unchanged.
func NewRedactor(secrets []string) *Redactor {
	var long []string
	for _, s := range secrets {
		if len(s) >= MinSecretLen && !slices.Contains(long, s) {
			long = append(long, s)
		}
	}
	if len(long) == 0 {
		return nil
	}
	// At one position the replacer takes the first secret that matches: the longest
	// first, so that a secret holding another is replaced whole.
	slices.SortFunc(long, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	pairs := make([]string, 0, 2*len(long))
	for _, s := range long {
		pairs = append(pairs, s, Redacted)
	}
	return &Redactor{replacer: strings.NewReplacer(pairs...)}
}

// Redact returns s with every secret replaced by [REDACTED].
func (r *Redactor) Redact(s string) string {
	if r == nil {
		return s
	}
	return r.replacer.Replace(s)
}

// replaceAttr is a slog.HandlerOptions.ReplaceAttr that redacts secrets. The handler has
// resolved LogValuers and walks into groups itself; the message comes as the "msg" attr.
func (r *Redactor) replaceAttr(_ []string, a slog.Attr) slog.Attr {
	a.Key = r.Redact(a.Key)
	switch a.Value.Kind() {
	case slog.KindString:
		a.Value = slog.StringValue(r.Redact(a.Value.String()))
	case slog.KindAny:
		// Errors, Stringers, byte slices, structs: if their text holds a secret, log the
		// redacted text in their place.
		text := anyText(a.Value.Any())
		if red := r.Redact(text); red != text {
			a.Value = slog.StringValue(red)
		}
	}
	return a
}

// anyText returns the text a handler would show for v, or near enough to find a secret in.
func anyText(v any) string {
	switch v := v.(type) {
	case error:
		return v.Error()
	case encoding.TextMarshaler:
		b, err := v.MarshalText()
		if err != nil {
			return fmt.Sprintf("%+v", v)
		}
		return string(b)
	case []byte:
		return string(v)
	}
	return fmt.Sprintf("%+v", v)
}

package queue

import (
	"net/url"
	"strings"

	"github.com/reprocessor/reprocessor/logging"
)

// credentialSpans finds the user info of every URL in a comma-separated list as nats.go
// takes it: with a scheme ("nats://u:p@h") or without ("u:p@h:4222"), and with a password
// that itself holds a comma or an '@'. Each span runs from after the last "://" (or the
// start of the entry) to the last '@' before the host. Where the list is ambiguous (a
// comma in a password of a URL without a scheme) a span reaches back over the earlier
// entries: more is hidden, never less.
func credentialSpans(list string) [][2]int {
	var spans [][2]int
	from := 0
	for from < len(list) {
		rel := strings.IndexByte(list[from:], '@')
		if rel < 0 {
			break
		}
		at := from + rel
		// The host runs to the next comma or slash; a later '@' before it belongs to the
		// user info too (Go's url.Parse takes the last one).
		for {
			hostEnd := len(list)
			if i := strings.IndexAny(list[at+1:], ",/"); i >= 0 {
				hostEnd = at + 1 + i
			}
			next := strings.IndexByte(list[at+1:hostEnd], '@')
			if next < 0 {
				break
			}
			at += 1 + next
		}
		start := from
		if i := strings.LastIndex(list[from:at], "://"); i >= 0 {
			start = from + i + len("://")
		}
		spans = append(spans, [2]int{start, at})
		from = len(list)
		if i := strings.IndexByte(list[at:], ','); i >= 0 {
			from = at + i + 1
		}
	}
	return spans
}

// RedactURLs returns a comma-separated list of URLs (NATS_URL, or any one URL) with the
// passwords and tokens of their user info replaced by [REDACTED]; a user name is kept
// where it can be told apart ("nats://alice:[REDACTED]@host").
func RedactURLs(list string) string {
	var b strings.Builder
	last := 0
	for _, sp := range credentialSpans(list) {
		info := list[sp[0]:sp[1]]
		user, secret, hasUser := strings.Cut(info, ":")
		if hasUser && secret == "" {
			continue // a user without a password
		}
		b.WriteString(list[last:sp[0]])
		if hasUser && !strings.ContainsAny(user, ",/") {
			b.WriteString(user + ":")
		}
		b.WriteString(logging.Redacted)
		last = sp[1]
	}
	b.WriteString(list[last:])
	return b.String()
}

// URLSecrets returns the passwords and tokens held in the user info of a comma-separated
// list of URLs, as written and unescaped, and the pieces of one holding a comma (nats.go
// splits the list on commas, so its errors may show a piece alone). Pieces shorter than
// three bytes are left out.
func URLSecrets(list string) []string {
	var secrets []string
	add := func(s string) {
		if len(s) >= 3 {
			secrets = append(secrets, s)
		}
	}
	for _, sp := range credentialSpans(list) {
		info := list[sp[0]:sp[1]]
		secret := info
		if _, p, ok := strings.Cut(info, ":"); ok {
			secret = p
		}
		add(secret)
		if un, err := url.PathUnescape(secret); err == nil && un != secret {
			add(un)
		}
		if strings.Contains(info, ",") {
			for piece := range strings.SplitSeq(info, ",") {
				add(piece)
				if _, p, ok := strings.Cut(piece, ":"); ok {
					add(p)
				}
			}
		}
	}
	return secrets
}

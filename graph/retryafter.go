package graph

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxRetryAfter caps what ParseRetryAfter returns: a server asking for more is treated as
// asking for this long.
const MaxRetryAfter = time.Hour

// ParseRetryAfter reads a Retry-After header value: seconds, possibly fractional ("2.128"
// is 2.128s exactly, the fraction is kept), or an HTTP date, relative to now. A negative
// value or a date in the past gives 0, true. A missing or unreadable value gives 0, false.
// Values above MaxRetryAfter are capped.
func ParseRetryAfter(h string, now time.Time) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if d, ok := parseSeconds(h); ok {
		return d, true
	}
	t, err := http.ParseTime(h)
	if err != nil {
		return 0, false
	}
	return clampRetryAfter(t.Sub(now)), true
}

// parseSeconds reads [-+]digits[.digits] as seconds, exactly to the nanosecond.
func parseSeconds(h string) (time.Duration, bool) {
	neg := false
	switch h[0] {
	case '-':
		neg, h = true, h[1:]
	case '+':
		h = h[1:]
	}
	whole, frac, _ := strings.Cut(h, ".")
	if whole == "" && frac == "" || !allDigits(whole) || !allDigits(frac) {
		return 0, false
	}
	if neg {
		return 0, true
	}
	// Cap before converting so that huge values cannot overflow.
	whole = strings.TrimLeft(whole, "0")
	if len(whole) > 6 {
		return MaxRetryAfter, true
	}
	var d time.Duration
	if whole != "" {
		n, err := strconv.ParseInt(whole, 10, 64)
		if err != nil {
			return 0, false
		}
		d = time.Duration(n) * time.Second
	}
	if len(frac) > 9 {
		frac = frac[:9]
	}
	if frac != "" {
		n, err := strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		if err != nil {
			return 0, false
		}
		d += time.Duration(n)
	}
	return clampRetryAfter(d), true
}

func clampRetryAfter(d time.Duration) time.Duration {
	return max(0, min(d, MaxRetryAfter))
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

package graphtest

import (
	"math"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// SetLatency delays each Graph answer by a random duration in [min, max]; max <= min gives a
// fixed delay of min; zero turns latency off.
func (s *Server) SetLatency(min, max time.Duration) {
	s.latencyMin.Store(int64(min))
	s.latencyMax.Store(int64(max))
}

// SetUnknownRate makes that fraction of ids (chosen from the id's hash) answer 404.
func (s *Server) SetUnknownRate(fraction float64) { s.unknownRate.Store(fraction) }

// SetRandomFaults answers those fractions of Graph calls 429 and 503 at random, with the
// Retry-After retryAfter ("" means "1").
func (s *Server) SetRandomFaults(throttle, unavailable float64, retryAfter string) {
	if retryAfter == "" {
		retryAfter = "1"
	}
	s.randomRetryAfter.Store(&retryAfter)
	s.throttleRate.Store(throttle)
	s.unavailableRate.Store(unavailable)
}

// SetAnswer makes reprocess of id answer status, with a Graph error body; a 400 or 404 is
// also the answer to a GET of id. Status 0 (or any 2xx) restores the normal answer.
func (s *Server) SetAnswer(id string, status int) {
	id = strings.ToLower(id)
	s.answersMu.Lock()
	defer s.answersMu.Unlock()
	if status == 0 || status/100 == 2 {
		delete(s.answers, id)
		return
	}
	s.answers[id] = status
}

// Storm503 answers the next n reprocess calls 503 (n < 0: until ClearFaults).
func (s *Server) Storm503(n int) { s.storm503.Store(int64(n)) }

// Throttle429 answers the next n Graph calls 429 with the Retry-After header retryAfter
// ("" sends none; n < 0: until ClearFaults).
func (s *Server) Throttle429(n int, retryAfter string) {
	s.throttleRetryAfter.Store(&retryAfter)
	s.throttle429.Store(int64(n))
}

// Forbid answers the next n Graph calls 403, whatever the id (n < 0: until ClearFaults).
func (s *Server) Forbid(n int) { s.forbid.Store(int64(n)) }

// SetRateLimit admits r Graph calls per second with bursts of burst, answering the excess
// 429 with a fractional Retry-After computed from the bucket. r <= 0 removes the limit.
func (s *Server) SetRateLimit(r float64, burst int) {
	if r <= 0 {
		s.limiter.Store(nil)
		return
	}
	s.limiter.Store(rate.NewLimiter(rate.Limit(r), max(burst, 1)))
}

// ExpireTokensEarly makes tokens issued from now on be rejected with 401 about 100ms after
// they are issued, while they still claim their full expires_in.
func (s *Server) ExpireTokensEarly(on bool) { s.expireEarly.Store(on) }

// FailTokens makes the token endpoint answer 401 AADSTS7000215, as for a wrong secret.
func (s *Server) FailTokens(on bool) { s.failTokens.Store(on) }

// ClearFaults ends Storm503, Throttle429, Forbid, the rate limit, ExpireTokensEarly,
// FailTokens, random faults and per-id answers. Latency and assignments are kept.
func (s *Server) ClearFaults() {
	s.storm503.Store(0)
	s.throttle429.Store(0)
	s.forbid.Store(0)
	s.limiter.Store(nil)
	s.expireEarly.Store(false)
	s.failTokens.Store(false)
	s.SetRandomFaults(0, 0, "")
	s.answersMu.Lock()
	clear(s.answers)
	s.answersMu.Unlock()
}

// RevokeTokens makes every token issued so far invalid.
func (s *Server) RevokeTokens() { s.tokens.Clear() }

// take consumes one from a fault counter: n > 0 counts down, n < 0 never ends.
func take(n *atomic.Int64) bool {
	for {
		v := n.Load()
		switch {
		case v == 0:
			return false
		case v < 0:
			return true
		case n.CompareAndSwap(v, v-1):
			return true
		}
	}
}

// atomicFloat is a float64 stored atomically.
type atomicFloat struct{ bits atomic.Uint64 }

func (f *atomicFloat) Load() float64   { return math.Float64frombits(f.bits.Load()) }
func (f *atomicFloat) Store(v float64) { f.bits.Store(math.Float64bits(v)) }

package graphtest

import (
	"sync/atomic"
	"time"
)

// Operations recorded in Call.Operation.
const (
	OpReprocess       = "reprocess"
	OpGetAssignment   = "get_assignment"
	OpListAssignments = "list_assignments"
	OpToken           = "token"
	OpDiscovery       = "discovery" // openid-configuration and instance discovery
	OpOther           = "other"     // a path the server does not serve
)

// Call is one request the server answered.
type Call struct {
	Time            time.Time
	Method          string
	Path            string
	Operation       string
	APIVersion      string // "v1.0" or "beta" for Graph calls
	AssignmentID    string // lower case, as found in the path (even when invalid)
	Status          int
	ClientRequestID string // the client-request-id received
	RequestID       string // the request-id answered
	TokenValid      bool   // Graph calls: the bearer token was accepted; token calls: a token was issued
}

// Calls returns a copy of the calls answered so far (at most Options.MaxRecordedCalls, the
// first ones; CallCount keeps counting past that).
func (s *Server) Calls() []Call {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	return append([]Call(nil), s.calls...)
}

// CallCount returns how many calls of operation op were answered.
func (s *Server) CallCount(op string) int {
	if n, ok := s.counts.Load(op); ok {
		return int(n.(*atomic.Int64).Load())
	}
	return 0
}

// ResetCalls forgets the calls answered so far, and the most answered at once.
func (s *Server) ResetCalls() {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	s.calls = nil
	s.peakInFlight.Store(s.inFlight.Load())
	s.counts.Range(func(_, v any) bool {
		v.(*atomic.Int64).Store(0)
		return true
	})
}

func (s *Server) record(c Call) {
	n, ok := s.counts.Load(c.Operation)
	if !ok {
		n, _ = s.counts.LoadOrStore(c.Operation, new(atomic.Int64))
	}
	s.callsMu.Lock()
	if len(s.calls) < s.maxCalls {
		s.calls = append(s.calls, c)
	}
	n.(*atomic.Int64).Add(1)
	s.callsMu.Unlock()
}

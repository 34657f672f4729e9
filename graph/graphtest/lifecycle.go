package graphtest

import (
	"hash/fnv"
	"strings"
	"sync"
	"time"
)

// Lifecycle is what an assignment goes through after a reprocess is accepted: it says
// "delivering" for a while, then settles in Final, unless it is Stuck in delivering or is
// Deleted. Before any reprocess, an assignment keeps its stored state.
type Lifecycle struct {
	Delivering time.Duration // how long the assignment says "delivering" after the reprocess
	Final      string        // the state after that; default "delivered". Any string, even one Graph never sends.
	Stuck      bool          // stays "delivering" for ever
	Deleted    bool          // after Delivering it no longer exists: GET answers 404
}

// lifecycles holds the lifecycle settings and when each id was last reprocessed.
type lifecycles struct {
	mu          sync.RWMutex
	byID        map[string]Lifecycle
	def         *Lifecycle
	mix         []Lifecycle // chosen from the id's hash when set, instead of def
	reprocessed map[string]time.Time
}

// SetLifecycle makes id follow l after each accepted reprocess.
func (s *Server) SetLifecycle(id string, l Lifecycle) {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	if s.life.byID == nil {
		s.life.byID = map[string]Lifecycle{}
	}
	s.life.byID[strings.ToLower(id)] = l
}

// SetDefaultLifecycle makes every id without a lifecycle of its own follow l after a
// reprocess; nil (the default) leaves assignments as they are.
func (s *Server) SetDefaultLifecycle(l *Lifecycle) {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	s.life.def, s.life.mix = l, nil
}

// SetLifecycleMix gives each id without a lifecycle of its own one of ls, chosen from the
// id's hash (so always the same one for an id).
func (s *Server) SetLifecycleMix(ls ...Lifecycle) {
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	s.life.mix = ls
}

// lifecycleFor returns the lifecycle that applies to id, if any. The caller holds life.mu.
func (s *Server) lifecycleFor(id string) (Lifecycle, bool) {
	if l, ok := s.life.byID[id]; ok {
		return l, true
	}
	if len(s.life.mix) > 0 {
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		return s.life.mix[h.Sum32()%uint32(len(s.life.mix))], true
	}
	if s.life.def != nil {
		return *s.life.def, true
	}
	return Lifecycle{}, false
}

// reprocessed starts id's lifecycle, if it has one.
func (s *Server) reprocessed(id string, at time.Time) {
	s.life.mu.RLock()
	_, ok := s.lifecycleFor(id)
	s.life.mu.RUnlock()
	if !ok {
		return
	}
	s.life.mu.Lock()
	defer s.life.mu.Unlock()
	if s.life.reprocessed == nil {
		s.life.reprocessed = map[string]time.Time{}
	}
	s.life.reprocessed[id] = at
}

// lifecycleState returns the state id is in now if its lifecycle has begun: the state,
// the status, and whether it still exists.
func (s *Server) lifecycleState(id string, now time.Time) (state, status string, exists, applies bool) {
	s.life.mu.RLock()
	defer s.life.mu.RUnlock()
	at, ok := s.life.reprocessed[id]
	if !ok {
		return "", "", false, false
	}
	l, ok := s.lifecycleFor(id)
	if !ok {
		return "", "", false, false
	}
	if l.Stuck || now.Sub(at) < l.Delivering {
		return "delivering", "Delivering", true, true
	}
	if l.Deleted {
		return "", "", false, true
	}
	final := l.Final
	if final == "" {
		final = "delivered"
	}
	return final, pascal(final), true, true
}

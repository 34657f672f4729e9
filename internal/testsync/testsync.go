// Package testsync helps tests of code that runs in other goroutines: Poll waits until a
// condition holds, SyncBuffer collects what they write, ShortParallel widens -short runs.
// Only tests import it.
package testsync

import (
	"bytes"
	"flag"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// ShortParallel, called from TestMain, lets a -short run start factor × GOMAXPROCS parallel
// tests at once instead of GOMAXPROCS: tests that wait on sockets and other processes far
// more than they compute then overlap their waits. A -parallel given on the command line
// wins, and full runs (CI) keep the default.
func ShortParallel(factor int) {
	flag.Parse()
	if !testing.Short() {
		return
	}
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", strconv.Itoa(factor*runtime.GOMAXPROCS(0)))
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers, e.g. a log sink.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Poll checks cond every interval until it holds, and fails the test if it does not
// within timeout.
func Poll(tb testing.TB, what string, timeout, interval time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}

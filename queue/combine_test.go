package queue

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCombinerRunsEachOnce: whatever many goroutines hand over at once runs, each exactly
// once, and the combiner is idle afterwards.
func TestCombinerRunsEachOnce(t *testing.T) {
	var c combiner
	const goroutines, each = 32, 500
	var runs [goroutines * each]atomic.Int32
	var done sync.WaitGroup
	done.Add(goroutines * each)
	var start sync.WaitGroup
	for g := range goroutines {
		start.Go(func() {
			for i := range each {
				c.do(func() { runs[g*each+i].Add(1); done.Done() })
			}
		})
	}
	start.Wait()
	done.Wait()
	for i := range runs {
		if n := runs[i].Load(); n != 1 {
			t.Fatalf("function %d ran %d times, want once", i, n)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy || len(c.pending) != 0 {
		t.Fatalf("busy %v with %d pending after everything ran", c.busy, len(c.pending))
	}
}

// TestCombinerRunsWhatIsHandedOverWhileBusy: while one goroutine runs a slow publish, the
// others hand theirs over and go on at once; the busy one runs them after its own.
func TestCombinerRunsWhatIsHandedOverWhileBusy(t *testing.T) {
	var c combiner
	release, first := make(chan struct{}), make(chan struct{})
	var order []int
	var mu sync.Mutex
	record := func(i int) func() {
		return func() { mu.Lock(); order = append(order, i); mu.Unlock() }
	}
	busyDone := make(chan struct{})
	go func() {
		defer close(busyDone)
		c.do(func() { close(first); <-release; record(0)() })
	}()
	<-first
	for i := 1; i <= 3; i++ {
		c.do(record(i)) // returns at once: the busy goroutine takes it
	}
	mu.Lock()
	if len(order) != 0 {
		t.Fatalf("ran %v while the combiner was busy, want them handed over", order)
	}
	mu.Unlock()
	close(release)
	<-busyDone
	if want := []int{0, 1, 2, 3}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
}

// TestCombinerHandsOnAfterItsRounds: a goroutine runs at most combineRounds batches of the
// others' publishes; what keeps coming after that runs in a goroutine of its own, so the
// first one gets back to its own work.
func TestCombinerHandsOnAfterItsRounds(t *testing.T) {
	var c combiner
	const chain = 12
	var ran atomic.Int32
	all, gate := make(chan struct{}), make(chan struct{})
	var step func(i int) func()
	step = func(i int) func() {
		return func() {
			if i > combineRounds {
				<-gate // the goroutine the rest was handed to waits until the count is read
			}
			ran.Add(1)
			if i == chain {
				close(all)
				return
			}
			// Another handler hands its publish over while this batch runs.
			handed := make(chan struct{})
			go func() { c.do(step(i + 1)); close(handed) }()
			<-handed
		}
	}
	c.do(step(0))
	if got := ran.Load(); got != combineRounds+1 {
		t.Fatalf("the first goroutine ran %d functions before returning, want its own and %d rounds", got, combineRounds)
	}
	close(gate)
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d functions ran", ran.Load(), chain+1)
	}
}

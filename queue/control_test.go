package queue

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/internal/testutil"
)

// fakeRate records what a Control asks of a limiter.
type fakeRate struct {
	mu         sync.Mutex
	rate       float64
	discovered bool
	replicas   int
	peerCuts   int
	adopted    float64
}

func (f *fakeRate) Rate() float64    { f.mu.Lock(); defer f.mu.Unlock(); return f.rate }
func (f *fakeRate) Discovered() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.discovered }
func (f *fakeRate) PeerThrottled()   { f.mu.Lock(); f.peerCuts++; f.mu.Unlock() }
func (f *fakeRate) SetReplicas(n int) {
	f.mu.Lock()
	f.replicas = n
	f.mu.Unlock()
}
func (f *fakeRate) Adopt(share float64) { f.mu.Lock(); f.adopted = share; f.mu.Unlock() }
func (f *fakeRate) get() fakeRate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeRate{rate: f.rate, discovered: f.discovered, replicas: f.replicas, peerCuts: f.peerCuts, adopted: f.adopted}
}

// pauses records the pauses a Control applies.
type pauses struct {
	mu   sync.Mutex
	last time.Time
}

func (p *pauses) pause(t time.Time) { p.mu.Lock(); p.last = t; p.mu.Unlock() }
func (p *pauses) get() time.Time    { p.mu.Lock(); defer p.mu.Unlock(); return p.last }

// replica is one Control with its fake limiter and pause recorder.
type replica struct {
	c  *Control
	r  *fakeRate
	p  *pauses
	nc *nats.Conn
}

func startReplica(t *testing.T, url, name string, r *fakeRate) replica {
	t.Helper()
	nc, _ := connect(t, url)
	p := &pauses{}
	c, err := StartControl(nc, ControlConfig{Prefix: "t", Instance: name, Interval: 50 * time.Millisecond, Rate: r, Pause: p.pause, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return replica{c: c, r: r, p: p, nc: nc}
}

// eventually polls cond until it holds or the test's deadline nears.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Poll(t, what, 10*time.Second, 5*time.Millisecond, cond)
}

func TestControlSharesPausesCutsAndReplicas(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	a := startReplica(t, srv.ClientURL(), "a", &fakeRate{rate: 90, discovered: true})
	b := startReplica(t, srv.ClientURL(), "b", &fakeRate{rate: 90, discovered: true})
	eventually(t, "two replicas counted", func() bool {
		return a.c.Replicas() == 2 && b.c.Replicas() == 2 && a.r.get().replicas == 2 && b.r.get().replicas == 2
	})

	until := time.Now().Add(2 * time.Second)
	a.c.SharePause(until)
	eventually(t, "b pauses", func() bool { return !b.p.get().IsZero() })
	if got := b.p.get(); got.Before(until.Add(-500*time.Millisecond)) || got.After(until.Add(500*time.Millisecond)) {
		t.Fatalf("b paused until %v, want about %v", got, until)
	}

	a.c.ShareCut(45)
	eventually(t, "b cuts its rate", func() bool { return b.r.get().peerCuts == 1 })
	if a.r.get().peerCuts != 0 {
		t.Fatal("a heard its own cut")
	}

	// A replica that starts during the pause learns of it, and adopts its share of the
	// rate the others discovered: 90 + 90 over three.
	c := startReplica(t, srv.ClientURL(), "c", &fakeRate{rate: 10})
	eventually(t, "c learns of the pause in force", func() bool { return c.p.get().After(time.Now()) })
	eventually(t, "c adopts", func() bool { return c.r.get().adopted > 0 })
	eventually(t, "three replicas", func() bool { return a.r.get().replicas == 3 && c.r.get().replicas == 3 })
	if got := c.r.get().adopted; got != 60 && got != 45 {
		// 45 when c adopted on hearing one replica (90/2), then scaled by 2/3 on the second.
		t.Fatalf("c adopted %v, want 60 (or 45 then scaled)", got)
	}

	// A replica that says goodbye is dropped at once; one that goes silent, after three
	// intervals.
	c.c.Close()
	eventually(t, "c's goodbye", func() bool { return a.c.Replicas() == 2 })
	b.nc.Close() // b dies without a word
	eventually(t, "b counted gone", func() bool { return a.c.Replicas() == 1 && a.r.get().replicas == 1 })
}

func TestControlFixedRateSharesPausesOnly(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	nc, _ := connect(t, srv.ClientURL())
	p := &pauses{}
	c, err := StartControl(nc, ControlConfig{Prefix: "t", Pause: p.pause})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other := startReplica(t, srv.ClientURL(), "other", &fakeRate{rate: 5})
	other.c.ShareCut(1)                                  // ignored: no adaptive rate here
	other.c.SharePause(time.Now().Add(time.Second))      // applied
	other.c.SharePause(time.Now().Add(time.Second - 10)) // not published again
	eventually(t, "pause applied", func() bool { return !p.get().IsZero() })
}

func TestStartControlNeedsPause(t *testing.T) {
	t.Parallel()
	if _, err := StartControl(nil, ControlConfig{}); err == nil {
		t.Fatal("no error without Pause")
	}
}

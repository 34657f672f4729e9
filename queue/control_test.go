package queue

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/internal/testsync"
	"github.com/reprocessor/reprocessor/ratelimit"
	"github.com/reprocessor/reprocessor/worker"
)

// fakeRate records what a Control asks of a limiter.
type fakeRate struct {
	mu         sync.Mutex
	rate       float64
	discovered bool
	replicas   int
	peerCuts   int
	adopted    float64
	leads      int            // ticks this replica led
	grows      int            // of them, heartbeats that may grow the rate
	grid       ratelimit.Grid // the last grid followed
	followed   float64        // the rate that came with it
	calls      []string       // "replicas", "adopt" and "follow" (with a rate), in order
}

func (f *fakeRate) Rate() float64    { f.mu.Lock(); defer f.mu.Unlock(); return f.rate }
func (f *fakeRate) Discovered() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.discovered }
func (f *fakeRate) PeerThrottled()   { f.mu.Lock(); f.peerCuts++; f.mu.Unlock() }
func (f *fakeRate) SetReplicas(n int) {
	f.mu.Lock()
	f.replicas = n
	f.calls = append(f.calls, "replicas")
	f.mu.Unlock()
}
func (f *fakeRate) Adopt(share float64) {
	f.mu.Lock()
	f.adopted = share
	f.calls = append(f.calls, "adopt")
	f.mu.Unlock()
}
func (f *fakeRate) Lead(of int, until time.Time, grow bool) (time.Time, float64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leads++
	if grow {
		f.grows++
	}
	return time.Now().Add(7 * time.Millisecond), f.rate, f.discovered
}
func (f *fakeRate) Follow(g ratelimit.Grid, rate float64, _ bool) {
	f.mu.Lock()
	f.grid = g
	if rate > 0 {
		f.followed = rate
		f.calls = append(f.calls, "follow")
	}
	f.mu.Unlock()
}
func (f *fakeRate) get() fakeRate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeRate{rate: f.rate, discovered: f.discovered, replicas: f.replicas, peerCuts: f.peerCuts, adopted: f.adopted,
		leads: f.leads, grows: f.grows, grid: f.grid, followed: f.followed, calls: slices.Clone(f.calls)}
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
	return startReplicaEvery(t, url, name, r, 50*time.Millisecond)
}

// startReplicaEvery starts a replica whose heartbeats come every interval.
func startReplicaEvery(t *testing.T, url, name string, r *fakeRate, interval time.Duration) replica {
	t.Helper()
	nc, _ := connect(t, url)
	p := &pauses{}
	c, err := StartControl(nc, ControlConfig{Prefix: "t", Instance: name, Interval: interval, Rate: r, Pause: p.pause, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return replica{c: c, r: r, p: p, nc: nc}
}

// eventually polls cond until it holds or the test's deadline nears.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testsync.Poll(t, what, 10*time.Second, 5*time.Millisecond, cond)
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

// The replica with the lowest id leads: its heartbeats are ticks, and the others follow
// its grid at their rank among the live ids, with its rate. A replica alone leads nothing.
func TestControlLeaderTicksAndOthersFollowItsGrid(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	solo := startReplica(t, srv.ClientURL(), "solo", &fakeRate{rate: 30, discovered: true})
	time.Sleep(200 * time.Millisecond) // four heartbeats alone
	if got := solo.r.get().leads; got != 0 {
		t.Fatalf("a replica alone led %d ticks, want 0", got)
	}
	rs := []replica{solo,
		startReplica(t, srv.ClientURL(), "b", &fakeRate{rate: 20, discovered: true}),
		startReplica(t, srv.ClientURL(), "c", &fakeRate{rate: 10, discovered: true})}
	eventually(t, "three replicas counted", func() bool {
		for _, r := range rs {
			if r.c.Replicas() != 3 {
				return false
			}
		}
		return true
	})
	slices.SortFunc(rs, func(x, y replica) int { return strings.Compare(x.c.id, y.c.id) })
	leader := rs[0]
	eventually(t, "the others follow the leader's ticks", func() bool {
		for _, r := range rs[1:] {
			if r.r.get().grid.Of != 3 {
				return false
			}
		}
		return leader.r.get().leads > 0
	})
	// A replica may lead before it hears of a lower id; once all are known, only the
	// leader leads.
	var led []int
	for _, r := range rs[1:] {
		led = append(led, r.r.get().leads)
	}
	time.Sleep(200 * time.Millisecond) // four heartbeats
	for rank, r := range rs[1:] {
		got := r.r.get()
		if got.leads != led[rank] {
			t.Errorf("replica %d of 3 led %d ticks while following", rank+1, got.leads-led[rank])
		}
		if got.grid.Rank != rank+1 || got.followed != leader.r.get().rate {
			t.Errorf("replica of rank %d followed rank %d at %v/s, want the leader's %v/s", rank+1, got.grid.Rank, got.followed, leader.r.get().rate)
		}
		if !got.grid.Until.After(got.grid.Start) {
			t.Errorf("grid %+v lapses before it starts", got.grid)
		}
	}
	if g := leader.r.get().grid; g.Of != 0 {
		t.Errorf("the leader followed a grid %+v", g)
	}
}

// The grid exists before the first heartbeat: the leader answers a replica that joins with
// a tick that does not grow the rate, so that a newcomer's first calls are on the grid and
// not on a collision course with the others'. Whichever of them has the lowest id.
func TestControlLeaderTicksAtOnceWhenAReplicaJoins(t *testing.T) {
	t.Parallel()
	const interval = 5 * time.Second // no heartbeat within the test
	srv := startServer(t, t.TempDir())
	var rs []replica
	for _, name := range []string{"a", "b", "c"} {
		rs = append(rs, startReplicaEvery(t, srv.ClientURL(), name, &fakeRate{rate: 10, discovered: true}, interval))
		eventually(t, name+" counted", func() bool {
			for _, r := range rs {
				if r.c.Replicas() != len(rs) {
					return false
				}
			}
			return true
		})
		time.Sleep(interval / 10) // past the bound on answers
	}
	slices.SortFunc(rs, func(x, y replica) int { return strings.Compare(x.c.id, y.c.id) })
	eventually(t, "the others on the leader's grid of three", func() bool {
		for _, r := range rs[1:] {
			if g := r.r.get().grid; g.Of != 3 {
				return false
			}
		}
		return true
	})
	got := rs[0].r.get()
	if got.leads == 0 || got.grows != 0 {
		t.Errorf("the leader led %d ticks, %d of them growing the rate; want some, none growing before a heartbeat", got.leads, got.grows)
	}
	for rank, r := range rs[1:] {
		if g := r.r.get().grid; g.Rank != rank+1 {
			t.Errorf("replica of rank %d on the grid at rank %d", rank+1, g.Rank)
		}
	}
}

// TestControlNewcomerEndsOnTheLeadersRate: a replica that first hears of the leader by its
// tick counts it (SetReplicas, which scales the rate by old/new, and Adopt) before it takes
// the tick's rate, which is already the leader's share of the new count: the tick's rate
// has the last word, not a scaled copy of it.
func TestControlNewcomerEndsOnTheLeadersRate(t *testing.T) {
	t.Parallel()
	const interval = 5 * time.Second // the leader's answer to the hello is the only tick
	srv := startServer(t, t.TempDir())
	var leader replica
	for {
		// A leader in the lower half of the ids, so that each newcomer below ranks after
		// it at least half the time (ids are random). Alone, it is closed at once; the
		// flush has the server take its hello and bye before anyone else listens.
		leader = startReplicaEvery(t, srv.ClientURL(), "a", &fakeRate{rate: 40, discovered: true}, interval)
		if leader.c.id < "8" {
			break
		}
		leader.c.Close()
		if err := leader.nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	var newcomer replica
	for {
		// The newcomer must rank after the leader, so that the first it hears of the
		// leader is a tick (ids are random): start another until one does.
		newcomer = startReplicaEvery(t, srv.ClientURL(), "b", &fakeRate{rate: 10, discovered: true}, interval)
		if newcomer.c.id > leader.c.id {
			break
		}
		newcomer.c.Close()
		eventually(t, "the discarded replica gone", func() bool { return leader.c.Replicas() == 1 })
		time.Sleep(interval / 10) // past the bound on answers, so that the next hello is answered
	}
	eventually(t, "the newcomer on the leader's grid", func() bool { return newcomer.r.get().grid.Of == 2 })
	calls := newcomer.r.get().calls
	last := slices.Index(calls, "follow")
	for i, c := range calls {
		if c != "follow" && i > last {
			t.Fatalf("the newcomer's limiter was asked %v: %q after the first tick's rate", calls, c)
		}
	}
	if leader.r.get().grows != 0 {
		t.Error("the leader grew its rate in its answer to a hello")
	}
}

// Once a replica has said goodbye, nothing it still answers goes out: a beat after the bye
// would have the others count it again until it fell silent, each of them on a smaller
// share of the rate meanwhile.
func TestControlNoBeatAfterBye(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	nc, _ := connect(t, srv.ClientURL())
	heard := make(chan controlMsg, 16)
	sub, err := nc.Subscribe("t.control.replicas", func(m *nats.Msg) {
		if cm, _ := parseControl(m.Data); cm != nil {
			heard <- *cm
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	b := startReplicaEvery(t, srv.ClientURL(), "b", &fakeRate{rate: 10, discovered: true}, time.Hour)
	high := "ffffffffffffffff" // a newcomer ranking after b, so that b answers as the leader
	if b.c.id == high {
		t.Skip("b drew the highest id")
	}
	b.c.Close()
	next := func() (controlMsg, bool) {
		select {
		case m := <-heard:
			return m, true
		case <-time.After(time.Second):
			return controlMsg{}, false
		}
	}
	for {
		m, ok := next()
		if !ok {
			t.Fatal("no bye from the closed replica")
		}
		if m.Kind == "bye" {
			break
		}
	}
	// The handler may still be answering when Close runs: a hello arriving then.
	b.c.receive(&nats.Msg{Subject: "t.control.replicas", Data: []byte(`{"kind":"hello","id":"` + high + `","instance":"c"}`)})
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, ok := next(); ok {
		t.Fatalf("the closed replica published %+v after its bye", m)
	}
}

// A tick is obeyed only from the leader; a tick that says the leader's next call is beyond
// the bound, or a tick on another kind of message, is not.
func TestControlTickBounds(t *testing.T) {
	t.Parallel()
	if m, _ := parseControl([]byte(`{"kind":"beat","id":"0000000000000001","tick":true,"slotInUs":10000000000}`)); m != nil {
		t.Errorf("a tick 10,000 s ahead parsed: %+v", m)
	}
	if m, _ := parseControl([]byte(`{"kind":"beat","id":"0000000000000001","tick":true,"slotInUs":-1}`)); m != nil {
		t.Errorf("a tick in the past parsed: %+v", m)
	}
	if m, _ := parseControl([]byte(`{"kind":"cut","id":"0000000000000001","tick":true}`)); m == nil || m.Tick {
		t.Errorf("a cut kept its tick: %+v", m)
	}
	srv := startServer(t, t.TempDir())
	a := startReplica(t, srv.ClientURL(), "a", &fakeRate{rate: 30, discovered: true})
	nc, _ := connect(t, srv.ClientURL())
	// A replica whose id is above a's is not the leader: its ticks are not followed.
	high := "ffffffffffffffff"
	if a.c.id == high {
		t.Skip("a drew the highest id")
	}
	for range 5 {
		if err := nc.Publish("t.control.replicas", []byte(`{"kind":"beat","id":"`+high+`","tick":true,"rate":5000,"slotInUs":1000}`)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(60 * time.Millisecond)
	}
	eventually(t, "a counts the peer", func() bool { return a.c.Replicas() == 2 })
	if g := a.r.get().grid; g.Of != 0 {
		t.Fatalf("a followed the ticks of a replica that is not the leader: %+v", g)
	}
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

// TestControlPauseIsCappedAndAttributed: a pause of ten years published by anyone on the
// control subject pauses for the cap (an hour), as a heartbeat carrying it does, and the
// log names the replica it came from.
func TestControlPauseIsCappedAndAttributed(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	nc, _ := connect(t, srv.ClientURL())
	logs := &testsync.SyncBuffer{}
	p := &pauses{}
	c, err := StartControl(nc, ControlConfig{Prefix: "t", Pause: p.pause, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	attacker, _ := connect(t, srv.ClientURL())
	tenYears := int64(10 * 365 * 24 * time.Hour / time.Millisecond)
	for _, kind := range []string{"pause", "beat"} {
		msg := fmt.Sprintf(`{"kind":%q,"id":"0123456789abcdef","instance":"evil-pod","pauseMs":%d}`, kind, tenYears)
		if err := attacker.Publish("t.control.throttle", []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the pause applied", func() bool { return !p.get().IsZero() })
	if d := time.Until(p.get()); d > worker.MaxPause || d < worker.MaxPause-time.Minute {
		t.Fatalf("paused for %s, want the cap of %s", d, worker.MaxPause)
	}
	eventually(t, "the log names the replica", func() bool {
		return strings.Contains(logs.String(), "replica=evil-pod") && strings.Contains(logs.String(), "longer than the cap")
	})
}

// TestParseControl: what does not parse, or says what no replica would, is not obeyed.
func TestParseControl(t *testing.T) {
	t.Parallel()
	const id = `"id":"0123456789abcdef"`
	for _, tc := range []struct {
		name, data string
		ok, capped bool
	}{
		{"pause", `{"kind":"pause",` + id + `,"pauseMs":1500}`, true, false},
		{"beat", `{"kind":"beat",` + id + `,"rate":12.5,"discovered":true}`, true, false},
		{"capped", `{"kind":"pause",` + id + `,"pauseMs":99999999999}`, true, true},
		{"unknown kind", `{"kind":"reboot",` + id + `}`, false, false},
		{"no id", `{"kind":"pause","pauseMs":5}`, false, false},
		{"odd id", `{"kind":"pause","id":"../../x","pauseMs":5}`, false, false},
		{"negative pause", `{"kind":"pause",` + id + `,"pauseMs":-5}`, false, false},
		{"negative rate", `{"kind":"beat",` + id + `,"rate":-1}`, false, false},
		{"huge rate", `{"kind":"beat",` + id + `,"rate":1e300}`, false, false},
		{"not json", `pause`, false, false},
		{"too long", `{"kind":"beat",` + id + `,"instance":"` + strings.Repeat("x", 2000) + `"}`, false, false},
	} {
		m, capped := parseControl([]byte(tc.data))
		if (m != nil) != tc.ok || capped != tc.capped {
			t.Errorf("%s: parsed %v capped %v, want %v %v", tc.name, m != nil, capped, tc.ok, tc.capped)
		}
		if m != nil && m.PauseMS > maxPauseMS {
			t.Errorf("%s: pause of %d ms kept", tc.name, m.PauseMS)
		}
	}
}

// TestControlPeersAreBounded: a flood of made-up replicas is counted up to a bound.
func TestControlPeersAreBounded(t *testing.T) {
	t.Parallel()
	c, attacker := controlUnderAttack(t)
	for i := range 2 * maxPeers {
		msg := fmt.Sprintf(`{"kind":"beat","id":"%016x"}`, i+1)
		if err := attacker.Publish("t.control.replicas", []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the replicas counted", func() bool { return c.Replicas() == 1+maxPeers })
}

// TestControlHelloFloodIsNotEchoed: a flood of hellos is answered at most once a tenth of
// an interval, not once each.
func TestControlHelloFloodIsNotEchoed(t *testing.T) {
	t.Parallel()
	c, attacker := controlUnderAttack(t)
	beats, err := attacker.SubscribeSync("t.control.replicas")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if err := attacker.Publish("t.control.replicas", fmt.Appendf(nil, `{"kind":"hello","id":"%016x"}`, i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the hellos heard", func() bool { return c.Replicas() > 1 })
	answers := 0
	for {
		m, err := beats.NextMsg(200 * time.Millisecond)
		if err != nil {
			break
		}
		if strings.Contains(string(m.Data), `"kind":"beat"`) {
			answers++
		}
	}
	if answers > 5 {
		t.Fatalf("%d answers to 500 hellos", answers)
	}
}

// controlUnderAttack starts a lone replica's Control (heartbeats an hour apart, so that
// only what is sent to it makes it speak) and a connection that sends it what it likes.
func controlUnderAttack(t *testing.T) (*Control, *nats.Conn) {
	t.Helper()
	srv := startServer(t, t.TempDir())
	nc, _ := connect(t, srv.ClientURL())
	c, err := StartControl(nc, ControlConfig{Prefix: "t", Pause: func(time.Time) {}, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	attacker, _ := connect(t, srv.ClientURL())
	return c, attacker
}

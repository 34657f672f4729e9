package cli

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/queue"
)

// startCluster runs n nats-servers with JetStream in this process, routed to each other on
// loopback, and waits until JetStream has a meta leader.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	routes := make([]*url.URL, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		routes[i] = &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])}
	}
	servers := make([]*server.Server, n)
	for i := range n {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    server.ClusterOpts{Name: "reprocessor-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
			NoSigs:     true,
			NoLog:      true,
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		servers[i] = s
	}
	for _, s := range servers {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatalf("%s not ready", s.Name())
		}
	}
	waitUntil(t, "a JetStream meta leader", 30*time.Second, func() bool {
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return servers
}

// TestClusterFailover runs three worker replicas against a three-node JetStream cluster with
// R3 streams, stops the node leading the requests stream and kills one replica in the
// middle of 5,000 ids, and checks that every id still ends with exactly one terminal event
// and that Graph was called at most once per id plus the requests in flight at the kill.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-node cluster and three child processes: not in -short")
	}
	const n = 5000
	servers := startCluster(t, 3)
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.ClientURL())
	}
	natsURL := strings.Join(urls, ",")
	sys := newSystemOn(t, graphtest.Options{LatencyMin: 10 * time.Millisecond, LatencyMax: 30 * time.Millisecond, MaxRecordedCalls: 3 * n},
		natsURL, nats.ReconnectWait(100*time.Millisecond))
	gt, js := sys.gt, sys.js
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ackWait = "10s"
	// A request the cluster drops (its meta leader moving under a loaded machine) would hold
	// a single Setup for the whole 3 minutes: retry it, as "reprocessor run" does, with a
	// deadline per attempt. Setup is idempotent.
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := queue.Setup(actx, js, queue.Config{Replicas: 3, AckWait: 10 * time.Second}, nil)
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("set up the streams (attempt %d): %v", attempt, err)
		}
		t.Logf("set up the streams (attempt %d): %v; trying again", attempt, err)
		time.Sleep(time.Second)
	}
	all := payloads(ids(n, 0xc1))
	for i := 0; i < n; i += 500 { // R3 acks are slow under -race: keep few outstanding
		sys.publish(all[i:min(i+500, n)]...)
	}

	replica := func(name string) *child {
		return sys.startChild(t, name, env{
			"REPROCESSOR_INSTANCE":        name,
			"REPROCESSOR_STREAM_REPLICAS": "3",
			"REPROCESSOR_ACK_WAIT":        ackWait,
			"REPROCESSOR_CONCURRENCY":     "8",
			"REPROCESSOR_HTTP_ADDR":       "off",
			"REPROCESSOR_LOG_LEVEL":       "info",
		})
	}
	r1, r2, r3 := replica("r1"), replica("r2"), replica("r3")
	for _, r := range []*child{r1, r2, r3} {
		r.waitRunning()
	}

	waitUntil(t, "a third of the ids called", 60*time.Second, func() bool { return gt.CallCount(graphtest.OpReprocess) >= n/3 })
	stream, err := js.Stream(ctx, "REPROCESS_REQUESTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("requests stream leader: %v %+v", err, info)
	}
	cons, err := js.Consumer(ctx, "REPROCESS_REQUESTS", "reprocessor")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// In flight: delivered and not acknowledged, on every replica. A bound on the requests
	// that may be called twice: those whose acks the stopped node or the killed replica lost.
	inFlight := ci.NumAckPending
	r2.kill()
	for _, s := range servers {
		if s.Name() == info.Cluster.Leader {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
	t.Logf("stopped node %s (requests stream leader) and killed replica r2 after %d calls, %d in flight", info.Cluster.Leader, gt.CallCount(graphtest.OpReprocess), inFlight)

	// While the cluster elects new leaders the events stream may not answer for a while:
	// that is no failure, as long as every id ends in time. A read can also fail on its own
	// (a consumer created as a leader moves delivers nothing), so each wait below takes
	// only a read that worked.
	var per map[string]int
	var total int
	terminal := func() bool {
		evs, err := sys.tryReadEvents()
		if err != nil {
			t.Logf("reading the events: %v; trying again", err)
			return false
		}
		per, total = map[string]int{}, 0
		for _, e := range evs {
			switch e.Kind() {
			case "accepted", "failed", "rejected", "coalesced":
				per[e.Subject]++
				total++
			}
		}
		return true
	}
	// Events are never removed, so a read that lacks some ids was cut short, or came early.
	complete := func() bool { return terminal() && len(per) == n }
	waitUntil(t, "a terminal event for every id", 90*time.Second, complete)
	// Read once more, so that events stored after the first full read count too.
	waitUntil(t, "the events read again", 60*time.Second, complete)
	calls := gt.CallCount(graphtest.OpReprocess)
	t.Logf("%d ids, %d terminal events, %d Graph calls, %d in flight at the kill", n, total, calls, inFlight)
	if calls > n+inFlight {
		t.Errorf("%d Graph calls for %d ids with %d in flight at the kill", calls, n, inFlight)
	}
	if total > n+inFlight {
		t.Errorf("%d terminal events for %d ids with %d in flight at the kill", total, n, inFlight)
	}
	r1.terminate(30 * time.Second)
	r3.terminate(30 * time.Second)
}

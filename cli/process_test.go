package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/worker"
)

// Tests here run the worker as a real process (the test binary re-executed as the
// reprocessor binary, see TestMain) or run the NATS server as a process would see it, and
// do to them what operations do: kill -9, SIGTERM, a NATS restart, a wrong secret. They
// check from the outside that no request is lost, none is settled twice and no secret
// leaks.

// TestCrashSafety kills a worker with SIGKILL in the middle of 2,000 requests and starts
// another: every request must still end in exactly one terminal event, and the queue must
// end empty. The killed worker's unacknowledged messages come back after the ack wait.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	const n = 2000
	sys := newSystem(t, graphtest.Options{LatencyMin: time.Millisecond, LatencyMax: 5 * time.Millisecond})
	overrides := env{
		"REPROCESSOR_CONCURRENCY": "32",
		"REPROCESSOR_ACK_WAIT":    "2s",
		"REPROCESSOR_LOG_LEVEL":   "info",
	}
	first := sys.startChild(t, "first worker", overrides)
	first.waitRunning()
	want := ids(n, 101)
	sys.publish(payloads(want)...)

	sys.waitFor("a third of the events", 60*time.Second, func() bool { return sys.streamCount("REPROCESS_EVENTS") >= n/3 })
	first.kill()
	atKill := sys.streamCount("REPROCESS_EVENTS")
	_, ackPending := sys.pending()
	t.Logf("killed the first worker with %d of %d events published and %d messages unacknowledged", atKill, n, ackPending)
	if atKill >= n {
		t.Fatalf("the first worker finished all %d requests before it was killed: the test proves nothing", n)
	}

	second := sys.startChild(t, "second worker", overrides)
	second.waitRunning()
	terminal := sys.waitTerminal(want, 90*time.Second)
	for id, evs := range terminal {
		if k := evs[0].Kind(); k != worker.KindAccepted && k != worker.KindCoalesced {
			t.Errorf("%s ended %s: %+v", id, k, evs[0].Data)
		}
	}
	sys.waitFor("nothing pending", 30*time.Second, func() bool { p, ap := sys.pending(); return p == 0 && ap == 0 })
	if dl := sys.streamMessages("REPROCESS_DLQ"); len(dl) != 0 {
		t.Errorf("%d dead letters", len(dl))
	}
	calls := sys.gt.CallCount(graphtest.OpReprocess)
	if calls < n {
		t.Errorf("Graph saw %d reprocess calls for %d ids", calls, n)
	}
	t.Logf("Graph saw %d reprocess calls: %d repeated after the crash", calls, calls-n)
	if code := second.terminate(60 * time.Second); code != 0 {
		t.Errorf("second worker exited with code %d after SIGTERM", code)
	}
}

// TestNATSRestart stops the NATS server in the middle of 500 requests and starts it again
// on the same port and store a second later: the worker reconnects by itself and every
// request still ends in exactly one terminal event.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	const n = 500
	port, dir := freePort(t), t.TempDir()
	start := func() *queue.Embedded {
		t.Helper()
		var ns *queue.Embedded
		// The port was free a moment ago; another test may grab it between two starts.
		waitUntil(t, "the NATS server to start on port "+strconv.Itoa(port), 10*time.Second, func() bool {
			var err error
			ns, err = queue.StartEmbedded(queue.EmbeddedConfig{Port: port, DataDir: dir})
			if err != nil {
				t.Logf("start NATS: %v", err)
			}
			return err == nil
		})
		return ns
	}
	ns := start()
	t.Cleanup(func() { ns.Shutdown() }) // whichever server runs at the end
	sys := newSystemOn(t, graphtest.Options{LatencyMin: 5 * time.Millisecond}, ns.ClientURL())
	w := sys.startWorker(env{"REPROCESSOR_CONCURRENCY": "16", "REPROCESSOR_ACK_WAIT": "2s"})
	want := ids(n, 102)
	sys.publish(payloads(want)...)

	sys.waitFor("100 events", 60*time.Second, func() bool { return sys.streamCount("REPROCESS_EVENTS") >= 100 })
	atStop := sys.streamCount("REPROCESS_EVENTS")
	ns.Shutdown()
	t.Logf("NATS server stopped with %d of %d events published", atStop, n)
	if atStop >= n {
		t.Fatalf("all %d requests were done before the NATS server stopped: the test proves nothing", n)
	}
	time.Sleep(time.Second) // the outage itself: nothing to wait for
	ns = start()
	t.Log("NATS server started again")

	terminal := sys.waitTerminal(want, 90*time.Second)
	for id, evs := range terminal {
		if k := evs[0].Kind(); k != worker.KindAccepted {
			t.Errorf("%s ended %s: %+v", id, k, evs[0].Data)
		}
	}
	sys.waitFor("nothing pending", 30*time.Second, func() bool { p, ap := sys.pending(); return p == 0 && ap == 0 })
	if dl := sys.streamMessages("REPROCESS_DLQ"); len(dl) != 0 {
		t.Errorf("%d dead letters", len(dl))
	}
	if !strings.Contains(w.logs.String(), "nats reconnected") {
		t.Error("the worker never logged a reconnection: was the server really restarted under it?")
	}
	sys.waitFor("/readyz to answer 200", 20*time.Second, func() bool { code, _ := w.get("/readyz"); return code == 200 })
}

// TestSIGTERMFinishesInFlight sends SIGTERM while 50 Graph calls of 2 s are in flight: the
// worker stops fetching, lets every call finish, publishes its event, acknowledges it, and
// exits 0.
func TestSIGTERMFinishesInFlight(t *testing.T) {
	t.Parallel()
	const n = 50
	sys := newSystem(t, graphtest.Options{LatencyMin: 2 * time.Second})
	// A rate far above what is used (50 calls fit its burst of 100) makes every call pass
	// the limiter, which the metrics count: with REPROCESSOR_RATE=0 nothing observable
	// separates "handler started" from "request sent", and a handler that has not sent its
	// request yet at SIGTERM rightly hands its message back instead.
	c := sys.startChild(t, "worker", env{"REPROCESSOR_CONCURRENCY": "50", "REPROCESSOR_RATE": "1000", "REPROCESSOR_LOG_LEVEL": "info"})
	c.waitRunning()
	sys.publish(payloads(ids(n, 103))...)
	sys.waitFor("50 Graph calls in flight", 20*time.Second, func() bool {
		_, body := c.get("/metrics")
		return metricValue(body, "reprocessor_in_flight") == n &&
			metricValue(body, "reprocessor_rate_limit_wait_seconds_count") == n
	})
	if answered := sys.gt.CallCount(graphtest.OpReprocess); answered == n {
		t.Fatalf("all %d calls were answered before SIGTERM: the test proves nothing", n)
	} else if answered > 0 {
		t.Logf("%d calls were answered before SIGTERM (a slow machine): %d were in flight", answered, n-answered)
	}
	if code := c.terminate(60 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	evs := sys.readEvents()
	if k := kinds(evs); k[worker.KindAccepted] != n || len(evs) != n {
		t.Fatalf("events after SIGTERM: %v, want %d accepted", k, n)
	}
	if got := sys.gt.CallCount(graphtest.OpReprocess); got != n {
		t.Errorf("%d reprocess calls, want %d", got, n)
	}
	if p, ap := sys.pending(); p != 0 || ap != 0 {
		t.Errorf("pending %d, ack pending %d after a graceful stop", p, ap)
	}
	if dl := sys.streamMessages("REPROCESS_DLQ"); len(dl) != 0 {
		t.Errorf("%d dead letters", len(dl))
	}
	if !strings.Contains(c.logs.String(), "in_flight=50") {
		t.Error(`the log does not say "waiting for in-flight work" with in_flight=50`)
	}
}

// TestRunSetsTheGarbageCollector: reprocessor run sets GOGC to its default where the
// environment does not, keeps what the environment sets, and says so in its log and
// metrics.
func TestRunSetsTheGarbageCollector(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, graphtest.Options{})
	for _, tc := range []struct {
		name      string
		env       env
		gogc      float64
		memLimit  float64 // go_gc_gomemlimit_bytes; 0: any (the machine's container may have a limit)
		logFields string
	}{
		{name: "defaults", env: env{}, gogc: 400, logFields: "gogc=400 gogc_from=default"},
		{name: "GOGC and GOMEMLIMIT set", env: env{"GOGC": "150", "GOMEMLIMIT": "300MiB"}, gogc: 150, memLimit: 300 << 20,
			logFields: "gogc=150 gogc_from=GOGC memory_limit_bytes=314572800 memory_limit_from=GOMEMLIMIT"},
	} {
		c := sys.startChild(t, tc.name, env{"REPROCESSOR_LOG_LEVEL": "info"}.with(tc.env))
		c.waitRunning()
		_, body := c.get("/metrics")
		if got := metricValue(body, "go_gc_gogc_percent"); got != tc.gogc {
			t.Errorf("%s: go_gc_gogc_percent %g, want %g", tc.name, got, tc.gogc)
		}
		if got := metricValue(body, "go_gc_gomemlimit_bytes"); tc.memLimit != 0 && got != tc.memLimit {
			t.Errorf("%s: go_gc_gomemlimit_bytes %g, want %g", tc.name, got, tc.memLimit)
		}
		if logs := c.logs.String(); !strings.Contains(logs, "garbage collector") || !strings.Contains(logs, tc.logFields) {
			t.Errorf("%s: the log does not say %q:\n%s", tc.name, tc.logFields, excerpt(logs, "garbage collector"))
		}
		c.terminate(30 * time.Second)
	}
}

// TestWrongClientSecret runs a worker whose client secret the authority refuses: it stays
// up, says why on /readyz and in its log, retries the token with backoff, calls Graph for
// nothing and leaves every message queued; a worker with the right secret then does them
// all.
func TestWrongClientSecret(t *testing.T) {
	t.Parallel()
	const n = 20
	sys := newSystem(t, graphtest.Options{})
	bad := sys.startChild(t, "wrong secret", env{"AZURE_CLIENT_SECRET": "wrong~" + randomHex(t, 16), "REPROCESSOR_LOG_LEVEL": "info"})
	bad.waitRunning()
	want := ids(n, 104)
	sys.publish(payloads(want)...)

	sys.waitFor("a second token request", 20*time.Second, func() bool { return sys.gt.CallCount(graphtest.OpToken) >= 2 })
	sys.waitFor("/readyz to name the token", 20*time.Second, func() bool {
		code, body := bad.get("/readyz")
		return code == 503 && strings.Contains(body, "graph_token: ") && strings.Contains(body, "AADSTS7000215")
	})
	if !strings.Contains(bad.logs.String(), "AADSTS7000215") {
		t.Error("the log does not carry the authority's reason AADSTS7000215")
	}
	var first time.Time
	for _, c := range sys.gt.Calls() {
		if c.Operation == graphtest.OpToken {
			first = c.Time
			break
		}
	}
	const window = 3 * time.Second
	sys.waitFor("the observation window", 2*window, func() bool { return time.Since(first) > window })
	tokenCalls := 0
	for _, c := range sys.gt.Calls() {
		if c.Operation == graphtest.OpToken && c.Time.Before(first.Add(window)) {
			tokenCalls++
			if c.Status != 401 {
				t.Errorf("token call answered %d, want 401", c.Status)
			}
		}
	}
	if tokenCalls < 2 || tokenCalls >= 10 {
		t.Errorf("%d token requests in %s: want a few, retried with backoff", tokenCalls, window)
	}
	if got := sys.gt.CallCount(graphtest.OpReprocess); got != 0 {
		t.Errorf("%d reprocess calls without a token", got)
	}
	if code, _ := bad.get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d: the worker should stay up", code)
	}
	if p, ap := sys.pending(); p+ap != n {
		t.Errorf("pending %d + ack pending %d, want %d messages kept", p, ap, n)
	}
	if got := sys.streamCount("REPROCESS_EVENTS"); got != 0 {
		t.Errorf("%d events while no token could be had", got)
	}
	if got := sys.streamCount("REPROCESS_DLQ"); got != 0 {
		t.Errorf("%d dead letters while no token could be had", got)
	}
	if code := bad.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	good := sys.startChild(t, "right secret", env{"REPROCESSOR_LOG_LEVEL": "info"})
	good.waitRunning()
	evs := sys.events(n)
	if k := kinds(evs); k[worker.KindAccepted] != n || len(evs) != n {
		t.Fatalf("events with the right secret: %v, want %d accepted", k, n)
	}
	sys.waitFor("nothing pending", 10*time.Second, func() bool { p, ap := sys.pending(); return p == 0 && ap == 0 })
}

// TestSecretsNeverLeak runs a worker at debug level with canary secrets (the Graph client
// secret and the NATS password) through token failures, 401s, failed and rejected
// requests and a NATS authorization failure, and looks for the canaries everywhere the
// worker writes: its log, events, dead letters, metrics and health answers.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	azureCanary := "AzCanary" + randomHex(t, 12)
	natsCanary := "NatsCanary" + randomHex(t, 12)

	srv := startJetStreamServer(t, &server.Options{Username: "app", Password: natsCanary})
	// The canary is the right secret: the authority refuses it while FailTokens is on, then
	// accepts it, so that it travels in every token request and the worker gets to work.
	sys := newSystemOn(t, graphtest.Options{ClientSecret: azureCanary}, srv.ClientURL(), nats.UserInfo("app", natsCanary))
	sys.env["NATS_USER"], sys.env["NATS_PASSWORD"] = "app", natsCanary
	sys.gt.FailTokens(true)

	var bodies []string // every HTTP answer
	fetchAll := func(c *child) {
		for _, path := range []string{"/metrics", "/readyz", "/healthz"} {
			_, body := c.get(path)
			bodies = append(bodies, body)
		}
	}

	c := sys.startChild(t, "worker", env{"REPROCESSOR_LOG_LEVEL": "debug"})
	c.waitRunning()
	good := ids(10, 105)
	sys.gt.SetAnswer(good[0], 404)
	sys.gt.SetAnswer(good[1], 400)
	sys.gt.SetAnswer(good[2], 403)
	payloadsIn := append(payloads(good),
		[]byte("not-a-guid"),
		[]byte(`{"id": "`+good[3]+`", "correlationId": "c-1", "requestedBy": "tester", "reason": "leak test"}`),
		[]byte(`{"id": 7}`),
		[]byte("../users"),
	)
	sys.publish(payloadsIn...)
	sys.waitFor("three refused token requests", 20*time.Second, func() bool { return sys.gt.CallCount(graphtest.OpToken) >= 3 })
	sys.waitFor("/readyz to report the token failure", 10*time.Second, func() bool {
		code, body := c.get("/readyz")
		bodies = append(bodies, body)
		return code == 503 && strings.Contains(body, "AADSTS7000215")
	})
	fetchAll(c)

	sys.gt.FailTokens(false)
	sys.events(len(payloadsIn))
	// Tokens revoked: the next calls meet 401, and the worker fetches a new token with the
	// secret again.
	sys.gt.RevokeTokens()
	more := ids(5, 106)
	sys.publish(payloads(more)...)
	sys.events(len(payloadsIn) + len(more))
	fetchAll(c)
	if code := c.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}

	// A worker with a wrong NATS password that contains the canary: refused by the server.
	refused := sys.startChild(t, "wrong NATS password", env{"NATS_PASSWORD": natsCanary + "x", "REPROCESSOR_LOG_LEVEL": "debug"})
	waitUntil(t, "the NATS authorization failure in the log", 20*time.Second, func() bool {
		return strings.Contains(strings.ToLower(refused.logs.String()), "authorization")
	})
	refused.kill()

	logs := c.logs.String()
	for _, want := range []string{"level=DEBUG", "AADSTS7000215", "level=WARN"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q: is it really logging what it should?", want)
		}
	}
	places := map[string]string{
		"worker log":                logs,
		"log of the refused worker": refused.logs.String(),
		"HTTP answers":              strings.Join(bodies, "\n"),
	}
	for i, m := range sys.streamMessages("REPROCESS_EVENTS") {
		places[fmt.Sprintf("event %d", i)] = string(m.Data()) + fmt.Sprint(m.Headers())
	}
	dl := sys.streamMessages("REPROCESS_DLQ")
	if len(dl) < 5 {
		t.Errorf("%d dead letters, want at least 5 (404, 400, 403 and bad messages)", len(dl))
	}
	for i, m := range dl {
		places[fmt.Sprintf("dead letter %d", i)] = string(m.Data()) + fmt.Sprint(m.Headers())
	}
	for where, text := range places {
		for name, canary := range map[string]string{"AZURE_CLIENT_SECRET": azureCanary, "NATS_PASSWORD": natsCanary} {
			if strings.Contains(text, canary) {
				t.Errorf("%s leaks %s:\n%s", where, name, excerpt(text, canary))
			}
		}
	}
}

// child is a worker running as its own process: the test binary run as the reprocessor
// binary (see TestMain).
type child struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	logs   *syncBuffer // stdout and stderr
	exited chan struct{}
	http   string // the HTTP listener, once waitRunning has seen it
}

// startChild starts "reprocessor run" as a process with sys's environment changed by
// overrides, trusting the simulated Graph through SSL_CERT_FILE. It is killed, if still
// running, when the test ends; its output is logged if the test failed.
func (s *system) startChild(t *testing.T, name string, overrides env) *child {
	t.Helper()
	if testing.Short() {
		t.Skip("runs worker processes: CI runs it, -short does not")
	}
	caFile, err := s.gt.WriteCAFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var environ []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "NATS_") && !strings.HasPrefix(k, "AZURE_") && !strings.HasPrefix(k, "REPROCESSOR_") && !strings.HasPrefix(k, "SSL_CERT_") && k != "GOGC" && k != "GOMEMLIMIT" {
			environ = append(environ, kv)
		}
	}
	e := env{}
	for k, v := range s.env {
		e[k] = v
	}
	for k, v := range s.gt.Env(caFile) {
		if k != "AZURE_CLIENT_SECRET" { // s.env may hold another one on purpose
			e[k] = v
		}
	}
	for k, v := range overrides {
		e[k] = v
	}
	e[childEnv] = "1"
	for k, v := range e {
		environ = append(environ, k+"="+v)
	}
	c := &child{t: t, name: name, logs: &syncBuffer{}, exited: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "run")
	c.cmd.Env = environ
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = c.cmd.Wait() // the exit status is read from ProcessState
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.kill()
		out := c.logs.String()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("%s: the race detector fired in the child process", name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, tail(out, 150))
		}
	})
	return c
}

var workerRunningLine = regexp.MustCompile(`msg="worker running".* http=(\S+)`)

// waitRunning waits for the child's "worker running" log line and returns its HTTP address.
func (c *child) waitRunning() string {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := workerRunningLine.FindStringSubmatch(c.logs.String()); m != nil {
			c.http = m[1]
			return c.http
		}
		select {
		case <-c.exited:
			c.t.Fatalf("%s exited with %v before running:\n%s", c.name, c.cmd.ProcessState, tail(c.logs.String(), 50))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s not running after 30s:\n%s", c.name, tail(c.logs.String(), 50))
		}
	}
}

// get fetches a path from the child's HTTP listener.
func (c *child) get(path string) (int, string) {
	c.t.Helper()
	if c.http == "" {
		c.t.Fatalf("%s: no HTTP address yet (waitRunning first)", c.name)
	}
	return httpGet(c.t, "http://"+c.http+path)
}

// kill sends SIGKILL, unless the child has exited, and waits for it to be gone.
func (c *child) kill() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// terminate sends SIGTERM and returns the exit code once the child has exited.
func (c *child) terminate(timeout time.Duration) int {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		c.t.Fatalf("SIGTERM %s: %v", c.name, err)
	}
	select {
	case <-c.exited:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		c.t.Fatalf("%s still running %s after SIGTERM", c.name, timeout)
		return -1
	}
}

// newSystemOn is a system whose NATS server, at natsURL, the test runs itself (to restart
// it, or to give it users). The test's own client reconnects forever; natsOpts add to its
// options.

// streamCount returns how many messages a stream holds; 0 while the stream cannot be
// asked (it does not exist yet, or NATS is down).
func (s *system) streamCount(stream string) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		return 0
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

// waitTerminal waits until every id has a terminal event and returns them by id. It fails
// the test if an event id is stored twice, if a request (a stream sequence) has more than
// one terminal event, or if an id has more than one (each id is published once).
func (s *system) waitTerminal(want []string, timeout time.Duration) map[string][]worker.Event {
	s.t.Helper()
	var byID map[string][]worker.Event
	missing := len(want)
	s.waitFor(fmt.Sprintf("terminal events for %d ids", len(want)), timeout, func() bool {
		if s.streamCount("REPROCESS_EVENTS") < uint64(len(want)) {
			return false
		}
		byID = terminalByID(s.readEvents())
		missing = 0
		for _, id := range want {
			if len(byID[id]) == 0 {
				missing++
			}
		}
		return missing == 0
	})
	evs := s.readEvents()
	seenID := map[string]int{}
	perRequest := map[string][]string{}
	for _, e := range evs {
		seenID[e.ID]++
		ref, terminal, ok := parseEventID(e.ID)
		if !ok {
			s.t.Errorf("event id %q is not <stream>-<seq>-<stored>-outcome or ...-state_changed-<n>", e.ID)
			continue
		}
		if terminal != isTerminal(e.Kind()) {
			s.t.Errorf("event id %q on an event of kind %s", e.ID, e.Kind())
		}
		if terminal {
			perRequest[ref] = append(perRequest[ref], e.ID)
		}
	}
	for id, n := range seenID {
		if n > 1 {
			s.t.Errorf("event %s stored %d times", id, n)
		}
	}
	for ref, evIDs := range perRequest {
		if len(evIDs) > 1 {
			s.t.Errorf("request %s has %d terminal events: %v", ref, len(evIDs), evIDs)
		}
	}
	byID = terminalByID(evs)
	for _, id := range want {
		if n := len(byID[id]); n != 1 {
			s.t.Errorf("%s has %d terminal events, want 1", id, n)
		}
	}
	if len(byID) != len(want) {
		s.t.Errorf("terminal events for %d ids, want %d", len(byID), len(want))
	}
	return byID
}

func isTerminal(kind string) bool {
	for _, k := range worker.Outcomes {
		if k == kind {
			return true
		}
	}
	return false
}

// terminalByID groups terminal events by assignment id.
func terminalByID(evs []worker.Event) map[string][]worker.Event {
	out := map[string][]worker.Event{}
	for _, e := range evs {
		if isTerminal(e.Kind()) {
			out[e.Subject] = append(out[e.Subject], e)
		}
	}
	return out
}

// parseEventID splits "<stream>-<seq>-<stored>-outcome" (a terminal event) and
// "<stream>-<seq>-<stored>-state_changed-<n>" into the request's reference and whether
// the event is terminal.
func parseEventID(id string) (ref string, terminal bool, ok bool) {
	if r, found := strings.CutSuffix(id, "-outcome"); found {
		ref, terminal = r, true
	} else {
		rest, n, found := cutLast(id, "-")
		if _, err := strconv.Atoi(n); !found || err != nil {
			return "", false, false
		}
		if ref, found = strings.CutSuffix(rest, "-"+worker.KindStateChanged); !found {
			return "", false, false
		}
	}
	rest, stored, found := cutLast(ref, "-")
	if _, err := strconv.ParseInt(stored, 10, 64); !found || err != nil {
		return "", false, false
	}
	_, seq, found := cutLast(rest, "-")
	if _, err := strconv.ParseUint(seq, 10, 64); !found || err != nil {
		return "", false, false
	}
	return ref, terminal, true
}

func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// metricValue returns the value of the series named exactly series (name and labels as
// exposed), -1 if absent.
func metricValue(body, series string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// freePort returns a TCP port on loopback that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// excerpt shows where needle occurs in s.
func excerpt(s, needle string) string {
	i := strings.Index(s, needle)
	lo, hi := max(0, i-200), min(len(s), i+len(needle)+200)
	return s[lo:hi]
}

package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/service"
	"github.com/reprocessor/reprocessor/worker"
)

// cmdDemo runs the whole system on this machine with nothing configured: an embedded NATS
// server, the simulated Graph, the worker and a producer of sample ids, printing the events
// as they happen and a running tally.
func cmdDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	count := fs.Int("ids", 0, "publish this many sample requests, wait for their events and stop (0: until Ctrl-C)")
	perSecond := fs.Float64("per-second", 10, "sample requests published per second")
	load := config.Bind(fs, demoEnv(getenv, nil))
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor demo: invalid configuration:\n%v\n", err)
		return exitUsage
	}
	if *perSecond <= 0 || *count < 0 {
		fmt.Fprintln(stderr, "reprocessor demo: --per-second must be above 0 and --ids at least 0")
		return exitUsage
	}
	if getenv("REPROCESSOR_LOG_LEVEL") == "" {
		cfg.LogLevel = "error" // the demo prints the events; the worker's warnings would repeat them
	}
	log, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat, cfg.Secrets())
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor demo: %v\n", err)
		return exitUsage
	}
	service.TuneGC(getenv, log)

	gt, err := graphtest.Start(graphtest.Realistic())
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor demo: simulated Graph: %v\n", err)
		return exitFailed
	}
	defer gt.Close()
	dataDir, err := os.MkdirTemp("", "reprocessor-demo-")
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor demo: %v\n", err)
		return exitFailed
	}
	defer os.RemoveAll(dataDir)
	env := demoEnv(getenv, gt.Env(""))
	cfg.NATSURL, cfg.DataDir, cfg.EmbeddedAddr = "", dataDir, "127.0.0.1:0"
	cfg.GraphURL, cfg.Cloud = gt.URL, "public"
	cfg.AzureAuthorityHost = env("AZURE_AUTHORITY_HOST")

	if cfg.HTTPAddr != "" {
		// Something else on the metrics port should not stop a demo: take a free one.
		if ln, err := net.Listen("tcp", cfg.HTTPAddr); err != nil {
			cfg.HTTPAddr = "127.0.0.1:0"
		} else {
			ln.Close()
		}
	}
	if getenv("REPROCESSOR_VERIFY_DELAY") == "" {
		cfg.VerifyDelay = time.Second // the simulated assignments settle in a few seconds
	}
	if getenv("REPROCESSOR_VERIFY_RESOURCES") == "" {
		cfg.VerifyResources = true // the seeded tenant shows resource verification
	}
	tenant := seedDemoTenant(gt)
	d := &demo{out: stdout, start: time.Now(), tally: map[string]int{}, done: make(chan struct{}), tracking: cfg.Verify}
	fmt.Fprintf(stdout, "reprocessor demo: simulated Graph at %s (latency 50-300ms, ~2%% unknown ids, occasional 429/503)\n", gt.URL)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	up := make(chan service.Started, 1)
	workerDone := make(chan error, 1)
	go func() {
		workerDone <- service.Run(ctx, cfg, log, env, service.Options{GraphHTTP: gt.Client(), Embedded: true, Started: func(s service.Started) { up <- s }})
	}()
	var s service.Started
	select {
	case s = <-up:
	case err := <-workerDone:
		fmt.Fprintf(stderr, "reprocessor demo: the worker did not start: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "embedded NATS at %s: publish ids to %s.requests, watch %s.events.>\n", s.NATSURL, cfg.SubjectPrefix, cfg.SubjectPrefix)
	if s.HTTPAddr != "" {
		fmt.Fprintf(stdout, "metrics at http://%s/metrics, health at /healthz and /readyz\n", s.HTTPAddr)
	}
	if cmd, err := driftCommand(gt, dataDir, s.NATSURL, cfg.SubjectPrefix); err == nil {
		fmt.Fprintf(stdout, "a simulated tenant: %d access packages, %d assignments, %d of them drifted (users removed from groups, app roles deleted).\n",
			len(tenant.Packages), demoAssignments, len(tenant.Drifted))
		fmt.Fprintf(stdout, "find and heal them from a second terminal:\n  %s\nthen run it again without --enqueue: it finds no drift.\n", cmd)
	} else {
		fmt.Fprintf(stderr, "reprocessor demo: %v\n", err)
	}
	fmt.Fprintln(stdout, "Ctrl-C stops.")

	nc, err := queue.Connect(ctx, queue.ConnConfig{URL: s.NATSURL, Name: "reprocessor-demo"}, log)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor demo: %v\n", err)
		cancel()
		<-workerDone
		return exitFailed
	}
	defer nc.Close()
	sub, err := nc.Subscribe(cfg.SubjectPrefix+".events.>", d.onEvent)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor demo: subscribe: %v\n", err)
		cancel()
		<-workerDone
		return exitFailed
	}
	defer sub.Unsubscribe()

	producerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		d.produce(ctx, nc, cfg.SubjectPrefix+".requests", *count, *perSecond)
	}()
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-d.done:
			break loop
		case <-ticker.C:
			d.printTally()
		case err := <-workerDone:
			fmt.Fprintf(stderr, "reprocessor demo: the worker stopped: %v\n", err)
			return exitFailed
		}
	}
	cancel()
	<-producerDone
	err = <-workerDone
	d.printTally()
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor demo: %v\n", err)
		return exitFailed
	}
	fmt.Fprintln(stdout, "demo stopped cleanly")
	return exitOK
}

// demoEnv hides the caller's NATS and Azure settings from the demo, which brings its own,
// and passes everything else through.
func demoEnv(getenv func(string) string, own map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := own[k]; ok {
			return v
		}
		if strings.HasPrefix(k, "NATS_") || strings.HasPrefix(k, "AZURE_") || k == "REPROCESSOR_GRAPH_URL" || k == "REPROCESSOR_CLOUD" {
			return ""
		}
		return getenv(k)
	}
}

// demo publishes sample requests and prints the events.
type demo struct {
	out   io.Writer
	start time.Time

	mu        sync.Mutex
	published int
	expected  int // terminal events to wait for; 0 until the producer has finished
	tally     map[string]int
	terminal  int
	tracking  bool // state tracking is on: wait for each accepted request's history to end
	ended     int  // state histories that ended (settled, or given up at the deadline)
	done      chan struct{}
	closed    bool
}

// samplePayload returns the i-th sample request: mostly valid ids, some in JSON with a
// correlation id, a few malformed, and now and then the previous id again.
func samplePayload(i int, rnd *rand.Rand, prev string) string {
	switch {
	case i%25 == 7:
		bad := []string{"not-a-guid", "../../users", "{" + randomID(rnd) + "}", `{"id": 42}`, ""}
		return bad[(i/25)%len(bad)]
	case i%20 == 3 && prev != "":
		return prev // a duplicate: coalesced if the first is still in flight or just accepted
	case i%4 == 0:
		return fmt.Sprintf(`{"id":%q,"correlationId":"demo-%d","requestedBy":"demo","reason":"sample"}`, randomID(rnd), i)
	}
	return randomID(rnd)
}

func randomID(rnd *rand.Rand) string {
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", rnd.Uint32(), rnd.Uint32()&0xffff, rnd.Uint32()&0xfff,
		0x8000|rnd.Uint32()&0x3fff, rnd.Uint64()&0xffffffffffff)
}

func (d *demo) produce(ctx context.Context, nc *nats.Conn, subject string, count int, perSecond float64) {
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintf(d.out, "producer: %v\n", err)
		return
	}
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	tick := time.NewTicker(time.Duration(float64(time.Second) / perSecond))
	defer tick.Stop()
	prev := ""
	for i := 0; count == 0 || i < count; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p := samplePayload(i, rnd, prev)
		if _, ok := idlist.Normalize(p); ok {
			prev = p
		}
		if _, err := js.Publish(ctx, subject, []byte(p)); err != nil {
			if ctx.Err() == nil {
				fmt.Fprintf(d.out, "producer: publish: %v\n", err)
			}
			continue
		}
		d.mu.Lock()
		d.published++
		d.mu.Unlock()
	}
	d.mu.Lock()
	d.expected = d.published
	d.checkDone()
	d.mu.Unlock()
}

func (d *demo) onEvent(m *nats.Msg) {
	var e worker.Event
	if err := json.Unmarshal(m.Data, &e); err != nil {
		fmt.Fprintf(d.out, "unreadable event on %s: %v\n", m.Subject, err)
		return
	}
	fmt.Fprintln(d.out, eventLine(&e))
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tally[e.Kind()]++
	if e.Kind() != worker.KindStateChanged {
		d.terminal++
	} else if e.Data.Final {
		d.ended++
	}
	d.checkDone()
}

func (d *demo) checkDone() {
	tracked := !d.tracking || d.ended >= d.tally[worker.KindAccepted]
	if d.expected > 0 && d.terminal >= d.expected && tracked && !d.closed {
		d.closed = true
		close(d.done)
	}
}

// eventLine renders an event on one line for people.
func eventLine(e *worker.Event) string {
	var b strings.Builder
	id := e.Data.AssignmentID
	if id == "" {
		id = "-"
	}
	fmt.Fprintf(&b, "%s  %-13s %-36s", e.Time.Local().Format("15:04:05.000"), e.Kind(), id)
	if e.Data.Attempts > 0 {
		fmt.Fprintf(&b, "  attempts=%d", e.Data.Attempts)
	}
	if e.Data.HTTPStatus != 0 {
		fmt.Fprintf(&b, " http=%d", e.Data.HTTPStatus)
	}
	if e.Data.State != "" {
		from := e.Data.PreviousState
		if from == "" {
			from = "?"
		}
		fmt.Fprintf(&b, "  %s → %s", from, e.Data.State)
		if e.Data.Settled != nil && *e.Data.Settled {
			b.WriteString(" (settled)")
		} else if e.Data.Final {
			b.WriteString(" (not settled: " + e.Data.Status + ")")
		}
	}
	if e.Data.Restored != nil {
		fmt.Fprintf(&b, " restored=%t", *e.Data.Restored)
		if len(e.Data.Missing) > 0 {
			fmt.Fprintf(&b, " missing=%s", strings.Join(e.Data.Missing, "; "))
		}
	}
	if e.Data.Error != nil {
		fmt.Fprintf(&b, " error=%s: %s", e.Data.Error.Code, e.Data.Error.Message)
	}
	if e.Data.CorrelationID != "" {
		fmt.Fprintf(&b, " correlation=%s", e.Data.CorrelationID)
	}
	if e.Data.GraphRequestID != "" {
		fmt.Fprintf(&b, " request-id=%s", e.Data.GraphRequestID)
	}
	return b.String()
}

func (d *demo) printTally() {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, "── %s: published %d │ accepted %d │ failed %d │ rejected %d │ coalesced %d │ state changes %d\n",
		time.Since(d.start).Round(time.Second), d.published, d.tally[worker.KindAccepted], d.tally[worker.KindFailed],
		d.tally[worker.KindRejected], d.tally[worker.KindCoalesced], d.tally[worker.KindStateChanged])
}

// demoAssignments is the number of assignments of the demo's simulated tenant.
const demoAssignments = 60

// seedDemoTenant gives the demo's simulated Graph a small tenant with some drift; each
// drifted assignment is delivered again two seconds after a reprocess, so that healing it
// shows.
func seedDemoTenant(gt *graphtest.Server) graphtest.Seeded {
	t := gt.Seed(graphtest.Shape{Packages: 4, Groups: 6, Apps: 2, SharePoint: true, Assignments: demoAssignments, Drift: 0.15, Seed: 2026})
	for id := range t.Drifted {
		gt.SetLifecycle(id, graphtest.Lifecycle{Delivering: 2 * time.Second})
	}
	return t
}

// driftCommand writes what a second terminal needs to reach the demo (the simulated Graph's
// credentials, its CA, the embedded NATS) to an environment file readable by this user only,
// and returns the command that runs a drift scan with it.
func driftCommand(gt *graphtest.Server, dir, natsURL, prefix string) (string, error) {
	ca, err := gt.WriteCAFile(dir)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	env := gt.Env(ca)
	env["NATS_URL"] = natsURL
	env["REPROCESSOR_SUBJECT_PREFIX"] = prefix
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&b, "%s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`))
	}
	path := filepath.Join(dir, "demo.env")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return fmt.Sprintf("(set -a; . %s; go run ./cmd/reprocessor drift --enqueue --wait-settled)", path), nil
}

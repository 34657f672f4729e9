// Package bench measures reprocessor on this machine: an embedded NATS server, the
// simulated Graph (latency, throttling, errors) and N worker replicas working K ids, beside
// the bare pipelines (fetch, POST, ack; and the same storing one event per id) that bound
// what any worker could do, with latencies, CPU per id and resident memory.
package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/service"
	"github.com/reprocessor/reprocessor/version"
	"github.com/reprocessor/reprocessor/worker"
)

// Options are the settings of a bench run beyond the worker's own configuration.
type Options struct {
	IDs         int           // ids to publish
	Replicas    int           // worker replicas sharing the queue
	Latency     time.Duration // simulated Graph latency, the least
	LatencyMax  time.Duration // and the most
	Throttle    float64       // the simulated Graph admits this many calls per second, 429 beyond; 0 none
	Burst       int           // of the throttle's token bucket; 0 a tenth of Throttle
	Errors      float64       // share of calls answered 503 at random
	Unknown     float64       // share of ids answered 404
	RetryAfter  string        // Retry-After of the random 503s, seconds
	Duration    time.Duration // stop after this long even if ids are left; 0 waits for all
	Preload     bool          // publish every id before the workers start
	Processes   bool          // run each replica as a child process ("reprocessor run")
	Bare        bool          // also run the bare pipelines and compute the ratios
	PublishRate float64       // ids published per second; 0 as fast as possible
	Peer        string        // a peer binary (peers/watermill) to run on the same ids after the worker; "" none
	// BareFirst runs the bare pipelines before the worker instead of after it. Rounds
	// alternate it, so that neither side always runs first in a fresh process: the phases
	// of a round affect each other, and the later ones measure slower.
	BareFirst bool
}

// Result is what a bench run measured.
type Result struct {
	Replicas       int     `json:"replicas"`
	Concurrency    int     `json:"concurrency"`
	Rate           string  `json:"rate"`
	ThrottleRate   float64 `json:"throttleRate"`
	Ids            int     `json:"ids"`
	Completed      int     `json:"completed"`
	Accepted       int     `json:"accepted"`
	Seconds        float64 `json:"seconds"`
	IdsPerSecond   float64 `json:"idsPerSecond"`
	AcceptedPerSec float64 `json:"acceptedPerSecond"`
	GraphCalls     int     `json:"graphCalls"`
	CallsPerID     float64 `json:"callsPerId"`
	Throttled      int     `json:"throttled429"`
	ThrottledShare float64 `json:"throttledShare"`
	ToCallP50MS    float64 `json:"publishToCallP50Ms"`
	ToCallP95MS    float64 `json:"publishToCallP95Ms"`
	ToCallP99MS    float64 `json:"publishToCallP99Ms"`
	ToEventP50MS   float64 `json:"publishToEventP50Ms"`
	ToEventP95MS   float64 `json:"publishToEventP95Ms"`
	ToEventP99MS   float64 `json:"publishToEventP99Ms"`
	CPUPerIDMicros float64 `json:"cpuPerIdMicros,omitempty"` // in-process: the whole bench process's CPU time per completed id
	// With --processes: the worker processes' own CPU time (their whole life) per completed id.
	WorkerCPUPerIDMicros float64 `json:"workerCpuPerIdMicros,omitempty"`
	PeakHeapMiB          float64 `json:"peakHeapMiB,omitempty"` // in-process: the whole bench process
	PeakRSSMiB           float64 `json:"peakRssMiB"`            // the workers' (children with --processes, else this process)
	RSSFirstHalfMiB      float64 `json:"rssFirstHalfMiB"`       // the highest RSS in the first half of the run
	RSSLastHalfMiB       float64 `json:"rssLastHalfMiB"`        // and in the second half: flat if close
	PeakInFlight         int     `json:"peakInFlight"`          // the most Graph calls the simulated Graph answered at once
	// With a throttle R: accepted/s over the second half of the run (converged), and when
	// the accepted rate over a trailing 2 s first reached 0.9·R (-1: never).
	SteadyAcceptedPerSec float64 `json:"steadyAcceptedPerSecond,omitempty"`
	SecondsTo90          float64 `json:"secondsTo90,omitempty"`
	BareIdsPerSec        float64 `json:"bareIdsPerSecond,omitempty"`
	BareCPUPerID         float64 `json:"bareCpuPerIdMicros,omitempty"`
	RatioToBare          float64 `json:"ratioToBare,omitempty"`
	// The bare pipeline with one stored, acknowledged publish per id, as the worker's event.
	BarePublishIdsPerSec float64 `json:"barePublishIdsPerSecond,omitempty"`
	BarePublishCPUPerID  float64 `json:"barePublishCpuPerIdMicros,omitempty"`
	RatioToBarePublish   float64 `json:"ratioToBarePublish,omitempty"`
	BareFirst            bool    `json:"bareFirst,omitempty"` // the bare pipelines ran before the worker
	// The worker and the peer, each from its first stored event to its last.
	FirstToLastIdsPerSec float64 `json:"firstToLastIdsPerSecond,omitempty"`
	PeerIdsPerSec        float64 `json:"peerIdsPerSecond,omitempty"`
	PeerCPUPerID         float64 `json:"peerCpuPerIdMicros,omitempty"` // the peer process's own
	RatioToPeer          float64 `json:"ratioToPeer,omitempty"`
}

const benchPrefix = "bench.reprocess"

// Rounds are the results of several runs of the same bench, summed up by medians.
type Rounds struct {
	Rounds                   []Result `json:"rounds"`
	MedianIdsPerSecond       float64  `json:"medianIdsPerSecond"`
	MedianRatioToBare        float64  `json:"medianRatioToBare,omitempty"`
	MedianRatioToBarePublish float64  `json:"medianRatioToBarePublish,omitempty"`
	MedianRatioToPeer        float64  `json:"medianRatioToPeer,omitempty"`
}

// Sum sets the medians of the rounds.
func (r *Rounds) Sum() {
	field := func(get func(Result) float64) float64 {
		v := make([]float64, len(r.Rounds))
		for i, res := range r.Rounds {
			v[i] = get(res)
		}
		return median(v)
	}
	r.MedianIdsPerSecond = field(func(b Result) float64 { return b.IdsPerSecond })
	r.MedianRatioToBare = field(func(b Result) float64 { return b.RatioToBare })
	r.MedianRatioToBarePublish = field(func(b Result) float64 { return b.RatioToBarePublish })
	r.MedianRatioToPeer = field(func(b Result) float64 { return b.RatioToPeer })
}

// Print writes the medians and each round's ratios.
func (r Rounds) Print(w io.Writer) {
	ratios := func(get func(Result) float64) string {
		parts := make([]string, len(r.Rounds))
		for i, res := range r.Rounds {
			parts[i] = fmt.Sprintf("%.2f", get(res))
		}
		return strings.Join(parts, " ")
	}
	fmt.Fprintf(w, "— over %d rounds —\n", len(r.Rounds))
	fmt.Fprintf(w, "throughput     median %.1f ids/s\n", r.MedianIdsPerSecond)
	if r.MedianRatioToBare > 0 {
		fmt.Fprintf(w, "bare pipeline  the worker does %.2f of it (median; rounds: %s)\n", r.MedianRatioToBare, ratios(func(b Result) float64 { return b.RatioToBare }))
		fmt.Fprintf(w, "bare + publish the worker does %.2f of it (median; rounds: %s)\n", r.MedianRatioToBarePublish, ratios(func(b Result) float64 { return b.RatioToBarePublish }))
	}
	if r.MedianRatioToPeer > 0 {
		fmt.Fprintf(w, "watermill peer the worker does %.2f of it (median; rounds: %s)\n", r.MedianRatioToPeer, ratios(func(b Result) float64 { return b.RatioToPeer }))
	}
}

// median is the middle value of v (the mean of the two middle ones for an even count); v
// is sorted in place.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// Env gives the bench's defaults: quiet logs, no HTTP listener, no state tracking, no
// coalescing window, concurrency 64; and ignores the NATS and Graph of the environment.
func Env(getenv func(string) string) func(string) string {
	defaults := map[string]string{
		"REPROCESSOR_LOG_LEVEL":       "error",
		"REPROCESSOR_HTTP_ADDR":       "off",
		"REPROCESSOR_VERIFY":          "false",
		"REPROCESSOR_COALESCE_WINDOW": "0s",
		"REPROCESSOR_INSTANCE":        "bench",
		"REPROCESSOR_SUBJECT_PREFIX":  benchPrefix,
	}
	return func(k string) string {
		if strings.HasPrefix(k, "NATS_") || strings.HasPrefix(k, "AZURE_") || k == "REPROCESSOR_GRAPH_URL" || k == "REPROCESSOR_CLOUD" {
			return ""
		}
		if v := getenv(k); v != "" {
			return v
		}
		return defaults[k]
	}
}

// benchIDs makes the i-th id of a run, and reads i back.
func benchID(i int) string { return fmt.Sprintf("be0c0000-0000-4000-8000-%012x", i) }

func benchIndex(id string) (int, bool) {
	if len(id) != 36 || !strings.HasPrefix(id, "be0c0000-") {
		return 0, false
	}
	n, err := strconv.ParseUint(id[24:], 16, 48)
	return int(n), err == nil
}

// benchClock records, per id, when it was published and when its terminal event was stored.
// The events are read back from the events stream after the run, not watched while it
// runs: a live subscriber would make the server copy every event once more and this
// process decode it, work the bare pipeline does not pay for.
type benchClock struct {
	start     time.Time
	published []atomic.Int64 // ns since start
	ended     []int64
	acceptAt  []int64 // when each accepted event was stored, ns since start
	completed int
	accepted  int
	lastEnd   int64
}

func (b *benchClock) since() int64 { return max(int64(time.Since(b.start)), 1) }

// sinceWall is since by the wall clock, the clock the server stamps stored messages with:
// an event stored before this moment is never counted as after it, even when the wall
// clock is stepped during the run (since's monotonic clock is not).
func (b *benchClock) sinceWall() int64 {
	return max(int64(time.Now().Round(0).Sub(b.start.Round(0))), 1)
}

// waitWorked returns once every request has been acknowledged (each one is acknowledged
// only after its terminal event is stored), after the publisher is done, or when stop or
// ctx ends the wait first.
func waitWorked(ctx context.Context, cons jetstream.Consumer, published <-chan struct{}, stop <-chan time.Time) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-t.C:
		}
		select {
		case <-published:
		default:
			continue
		}
		info, err := cons.Info(ctx)
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
	}
}

// readEvents reads the terminal events stored up to end (ns since start by the wall clock,
// which stamps them: see sinceWall; 0 for all) and records, per id, when its first one was
// stored.
func (b *benchClock) readEvents(ctx context.Context, js jetstream.JetStream, stream, prefix string, end int64) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	filters := make([]string, len(worker.Outcomes))
	for i, k := range worker.Outcomes {
		filters[i] = prefix + ".events." + k
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: filters})
	if err != nil {
		return err
	}
	b.ended = make([]int64, len(b.published))
	deadline := time.Now().Add(time.Minute)
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		n, pending := 0, uint64(0)
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			pending = meta.NumPending
			b.record(m.Data(), meta.Timestamp.Sub(b.start).Nanoseconds(), end)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		if n > 0 && pending > 0 {
			continue
		}
		// An empty fetch on a loaded machine need not mean the end: the ordered consumer
		// may have been recreated meanwhile. Its own count says whether events are left.
		ci, err := cons.Info(ctx)
		if err != nil || ci.NumPending == 0 || time.Now().After(deadline) {
			return nil
		}
	}
}

// record counts a terminal event stored at (ns since start), the first for its id, unless
// it came after end.
func (b *benchClock) record(data []byte, at, end int64) {
	var e struct {
		Type    string `json:"type"`
		Subject string `json:"subject"`
	}
	if json.Unmarshal(data, &e) != nil || (end > 0 && at > end) {
		return
	}
	i, ok := benchIndex(e.Subject)
	if !ok || i >= len(b.ended) || b.ended[i] != 0 {
		return
	}
	b.ended[i] = max(at, 1)
	b.completed++
	if e.Type == worker.TypePrefix+worker.KindAccepted {
		b.accepted++
		b.acceptAt = append(b.acceptAt, at)
	}
	b.lastEnd = max(b.lastEnd, at)
}

// Run runs the bench once, on a fresh NATS server and simulated Graph, and returns what it
// measured; stderr receives the workers' logs.
func Run(ctx context.Context, cfg config.Config, f Options, log *slog.Logger, stderr io.Writer) (Result, error) {
	res := Result{Replicas: f.Replicas, Concurrency: cfg.Concurrency, ThrottleRate: f.Throttle, Ids: f.IDs, Rate: "auto"}
	if !cfg.RateAuto {
		res.Rate = strconv.FormatFloat(cfg.Rate, 'g', -1, 64)
	}
	gt, err := graphtest.Start(graphtest.Options{
		LatencyMin: f.Latency, LatencyMax: max(f.Latency, f.LatencyMax),
		UnavailableRate: f.Errors, UnknownRate: f.Unknown, RandomRetryAfter: f.RetryAfter,
		MaxRecordedCalls: min(3*f.IDs+1000, 300_000),
	})
	if err != nil {
		return res, fmt.Errorf("simulated Graph: %w", err)
	}
	defer gt.Close()
	throttle := func() { // the bare pipelines run unthrottled: set again after them
		if f.Throttle > 0 {
			gt.SetRateLimit(f.Throttle, cmp.Or(f.Burst, max(1, int(f.Throttle/10))))
		}
	}
	throttle()
	dir, err := os.MkdirTemp("", "reprocessor-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	emb, err := queue.StartEmbedded(queue.EmbeddedConfig{Port: -1, DataDir: dir})
	if err != nil {
		return res, fmt.Errorf("embedded NATS: %w", err)
	}
	defer emb.Shutdown()
	nc, err := nats.Connect(emb.ClientURL(), nats.Name("reprocessor-bench"))
	if err != nil {
		return res, fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	cfg.NATSURL, cfg.GraphURL, cfg.Cloud = emb.ClientURL(), gt.URL, "public"
	env := gt.Env("")
	cfg.AzureAuthorityHost = env["AZURE_AUTHORITY_HOST"]
	qc := cfg.Queue()
	if _, err := queue.Setup(ctx, js, qc, log); err != nil {
		return res, err
	}

	var bares bareResults
	if f.Bare && f.BareFirst {
		if bares, err = runBares(ctx, cfg, js, gt, f.IDs, log); err != nil {
			return res, err
		}
		gt.ResetCalls() // the worker's figures count only its own calls
		throttle()
	}

	bc := &benchClock{published: make([]atomic.Int64, f.IDs)}
	bc.start = time.Now()
	requests := cfg.SubjectPrefix + ".requests"
	cons, err := js.Consumer(ctx, queue.DefaultRequestsStream, queue.DefaultDurable)
	if err != nil {
		return res, err
	}

	if f.Preload {
		if err := benchPublish(ctx, js, requests, bc, 0); err != nil {
			return res, err
		}
	}
	mem := &memSampler{}
	workers, err := startBenchReplicas(ctx, cfg, f, gt, dir, mem)
	if err != nil {
		return res, err
	}
	workStart, cpuStart := bc.since(), processCPU()
	pubErr := make(chan error, 1)
	published := make(chan struct{})
	if !f.Preload {
		go func() {
			err := benchPublish(ctx, js, requests, bc, f.PublishRate)
			close(published)
			pubErr <- err
		}()
	} else {
		close(published)
		pubErr <- nil
	}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() { defer close(sampled); mem.run(sampleCtx) }()
	var limit <-chan time.Time
	if f.Duration > 0 {
		t := time.NewTimer(f.Duration)
		defer t.Stop()
		limit = t.C
	}
	waitWorked(ctx, cons, published, limit)
	end, endWall, cpu := bc.since(), bc.sinceWall(), processCPU()-cpuStart
	stopSampling()
	<-sampled
	workers.stop()
	var workerCPU time.Duration
	if workers.cpu != nil {
		workerCPU = workers.cpu()
	}
	if err := <-pubErr; err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "reprocessor bench: publish: %v\n", err)
	}
	if err := bc.readEvents(context.WithoutCancel(ctx), js, queue.DefaultEventsStream, cfg.SubjectPrefix, endWall); err != nil {
		return res, fmt.Errorf("read the events: %w", err)
	}
	if bc.completed == f.IDs {
		end = bc.lastEnd
	}

	res.Seconds = float64(end-workStart) / 1e9
	res.Completed, res.Accepted = bc.completed, bc.accepted
	if workerCPU > 0 && res.Completed > 0 {
		res.WorkerCPUPerIDMicros = math.Round(float64(workerCPU.Nanoseconds())/1e3/float64(res.Completed)*10) / 10
	}
	if !f.Processes && res.Completed > 0 {
		res.CPUPerIDMicros = math.Round(float64(cpu)/1e3/float64(res.Completed)*10) / 10
	}
	res.IdsPerSecond = float64(res.Completed) / res.Seconds
	res.AcceptedPerSec = float64(res.Accepted) / res.Seconds
	res.GraphCalls = gt.CallCount(graphtest.OpReprocess)
	res.CallsPerID = float64(res.GraphCalls) / float64(max(res.Completed, 1))
	var toCall, toEvent []float64
	seen := make(map[int]bool)
	recorded := 0
	for _, c := range gt.Calls() {
		if c.Operation != graphtest.OpReprocess {
			continue
		}
		recorded++
		if c.Status == 429 {
			res.Throttled++
		}
		i, ok := benchIndex(c.AssignmentID)
		if !ok || seen[i] || bc.published[i].Load() == 0 {
			continue
		}
		seen[i] = true
		toCall = append(toCall, float64(c.Time.Sub(bc.start).Nanoseconds()-bc.published[i].Load())/1e6)
	}
	res.ThrottledShare = float64(res.Throttled) / float64(max(recorded, 1))
	for i := range bc.ended {
		if e, p := bc.ended[i], bc.published[i].Load(); e > 0 && p > 0 {
			toEvent = append(toEvent, float64(e-p)/1e6)
		}
	}
	res.ToCallP50MS, res.ToCallP95MS, res.ToCallP99MS = percentiles(toCall)
	res.ToEventP50MS, res.ToEventP95MS, res.ToEventP99MS = percentiles(toEvent)
	res.PeakHeapMiB, res.PeakRSSMiB, res.RSSFirstHalfMiB, res.RSSLastHalfMiB = mem.summary()
	res.PeakInFlight = gt.PeakInFlight()
	if f.Throttle > 0 {
		res.SteadyAcceptedPerSec, res.SecondsTo90 = convergence(bc.acceptAt, workStart, end, f.Throttle)
	}
	if f.Processes {
		res.PeakHeapMiB = 0 // the children's heap is not visible from here
	}

	if f.Peer != "" && ctx.Err() == nil {
		first, last := int64(math.MaxInt64), int64(0)
		for _, e := range bc.ended {
			if e > 0 {
				first, last = min(first, e), max(last, e)
			}
		}
		if last > first {
			res.FirstToLastIdsPerSec = float64(res.Completed-1) / (float64(last-first) / 1e9)
		}
		n := max(res.Completed, 1)
		pr, err := runPeer(ctx, js, gt, emb.ClientURL(), dir, f.Peer, n, cfg.Concurrency)
		if err != nil {
			return res, fmt.Errorf("peer: %w", err)
		}
		res.PeerIdsPerSec, res.PeerCPUPerID = pr.idsPerSec, pr.cpuPerID
		if pr.idsPerSec > 0 {
			res.RatioToPeer = res.FirstToLastIdsPerSec / pr.idsPerSec
		}
	}
	if f.Bare && !f.BareFirst && ctx.Err() == nil {
		n := res.Completed
		if n == 0 {
			n = f.IDs
		}
		if bares, err = runBares(ctx, cfg, js, gt, n, log); err != nil {
			return res, err
		}
	}
	if bares.perSec > 0 && bares.publishPerSec > 0 { // both ran, before the worker or after
		res.BareFirst = f.BareFirst
		res.BareIdsPerSec, res.BareCPUPerID = bares.perSec, bares.cpuPerID
		res.RatioToBare = res.IdsPerSecond / bares.perSec
		res.BarePublishIdsPerSec, res.BarePublishCPUPerID = bares.publishPerSec, bares.publishCPUPerID
		res.RatioToBarePublish = res.IdsPerSecond / bares.publishPerSec
	}
	return res, nil
}

// bareResults is what the two bare pipelines measured.
type bareResults struct {
	perSec, cpuPerID               float64 // fetch, POST, ack
	publishPerSec, publishCPUPerID float64 // the same, storing an event per id
}

// runBares runs the bare pipeline over n ids, then the one that also stores an event.
func runBares(ctx context.Context, cfg config.Config, js jetstream.JetStream, gt *graphtest.Server, n int, log *slog.Logger) (r bareResults, err error) {
	if r.perSec, r.cpuPerID, err = runBare(ctx, cfg, js, gt, n, false, log); err != nil {
		return r, fmt.Errorf("bare pipeline: %w", err)
	}
	if r.publishPerSec, r.publishCPUPerID, err = runBare(ctx, cfg, js, gt, n, true, log); err != nil {
		return r, fmt.Errorf("bare pipeline with publish: %w", err)
	}
	return r, nil
}

// convergence reads the accepted events' store times (ns since start) of a run from
// workStart to end against a Graph admitting r calls/s: the accepted rate over the second
// half, and the seconds from workStart until the rate over a trailing 2 s first reached
// 0.9·r (-1 if it never did).
func convergence(acceptAt []int64, workStart, end int64, r float64) (steady, to90 float64) {
	slices.Sort(acceptAt)
	mid := workStart + (end-workStart)/2
	half := 0
	for _, t := range acceptAt {
		if t > mid && t <= end {
			half++
		}
	}
	if span := float64(end-mid) / 1e9; span > 0 {
		steady = float64(half) / span
	}
	const window = 2 * time.Second
	need := int(math.Ceil(0.9 * r * window.Seconds()))
	to90 = -1
	for i := need - 1; i < len(acceptAt); i++ {
		if acceptAt[i]-acceptAt[i-need+1] <= int64(window) && acceptAt[i] >= workStart+int64(window) {
			to90 = float64(acceptAt[i]-workStart) / 1e9
			break
		}
	}
	return steady, to90
}

// publishIDs publishes the first n bench ids to subject with asynchronous JetStream acks
// (each with its Nats-Msg-Id), at most perSecond ids per second when that is above 0, and
// calls before(i), if set, just before the i-th.
func publishIDs(ctx context.Context, js jetstream.JetStream, subject string, n int, perSecond float64, before func(i int)) error {
	var tick *time.Ticker
	if perSecond > 0 {
		tick = time.NewTicker(max(time.Duration(float64(time.Second)/perSecond), time.Microsecond))
		defer tick.Stop()
	}
	for i := range n {
		if tick != nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if before != nil {
			before(i)
		}
		for {
			_, err := js.PublishAsync(subject, []byte(benchID(i)), jetstream.WithMsgID(benchID(i)), jetstream.WithStallWait(time.Second))
			if err == nil {
				break
			}
			// Acks are slower than publishing (a loaded machine, the race detector): let
			// the outstanding ones come in, then publish this one again.
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return fmt.Errorf("publish %d: %w", i, err)
			}
			if err := waitPublished(ctx, js); err != nil {
				return err
			}
		}
		if i%10_000 == 9_999 {
			if err := waitPublished(ctx, js); err != nil {
				return err
			}
		}
	}
	return waitPublished(ctx, js)
}

// benchPublish publishes every id of the run, recording when each was published.
func benchPublish(ctx context.Context, js jetstream.JetStream, subject string, bc *benchClock, perSecond float64) error {
	return publishIDs(ctx, js, subject, len(bc.published), perSecond, func(i int) { bc.published[i].Store(bc.since()) })
}

func waitPublished(ctx context.Context, js jetstream.JetStream) error {
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Minute):
		return errors.New("publish acks did not come within 2 minutes")
	}
}

func percentiles(v []float64) (p50, p95, p99 float64) {
	if len(v) == 0 {
		return 0, 0, 0
	}
	slices.Sort(v)
	at := func(p float64) float64 { return math.Round(v[min(len(v)-1, int(p*float64(len(v))))]*10) / 10 }
	return at(0.50), at(0.95), at(0.99)
}

// benchReplicas are the running worker replicas.
type benchReplicas struct {
	stop func()
	cpu  func() time.Duration // child processes: their CPU time, once stopped; nil in process
}

func startBenchReplicas(ctx context.Context, cfg config.Config, f Options, gt *graphtest.Server, dir string, mem *memSampler) (benchReplicas, error) {
	env := gt.Env("")
	if f.Processes {
		caFile, err := gt.WriteCAFile(dir)
		if err != nil {
			return benchReplicas{}, err
		}
		env["SSL_CERT_FILE"] = caFile
		return startChildReplicas(cfg, f.Replicas, env, mem)
	}
	mem.pids = []int{os.Getpid()}
	mem.heap = true
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	errs := make(chan error, f.Replicas)
	up := make(chan struct{}, f.Replicas)
	for r := range f.Replicas {
		c := cfg
		c.Instance = fmt.Sprintf("bench-%d", r+1)
		log := slog.New(slog.DiscardHandler)
		if cfg.LogLevel != "error" {
			log, _ = logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat, nil)
			log = log.With("replica", c.Instance)
		}
		wg.Go(func() {
			err := service.Run(runCtx, c, log, func(k string) string { return env[k] }, service.Options{
				GraphHTTP: gt.Client(),
				Registry:  prometheus.NewRegistry(),
				Started:   func(service.Started) { up <- struct{}{} },
			})
			if err != nil {
				errs <- err
			}
		})
	}
	for range f.Replicas {
		select {
		case <-up:
		case err := <-errs:
			cancel()
			wg.Wait()
			return benchReplicas{}, fmt.Errorf("worker: %w", err)
		}
	}
	return benchReplicas{stop: func() { cancel(); wg.Wait() }}, nil
}

// startChildReplicas runs each replica as "reprocessor run" in a child process with the
// bench's configuration in its environment.
func startChildReplicas(cfg config.Config, n int, graphEnv map[string]string, mem *memSampler) (benchReplicas, error) {
	exe, err := os.Executable()
	if err != nil {
		return benchReplicas{}, err
	}
	base := os.Environ()
	for _, kv := range cfg.Environ() {
		if !strings.HasPrefix(kv, "AZURE_") && !strings.HasPrefix(kv, "NATS_") {
			base = append(base, kv)
		}
	}
	base = append(base, "NATS_URL="+cfg.NATSURL)
	for k, v := range graphEnv {
		base = append(base, k+"="+v)
	}
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = c.Process.Signal(os.Interrupt)
		}
		for _, c := range cmds {
			_ = c.Wait()
		}
	}
	cpu := func() time.Duration {
		var total time.Duration
		for _, c := range cmds {
			if ps := c.ProcessState; ps != nil {
				total += ps.UserTime() + ps.SystemTime()
			}
		}
		return total
	}
	for r := range n {
		c := exec.Command(exe, "run")
		c.Env = append(slices.Clone(base), fmt.Sprintf("REPROCESSOR_INSTANCE=bench-%d", r+1), "REPROCESSOR_LOG_LEVEL="+cfg.LogLevel)
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			stop()
			return benchReplicas{}, err
		}
		cmds = append(cmds, c)
		mem.pids = append(mem.pids, c.Process.Pid)
	}
	return benchReplicas{stop: stop, cpu: cpu}, nil
}

// memSampler samples the resident memory of the workers (and the heap, in process).
type memSampler struct {
	pids []int
	heap bool

	peakHeap uint64
	rss      []uint64 // total over pids, one sample per tick
}

func (m *memSampler) run(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		var total uint64
		for _, pid := range m.pids {
			total += readRSS(pid)
		}
		m.rss = append(m.rss, total)
		if m.heap {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			m.peakHeap = max(m.peakHeap, ms.HeapInuse)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *memSampler) summary() (peakHeap, peakRSS, firstHalf, lastHalf float64) {
	const mib = 1 << 20
	half := len(m.rss) / 2
	if len(m.rss) > 0 {
		firstHalf = float64(slices.Max(m.rss[:max(half, 1)])) / mib
		lastHalf = float64(slices.Max(m.rss[half:])) / mib
		peakRSS = max(firstHalf, lastHalf)
	}
	return math.Round(float64(m.peakHeap)/mib*10) / 10, math.Round(peakRSS*10) / 10, math.Round(firstHalf*10) / 10, math.Round(lastHalf*10) / 10
}

// readRSS returns a process's resident set in bytes from /proc; 0 where there is none.
func readRSS(pid int) uint64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// runBare runs the bare pipeline over the same NATS server and simulated Graph: a work
// queue of n ids, fetched, POSTed with the same Graph client and concurrency, acked;
// nothing else (no events, no limiter, no retries). It returns ids per second and the
// process's CPU time per id in microseconds.
func runBare(ctx context.Context, cfg config.Config, js jetstream.JetStream, gt *graphtest.Server, n int, publish bool, log *slog.Logger) (perSec, cpuPerID float64, err error) {
	gt.SetRateLimit(0, 0)
	env := gt.Env("")
	m := metrics.New(prometheus.NewRegistry(), version.Info())
	gs := cfg.Graph()
	gs.HTTPClient, gs.Observe, gs.Logger = gt.Client(), m.ObserveGraph, log
	session, err := graph.Open(func(k string) string { return env[k] }, gs)
	if err != nil {
		return 0, 0, err
	}
	defer session.Close()
	cred, client := session.Credential, session.Client

	stream, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_BARE", Subjects: []string{"bench.bare"}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		return 0, 0, err
	}
	defer js.DeleteStream(context.WithoutCancel(ctx), "BENCH_BARE")
	if publish {
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_BARE_EVENTS", Subjects: []string{"bench.bare.events"}}); err != nil {
			return 0, 0, err
		}
		defer js.DeleteStream(context.WithoutCancel(ctx), "BENCH_BARE_EVENTS")
	}
	if err := publishIDs(ctx, js, "bench.bare", n, 0, nil); err != nil {
		return 0, 0, err
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "bare", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 4 * cfg.Concurrency})
	if err != nil {
		return 0, 0, err
	}
	for !cred.Ready() { // the token comes first, as it does for the worker
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	pub := queue.NewAckedPublisher(js.Conn(), queue.PublishAckTimeout)
	start, cpuStart := time.Now(), processCPU()
	var done atomic.Int64
	finished := make(chan struct{})
	slots := make(chan struct{}, cfg.Concurrency)
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * cfg.Concurrency))
	if err != nil {
		return 0, 0, err
	}
	var wg sync.WaitGroup
	go func() {
		<-finished
		it.Stop()
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			break
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if _, err := client.Reprocess(ctx, string(msg.Data())); err != nil {
				_ = msg.Nak()
				return
			}
			if publish {
				if err := barePublishEvent(ctx, pub, msg); err != nil {
					_ = msg.Nak()
					return
				}
			}
			_ = msg.Ack()
			if int(done.Add(1)) == n {
				close(finished)
			}
		})
	}
	wg.Wait()
	cpu := processCPU() - cpuStart
	return float64(n) / time.Since(start).Seconds(), math.Round(float64(cpu)/1e3/float64(n)*10) / 10, nil
}

// barePublishEvent stores an event like the worker's for a message of the bare pipeline:
// a CloudEvent of the same fields, encoded and published with a Nats-Msg-Id and its
// acknowledgement awaited, by the same means as the worker's.
func barePublishEvent(ctx context.Context, pub *queue.AckedPublisher, msg jetstream.Msg) error {
	meta, err := msg.Metadata()
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	id := string(msg.Data())
	ev := worker.Event{
		SpecVersion: "1.0", ID: worker.RequestRef(meta.Stream, meta.Sequence.Stream, meta.Timestamp) + "-outcome", Source: "reprocessor/bare",
		Type: worker.TypePrefix + worker.KindAccepted, Subject: id, Time: now, DataContentType: "application/json",
		Data: worker.EventData{AssignmentID: id, Attempts: 1, HTTPStatus: 200, GraphRequestID: "00000000-0000-4000-8000-000000000000",
			ClientRequestID: "00000000-0000-4000-8000-000000000000", RequestedAt: meta.Timestamp.UTC(), CompletedAt: now},
	}
	data, err := ev.JSON()
	if err != nil {
		return err
	}
	_, err = pub.Publish(ctx, &nats.Msg{Subject: "bench.bare.events", Data: data, Header: nats.Header{"Nats-Msg-Id": {ev.ID}}})
	return err
}

// Print writes the result as text.
func (r Result) Print(w io.Writer) {
	fmt.Fprintf(w, "replicas %d, concurrency %d, rate %s, simulated Graph throttle %g/s\n", r.Replicas, r.Concurrency, r.Rate, r.ThrottleRate)
	fmt.Fprintf(w, "ids            %d of %d completed (%d accepted) in %.1fs\n", r.Completed, r.Ids, r.Accepted, r.Seconds)
	fmt.Fprintf(w, "throughput     %.1f ids/s, %.1f accepted/s\n", r.IdsPerSecond, r.AcceptedPerSec)
	fmt.Fprintf(w, "graph calls    %d, %.3f per id, %d answered 429 (%.2f%%)\n", r.GraphCalls, r.CallsPerID, r.Throttled, 100*r.ThrottledShare)
	fmt.Fprintf(w, "publish→call   p50 %.1fms  p95 %.1fms  p99 %.1fms\n", r.ToCallP50MS, r.ToCallP95MS, r.ToCallP99MS)
	fmt.Fprintf(w, "publish→event  p50 %.1fms  p95 %.1fms  p99 %.1fms\n", r.ToEventP50MS, r.ToEventP95MS, r.ToEventP99MS)
	if r.CPUPerIDMicros > 0 {
		fmt.Fprintf(w, "CPU per id     %.1f µs (this whole process: workers, NATS, simulated Graph)\n", r.CPUPerIDMicros)
	}
	if r.WorkerCPUPerIDMicros > 0 {
		fmt.Fprintf(w, "CPU per id     %.1f µs (the worker processes' own, start to stop)\n", r.WorkerCPUPerIDMicros)
	}
	if r.PeakHeapMiB > 0 {
		fmt.Fprintf(w, "peak heap      %.1f MiB (this whole process)\n", r.PeakHeapMiB)
	}
	fmt.Fprintf(w, "peak RSS       %.1f MiB (first half of the run %.1f, second half %.1f)\n", r.PeakRSSMiB, r.RSSFirstHalfMiB, r.RSSLastHalfMiB)
	if r.BareIdsPerSec > 0 {
		if r.BareFirst {
			fmt.Fprintln(w, "bare pipelines ran before the worker in this round")
		}
		fmt.Fprintf(w, "bare pipeline  %.1f ids/s, %.1f µs CPU per id (fetch, POST, ack); the worker does %.2f of it\n", r.BareIdsPerSec, r.BareCPUPerID, r.RatioToBare)
		fmt.Fprintf(w, "bare + publish %.1f ids/s, %.1f µs CPU per id (fetch, POST, publish an event, ack); the worker does %.2f of it\n", r.BarePublishIdsPerSec, r.BarePublishCPUPerID, r.RatioToBarePublish)
	}
	if r.PeerIdsPerSec > 0 {
		fmt.Fprintf(w, "watermill peer %.1f ids/s first to last event (the worker %.1f), %.1f µs CPU per id of its own process; the worker does %.2f of it\n", r.PeerIdsPerSec, r.FirstToLastIdsPerSec, r.PeerCPUPerID, r.RatioToPeer)
	}
}

// processCPU is the CPU time this process has used, user and system, in nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

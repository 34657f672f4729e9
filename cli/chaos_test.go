package cli

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/worker"
)

// TestChaos is a seeded, randomized end-to-end test: worker processes against a simulated
// Graph that answers a share of the calls as a hostile server would (redirects to another
// port of its host, 202s whose bodies never end or stall, 404s with a 2 MiB message, 429s
// with Retry-After 0, 503s, a 403 that a redelivery answers 202, state reads about another
// assignment or with a 2 MiB state), while the workers are killed with SIGKILL in the
// middle (lost acks, redeliveries to another process) and started again. It asserts the
// invariants:
//
//   - every request ends in exactly one terminal event, and none accepted has a dead letter;
//   - no listener but the configured Graph and authority ever sees a bearer token or the
//     client secret;
//   - nothing holds a slot: the request queue drains once every id has its event;
//   - memory stays bounded (each worker's peak RSS under the shipped 256 MiB limit).
//
// REPROCESSOR_CHAOS_SEED replays a run; the seed is logged.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes for about half a minute")
	}
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("REPROCESSOR_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("REPROCESSOR_CHAOS_SEED: %v", err)
		}
	}
	t.Logf("seed %d (REPROCESSOR_CHAOS_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var rngMu sync.Mutex
	chance := func(p float64) bool { rngMu.Lock(); defer rngMu.Unlock(); return rng.Float64() < p }

	sys := newSystem(t, graphtest.Options{LatencyMin: time.Millisecond, LatencyMax: 20 * time.Millisecond})
	trap := newTrap(t, sys.gt.ClientSecret)
	h := &hostile{trap: trap, seed: seed, chance: chance, calls: map[string]int{}}
	sys.gt.SetInterceptor(h.intercept)

	const n = 1500
	want := ids(n, int(seed%1000)+500)
	overrides := env{
		"REPROCESSOR_CONCURRENCY":   "32",
		"REPROCESSOR_ACK_WAIT":      "2s",
		"REPROCESSOR_GRAPH_TIMEOUT": "2s",
		"REPROCESSOR_VERIFY":        "true",
		"REPROCESSOR_VERIFY_DELAY":  "200ms",
		"REPROCESSOR_LOG_LEVEL":     "info",
		"REPROCESSOR_MAX_DELIVER":   "8",
	}
	var peaks []int64
	var peaksMu sync.Mutex
	record := func(c *child) {
		if rss := peakRSS(c.cmd.Process.Pid); rss > 0 {
			peaksMu.Lock()
			peaks = append(peaks, rss)
			peaksMu.Unlock()
		}
	}
	a := sys.startChild(t, "worker a", overrides)
	b := sys.startChild(t, "worker b", overrides)
	a.waitRunning()
	b.waitRunning()
	sys.publish(payloads(want)...)

	// Kill each of the first two in the middle, with work in flight, and start others.
	sys.waitFor("a quarter of the events", 60*time.Second, func() bool { return sys.streamCount("REPROCESS_EVENTS") >= n/4 })
	record(a)
	a.kill()
	c := sys.startChild(t, "worker c", overrides)
	sys.waitFor("half of the events", 60*time.Second, func() bool { return sys.streamCount("REPROCESS_EVENTS") >= n/2 })
	record(b)
	b.kill()
	d := sys.startChild(t, "worker d", overrides)
	c.waitRunning()
	d.waitRunning()

	terminal := sys.waitTerminal(want, 90*time.Second) // exactly one terminal event per id and request
	sys.waitFor("the request queue drained", 60*time.Second, func() bool {
		p, ap := sys.pending()
		return p == 0 && ap == 0
	})
	record(c)
	record(d)

	// No accepted request has a dead letter; every failed or rejected one has one.
	dead := map[string]int{}
	for _, m := range sys.streamMessages("REPROCESS_DLQ") {
		if req, err := worker.Decode(m.Data()); err == nil {
			dead[req.ID]++
		}
	}
	outcomes := map[string]int{}
	for id, evs := range terminal {
		k := evs[0].Kind()
		outcomes[k]++
		switch {
		case k == worker.KindAccepted && dead[id] > 0:
			t.Errorf("%s ended accepted and has %d dead letters", id, dead[id])
		case (k == worker.KindFailed || k == worker.KindRejected) && dead[id] != 1:
			t.Errorf("%s ended %s with %d dead letters, want 1", id, k, dead[id])
		}
		if e := evs[0].Data.Error; e != nil && len(e.Message) > worker.MaxFieldBytes {
			t.Errorf("%s: an error message of %d bytes", id, len(e.Message))
		}
	}
	if n := trap.requests.Load(); n != 0 {
		t.Errorf("%d requests reached the trap (%d with a token or the secret): a redirect was followed", n, trap.secrets.Load())
	}
	for _, rss := range peaks {
		if rss > 256<<20 {
			t.Errorf("a worker's peak RSS was %d MiB", rss>>20)
		}
	}
	if code := d.terminate(60 * time.Second); code != 0 {
		t.Errorf("worker d exited %d after SIGTERM", code)
	}
	h.mu.Lock()
	t.Logf("outcomes %v; hostile answers %v; Graph calls %d; peak RSS %v MiB", outcomes, h.served, sys.gt.CallCount(graphtest.OpReprocess), mib(peaks))
	h.mu.Unlock()
	if outcomes[worker.KindAccepted] == 0 || outcomes[worker.KindFailed] == 0 {
		t.Errorf("outcomes %v: the run exercised too little", outcomes)
	}
}

// hostile decides, per assignment id (from the seed) and per call, how the simulated Graph
// misbehaves.
type hostile struct {
	trap   *trap
	seed   uint64
	chance func(float64) bool

	mu     sync.Mutex
	calls  map[string]int // reprocess calls per id
	served map[string]int // hostile answers given, by kind
}

// behaviours a reprocess of an id may meet; "" is an honest Graph.
var behaviours = []string{"redirect-http", "redirect-https", "endless-202", "stall-202", "huge-404",
	"429-zero-then-202", "503-then-202", "403-then-202", "wrong-id-state", "huge-state"}

func (h *hostile) behaviour(id string) string {
	sum := sha256.Sum256([]byte(fmt.Sprint(h.seed, id)))
	x := binary.BigEndian.Uint64(sum[:8])
	if x%100 >= 30 { // 30% of the ids meet a hostile Graph
		return ""
	}
	return behaviours[(x/100)%uint64(len(behaviours))]
}

func (h *hostile) intercept(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	const collection = "/v1.0/identityGovernance/entitlementManagement/assignments/"
	rest, ok := strings.CutPrefix(path, collection)
	if !ok {
		return false
	}
	id, action, _ := strings.Cut(rest, "/")
	b := h.behaviour(id)
	if b == "" {
		return false
	}
	h.mu.Lock()
	if h.served == nil {
		h.served = map[string]int{}
	}
	var call int
	if action == "reprocess" {
		h.calls[id]++
		call = h.calls[id]
	}
	h.mu.Unlock()
	served := func() { h.mu.Lock(); h.served[b]++; h.mu.Unlock() }
	if action != "reprocess" {
		switch b {
		case "wrong-id-state":
			served()
			fmt.Fprintf(w, `{"id":"11111111-2222-4333-8444-555555555555","state":"delivered","status":"Delivered"}`)
			return true
		case "huge-state":
			served()
			fmt.Fprintf(w, `{"id":%q,"state":"%s","status":"x"}`, id, strings.Repeat("s", 2<<20))
			return true
		}
		return false
	}
	switch b {
	case "redirect-http":
		served()
		http.Redirect(w, r, h.trap.plain+path, http.StatusTemporaryRedirect)
	case "redirect-https":
		served()
		http.Redirect(w, r, h.trap.tls+path, http.StatusFound)
	case "endless-202":
		served()
		w.WriteHeader(http.StatusAccepted)
		chunk := []byte(strings.Repeat("x", 32<<10))
		for range 1280 { // 40 MiB, unless the client hangs up first
			if _, err := w.Write(chunk); err != nil {
				break
			}
		}
	case "stall-202":
		served()
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusAccepted)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	case "huge-404":
		served()
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"error":{"code":"ResourceNotFound","message":"%s"}}`, strings.Repeat("m", 2<<20))
	case "429-zero-then-202", "503-then-202":
		if call > 2 || !h.chance(0.9) {
			return false
		}
		served()
		w.Header().Set("Retry-After", "0")
		status := http.StatusTooManyRequests
		if b == "503-then-202" {
			status = http.StatusServiceUnavailable
		}
		w.WriteHeader(status)
	case "403-then-202":
		if call > 1 {
			return false
		}
		served()
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges."}}`)
	default:
		return false
	}
	return true
}

// trap is where a followed redirect would land: a plain and a TLS listener on other ports of
// the same host, counting what reaches them.
type trap struct {
	plain, tls string
	requests   atomic.Int64
	secrets    atomic.Int64
}

func newTrap(t *testing.T, secret string) *trap {
	tr := &trap{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.requests.Add(1)
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if r.Header.Get("Authorization") != "" || strings.Contains(string(body), secret) {
			tr.secrets.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	})
	p, s := httptest.NewServer(h), httptest.NewTLSServer(h)
	t.Cleanup(p.Close)
	t.Cleanup(s.Close)
	tr.plain, tr.tls = p.URL, s.URL
	return tr
}

// peakRSS returns a process's peak resident set size (VmHWM), 0 if it cannot be read.
func peakRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(bs []int64) []int64 {
	out := make([]int64, len(bs))
	for i, b := range bs {
		out[i] = b >> 20
	}
	return out
}

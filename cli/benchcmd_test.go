package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/reprocessor/reprocessor/bench"
)

func TestBenchCommand(t *testing.T) {
	t.Parallel()
	out := benchOK(t, "--ids", "300", "--replicas", "2", "--concurrency", "8", "--rate", "auto", "--unknown", "0.2", "--json")
	var r bench.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// About a fifth of the ids are unknown to the simulated Graph: they end failed, which
	// completes them too.
	if r.Completed != 300 || r.Accepted >= 300 || r.Accepted < 150 || r.Replicas != 2 || r.Rate != "auto" {
		t.Errorf("result %+v", r)
	}
	if r.GraphCalls < 300 || r.CallsPerID < 1 || r.IdsPerSecond <= 0 || r.PeakRSSMiB <= 0 {
		t.Errorf("figures %+v", r)
	}
	if r.ToEventP50MS <= 0 || r.ToEventP99MS < r.ToEventP50MS || r.ToCallP50MS <= 0 {
		t.Errorf("latencies %+v", r)
	}
	if r.CPUPerIDMicros <= 0 || r.BareCPUPerID <= 0 || r.BarePublishCPUPerID <= 0 {
		t.Errorf("CPU per id %+v", r)
	}
	if r.BareIdsPerSec <= 0 || r.RatioToBare <= 0 {
		t.Errorf("bare pipeline %+v", r)
	}
}

func TestBenchCommandThrottledText(t *testing.T) {
	t.Parallel()
	out := benchOK(t, "--ids", "150", "--throttle", "100", "--throttle-burst", "5", "--rate", "50", "--preload", "--bare=false")
	// How many calls meet a 429 depends on the machine's load (a fixed rate below the
	// throttle meets none on an idle one): the bench's figures are measured, not asserted.
	for _, want := range []string{"rate 50, simulated Graph throttle 100/s", "150 of 150 completed", " answered 429 (", "publish→event", "peak RSS"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "bare pipeline") {
		t.Errorf("bare pipeline run with --bare=false:\n%s", out)
	}
}

func TestBenchCommandStopsAfterDuration(t *testing.T) {
	t.Parallel()
	out := benchOK(t, "--ids", "5000", "--rate", "100", "--preload", "--duration", "1s", "--bare=false", "--json")
	var r bench.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// 100 calls a second for a second: the ids worked in that second count, not the ones
	// finished while the workers stopped, nor the thousands never fetched.
	if r.Completed < 20 || r.Completed > 200 || r.Seconds < 0.9 || r.Seconds > 2 {
		t.Errorf("%d completed in %.2fs, want about 100 in 1s", r.Completed, r.Seconds)
	}
}

func TestBenchCommandBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"bench", "--ids", "0"},
		{"bench", "--rounds", "0"},
		{"bench", "--errors", "2"},
		{"bench", "--rate", "sometimes"},
		{"bench", "extra"},
	} {
		var out, errOut bytes.Buffer
		if code := Main(context.Background(), args, env{}.get, &out, &errOut); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// TestBenchCommandRounds: --rounds runs the whole bench again on fresh servers and sums the
// ratios up by their median.
func TestBenchCommandRounds(t *testing.T) {
	t.Parallel()
	out := benchOK(t, "--ids", "200", "--concurrency", "8", "--rate", "0", "--preload", "--rounds", "3", "--json")
	var r bench.Rounds
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(r.Rounds) != 3 {
		t.Fatalf("%d rounds, want 3: %s", len(r.Rounds), out)
	}
	ratios := make([]float64, 3)
	for i, res := range r.Rounds {
		if res.Completed != 200 || res.RatioToBare <= 0 || res.RatioToBarePublish <= 0 {
			t.Errorf("round %d: %+v", i+1, res)
		}
		// The rounds alternate which side runs first; the worker's figures count only
		// the worker's Graph calls either way.
		if res.BareFirst != (i == 1) || res.GraphCalls != 200 || res.PeakInFlight > 8 {
			t.Errorf("round %d: bare first %v, %d Graph calls, %d in flight at most; want bare first only in round 2, 200 calls, at most 8",
				i+1, res.BareFirst, res.GraphCalls, res.PeakInFlight)
		}
		ratios[i] = res.RatioToBare
	}
	slices.Sort(ratios)
	if r.MedianRatioToBare != ratios[1] || r.MedianIdsPerSecond <= 0 || r.MedianRatioToBarePublish <= 0 {
		t.Errorf("medians %+v, ratios to bare %v", r, ratios)
	}

	out = benchOK(t, "--ids", "100", "--concurrency", "8", "--rate", "0", "--rounds", "2")
	for _, want := range []string{"— round 1 of 2 —", "— round 2 of 2 —", "— over 2 rounds —", "the worker does", "(median; rounds: "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// benchOK runs the bench command with args and returns what it printed to stdout; any exit
// but exitOK fails the test.
func benchOK(t *testing.T, args ...string) []byte {
	t.Helper()
	if testing.Short() {
		t.Skip("a bench run: CI runs it, -short does not")
	}
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), append([]string{"bench"}, args...), env{}.get, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	return out.Bytes()
}

// TestBenchWatermillPeer builds the Watermill peer from its own module (peers/) and runs it
// in a bench round beside the worker, on the same ids, NATS server and simulated Graph.
func TestBenchWatermillPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the peer's module: CI runs it, -short does not")
	}
	t.Parallel()
	peer := filepath.Join(t.TempDir(), "watermill-peer")
	build := exec.Command("go", "build", "-C", "../peers", "-o", peer, "./watermill")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the peer: %v\n%s", err, out)
	}
	out := benchOK(t, "--ids", "400", "--rate", "0", "--concurrency", "16", "--preload", "--bare=false", "--peer", peer, "--json")
	var r bench.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.Completed != 400 || r.PeerIdsPerSec <= 0 || r.FirstToLastIdsPerSec <= 0 || r.RatioToPeer <= 0 || r.PeerCPUPerID <= 0 {
		t.Errorf("result %+v", r)
	}
}

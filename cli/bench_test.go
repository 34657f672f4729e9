package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/service"
)

// Benchmarks of the whole path, request consumed → Graph call → event published → ack,
// against the simulated Graph at zero latency with no rate limit. Run them with
//
//	go test -run '^$' -bench . -benchtime 1x ./cli
//
// They print ids/s, the publish-to-Graph latency at idle, and the worker's peak resident
// memory with 100,000 ids queued.

// benchSystem is a system for benchmarks: quiet logs, no goleak bookkeeping.
func benchWorker(b *testing.B, sys *system, overrides env) func() {
	b.Helper()
	e := env{}
	for k, v := range sys.env {
		e[k] = v
	}
	e["REPROCESSOR_LOG_LEVEL"] = "error"
	for k, v := range overrides {
		e[k] = v
	}
	cfg, _, err := config.Load(nil, e.get)
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan service.Started, 1)
	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, cfg, log, e.get, service.Options{GraphHTTP: sys.gt.Client(), Started: func(s service.Started) { up <- s }})
	}()
	select {
	case <-up:
	case err := <-done:
		b.Fatal(err)
	}
	return func() { cancel(); <-done }
}

func newBenchSystem(b *testing.B) *system {
	return newSystemTB(b, graphtest.Options{})
}

// BenchmarkThroughput measures end-to-end throughput with ids queued before the worker
// starts: the figure is ids settled per second.
func BenchmarkThroughput(b *testing.B) {
	for _, concurrency := range []int{64, 256} {
		b.Run(fmt.Sprintf("concurrency=%d", concurrency), func(b *testing.B) {
			const n = 20_000
			sys := newBenchSystem(b)
			sys.ensureStreams()
			b.ResetTimer()
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				sys.publish(payloads(ids(n, 1000+i))...)
				b.StartTimer()
				start := time.Now()
				stop := benchWorker(b, sys, env{"REPROCESSOR_CONCURRENCY": strconv.Itoa(concurrency), "REPROCESSOR_COALESCE_WINDOW": "0s"})
				waitEventCount(b, sys, (i+1)*n)
				total += time.Since(start)
				b.StopTimer()
				stop()
				b.StartTimer()
			}
			b.ReportMetric(float64(n*b.N)/total.Seconds(), "ids/s")
		})
	}
}

// waitEventCount waits until the events stream holds n messages.
func waitEventCount(tb testing.TB, sys *system, n int) {
	tb.Helper()
	st, err := sys.js.Stream(context.Background(), "REPROCESS_EVENTS")
	if err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		info, err := st.Info(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		if info.State.Msgs >= uint64(n) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("only %d of %d events", info.State.Msgs, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// BenchmarkIdleLatency publishes one id at a time to an idle worker and reports the
// 50th and 99th percentiles of the time from publish to the Graph call's arrival.
func BenchmarkIdleLatency(b *testing.B) {
	sys := newBenchSystem(b)
	stop := benchWorker(b, sys, nil)
	defer stop()
	const samples = 300
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		all := ids(samples, 2000+i)
		for j, id := range all {
			sent := time.Now()
			if _, err := sys.js.Publish(context.Background(), "entitlement.reprocess.requests", []byte(id)); err != nil {
				b.Fatal(err)
			}
			waitEventCount(b, sys, i*samples+j+1)
			calls := sys.gt.Calls()
			lat = append(lat, calls[len(calls)-1].Time.Sub(sent))
			time.Sleep(5 * time.Millisecond) // idle between requests
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkMemory100k runs the worker as its own process with 100,000 ids queued and
// reports its peak resident memory (VmHWM) once they are all settled.
func BenchmarkMemory100k(b *testing.B) {
	for i := 0; i < b.N; i++ {
		sys := newBenchSystem(b)
		sys.ensureStreams()
		const n = 100_000
		all := ids(n, 3000+i)
		for k := 0; k < n; k += 10_000 {
			sys.publish(payloads(all[k : k+10_000])...)
		}
		caFile, err := sys.gt.WriteCAFile(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "run")
		cmd.Env = append(os.Environ(), childEnv+"=1")
		for k, v := range sys.env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		cmd.Env = append(cmd.Env, "SSL_CERT_FILE="+caFile, "REPROCESSOR_LOG_LEVEL=error", "REPROCESSOR_CONCURRENCY=64", "REPROCESSOR_DATA_DIR="+filepath.Join(b.TempDir(), "unused"))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		waitEventCount(b, sys, n)
		hwm := vmHWM(b, cmd.Process.Pid)
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		b.ReportMetric(float64(hwm)/1024, "peak-RSS-MiB")
	}
}

// vmHWM reads a process's peak resident set size in KiB.
func vmHWM(tb testing.TB, pid int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	tb.Fatal("no VmHWM")
	return 0
}

package service

import (
	"errors"
	"log/slog"
	"math"
	"runtime/debug"
	"runtime/metrics"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// This file sets the garbage collector for a process that runs workers, where the
// environment does not.

// gcPercent is GOGC where it is not set. A worker's live heap is small (about 10 MiB at
// zero latency, a few tens of KiB per call in flight) and what it allocates per request
// is all garbage at once, so Go's default of 100 collects many times a second: about a
// seventh of the worker's CPU at full speed. At 400 the heap may grow to five times what is
// live (measured: 38 → 49 MiB at full speed, 112 → 192 MiB with 1,400 calls in flight) and
// the worker's CPU per request falls by a sixth.
const gcPercent = 400

// memoryLimitShare is the share of the container's memory limit (its cgroup's) that Go's
// soft limit is set to where GOMEMLIMIT is not set: the collector then works harder as
// the heap nears it instead of letting GOGC's headroom push the process past the limit.
// The rest is for what Go does not count (thread stacks outside the heap, the kernel's
// buffers), as Prometheus does with the same library.
const memoryLimitShare = 0.9

// GC is how the garbage collector was set, and from where.
type GC struct {
	Percent     int    // GOGC
	PercentFrom string // "GOGC" (the environment's) or "default"
	MemoryLimit int64  // Go's soft memory limit in bytes; 0: none
	LimitFrom   string // "GOMEMLIMIT", "cgroup" (memoryLimitShare of the container's) or "none"
}

// TuneGC sets GOGC to gcPercent where the environment does not set it, and Go's soft
// memory limit to memoryLimitShare of the container's memory limit where GOMEMLIMIT is not
// set and there is one. What the environment sets, the Go runtime has already applied and
// stays. The memory limit also bounds the calls in flight (ratelimit.MemoryBound), so
// call it before the workers start.
func TuneGC(getenv func(string) string, log *slog.Logger) GC {
	return tuneGC(getenv, memlimit.FromCgroup, log)
}

func tuneGC(getenv func(string) string, cgroupLimit func() (uint64, error), log *slog.Logger) GC {
	g := GC{PercentFrom: "GOGC", LimitFrom: "GOMEMLIMIT"}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
		g.PercentFrom = "default"
	}
	if getenv("GOMEMLIMIT") == "" {
		g.LimitFrom = "none"
		limit, err := cgroupLimit()
		switch {
		case err == nil && limit > 0:
			debug.SetMemoryLimit(int64(min(float64(limit)*memoryLimitShare, math.MaxInt64/2)))
			g.LimitFrom = "cgroup"
		case err != nil && !errors.Is(err, memlimit.ErrNoLimit) && !errors.Is(err, memlimit.ErrNoCgroup) && !errors.Is(err, memlimit.ErrCgroupsNotSupported):
			log.Warn("the container's memory limit could not be read; Go's soft memory limit is left unset (set GOMEMLIMIT)", "err", err)
		}
	}
	// What is in force, read without changing it (debug.SetGCPercent(-1) would switch the
	// collector off for a moment).
	in := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(in)
	g.Percent = int(in[0].Value.Uint64())
	if l := in[1].Value.Uint64(); l < math.MaxInt64 {
		g.MemoryLimit = int64(l)
	}
	log.Info("garbage collector", "gogc", g.Percent, "gogc_from", g.PercentFrom, "memory_limit_bytes", g.MemoryLimit, "memory_limit_from", g.LimitFrom)
	return g
}

package service

import (
	"bytes"
	"errors"
	"log/slog"
	"math"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// TestTuneGC: GOGC and the soft memory limit get the worker's defaults only where the
// environment sets none, the limit from the container's; what the environment sets stays.
// Not parallel: the settings are the process's.
func TestTuneGC(t *testing.T) {
	percent, limit := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1)
	debug.SetGCPercent(percent)
	t.Cleanup(func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	})
	const gib = 1 << 30
	cgroup := func(limit uint64, err error) func() (uint64, error) {
		return func() (uint64, error) { return limit, err }
	}
	for _, tc := range []struct {
		name        string
		env         map[string]string
		cgroup      func() (uint64, error)
		startGOGC   int   // what the runtime holds before, as the environment set it
		startLimit  int64 // likewise
		want        GC
		wantRuntime int64 // the soft limit after, MaxInt64 for none
		wantWarning bool  // the log warns that the container's limit could not be read
	}{
		{
			name: "nothing set, no container limit", cgroup: cgroup(0, memlimit.ErrNoLimit), startGOGC: 100, startLimit: math.MaxInt64,
			want:        GC{Percent: gcPercent, PercentFrom: "default", LimitFrom: "none"},
			wantRuntime: math.MaxInt64,
		},
		{
			name: "nothing set, a container of 1 GiB", cgroup: cgroup(gib, nil), startGOGC: 100, startLimit: math.MaxInt64,
			want:        GC{Percent: gcPercent, PercentFrom: "default", MemoryLimit: gib * 9 / 10, LimitFrom: "cgroup"},
			wantRuntime: gib * 9 / 10,
		},
		{
			name: "not in a cgroup", cgroup: cgroup(0, memlimit.ErrNoCgroup), startGOGC: 100, startLimit: math.MaxInt64,
			want:        GC{Percent: gcPercent, PercentFrom: "default", LimitFrom: "none"},
			wantRuntime: math.MaxInt64,
		},
		{
			name: "the cgroup unreadable", cgroup: cgroup(0, errors.New("permission denied")), startGOGC: 100, startLimit: math.MaxInt64,
			want:        GC{Percent: gcPercent, PercentFrom: "default", LimitFrom: "none"},
			wantRuntime: math.MaxInt64, wantWarning: true,
		},
		{
			name: "GOGC and GOMEMLIMIT set", env: map[string]string{"GOGC": "150", "GOMEMLIMIT": "256MiB"},
			cgroup: cgroup(gib, nil), startGOGC: 150, startLimit: 256 << 20,
			want:        GC{Percent: 150, PercentFrom: "GOGC", MemoryLimit: 256 << 20, LimitFrom: "GOMEMLIMIT"},
			wantRuntime: 256 << 20,
		},
		{
			name: "GOGC=off", env: map[string]string{"GOGC": "off"}, cgroup: cgroup(gib, nil), startGOGC: -1, startLimit: math.MaxInt64,
			want:        GC{Percent: -1, PercentFrom: "GOGC", MemoryLimit: gib * 9 / 10, LimitFrom: "cgroup"},
			wantRuntime: gib * 9 / 10,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(tc.startGOGC)
			debug.SetMemoryLimit(tc.startLimit)
			var logs bytes.Buffer
			got := tuneGC(func(k string) string { return tc.env[k] }, tc.cgroup, slog.New(slog.NewTextHandler(&logs, nil)))
			if warned := strings.Contains(logs.String(), "level=WARN"); warned != tc.wantWarning {
				t.Errorf("warned %v, want %v:\n%s", warned, tc.wantWarning, logs.String())
			}
			if !strings.Contains(logs.String(), "garbage collector") {
				t.Errorf("no log line says what the collector was set to:\n%s", logs.String())
			}
			if got != tc.want {
				t.Errorf("tuneGC = %+v, want %+v", got, tc.want)
			}
			if p := debug.SetGCPercent(-1); p != tc.want.Percent {
				t.Errorf("the runtime's GOGC is %d, want %d", p, tc.want.Percent)
			}
			debug.SetGCPercent(tc.startGOGC)
			if l := debug.SetMemoryLimit(-1); l != tc.wantRuntime {
				t.Errorf("the runtime's memory limit is %d, want %d", l, tc.wantRuntime)
			}
		})
	}
}

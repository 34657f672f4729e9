package drift

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// Observer receives what a scheduled scanner does (*metrics.Drift).
type Observer interface {
	ScanFinished(ok bool, drifted, findings int, took time.Duration, calls map[string]int64)
	Enqueued(n int)
}

// ScheduleConfig is a scheduled scanner: "reprocessor drift --every D".
type ScheduleConfig struct {
	Every time.Duration
	// Scan returns a new scan of the configured scope.
	Scan func() *Scan
	// Enqueue publishes drifted assignments for reprocessing as one run; nil: report only.
	Enqueue func(ctx context.Context, scan int, ds []Drifted) error
	// Observer, if set, is told of every scan and enqueue.
	Observer Observer
	// OnScan, if set, is called after each scan with its results (for the command's output).
	OnScan func(scan int, found []Drifted, sum Summary, err error)
	// State, if set, keeps what was enqueued across restarts (*bulk.ScannerState).
	State  State
	Logger *slog.Logger
}

// State keeps the assignments enqueued and still drifted, for a restarted scanner.
type State interface {
	Load(ctx context.Context) ([]string, error)
	Save(ctx context.Context, ids []string) error
}

// Scheduler scans every Every until its context ends, enqueuing only what drifted since it
// was last enqueued: an assignment stays enqueued while it stays drifted, and is enqueued
// again only once a scan has found it healed and a later one drifted again.
type Scheduler struct {
	cfg      ScheduleConfig
	mu       sync.Mutex
	enqueued map[string]bool // drifted at the last scan and enqueued
	lastErr  error
	scans    int
}

// NewScheduler returns a scheduler that has not started.
func NewScheduler(cfg ScheduleConfig) *Scheduler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Scheduler{cfg: cfg, enqueued: map[string]bool{}}
}

// Healthy reports nil while the last scan succeeded (or none has finished yet), else the
// error that ended it.
func (s *Scheduler) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Run scans at once, then every Every, until ctx ends. A scan that fails is logged and
// counted; the next one is still made.
func (s *Scheduler) Run(ctx context.Context) {
	if s.cfg.State != nil {
		ids, err := s.cfg.State.Load(ctx)
		if err != nil {
			s.cfg.Logger.Warn("drift scanner: the state of the last run could not be read; what is still drifted is enqueued again", "err", err)
		}
		s.mu.Lock()
		for _, id := range ids {
			s.enqueued[id] = true
		}
		s.mu.Unlock()
		if len(ids) > 0 {
			s.cfg.Logger.Info("drift scanner: resumed", "enqueued_and_drifted", len(ids))
		}
	}
	for {
		s.once(ctx)
		t := time.NewTimer(s.cfg.Every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// once makes one scan and enqueues what newly drifted.
func (s *Scheduler) once(ctx context.Context) {
	s.mu.Lock()
	s.scans++
	n := s.scans
	s.mu.Unlock()
	scan := s.cfg.Scan()
	found, sum, err := scan.Run(ctx)
	if ctx.Err() != nil {
		return // stopping: an interrupted scan says nothing
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.ScanFinished(err == nil, len(found), len(sum.Findings), sum.Elapsed, sum.Calls)
	}
	if err == nil {
		var fresh []Drifted
		still := make(map[string]bool, len(found))
		s.mu.Lock()
		for _, d := range found {
			if s.enqueued[d.AssignmentID] {
				still[d.AssignmentID] = true
			} else {
				fresh = append(fresh, d)
			}
		}
		s.mu.Unlock()
		if len(fresh) > 0 && s.cfg.Enqueue != nil {
			if eerr := s.cfg.Enqueue(ctx, n, fresh); eerr != nil {
				err = eerr
				s.cfg.Logger.Error("drift scan: enqueue failed; the drifted assignments are enqueued by the next scan", "scan", n, "err", eerr)
			} else {
				for _, d := range fresh {
					still[d.AssignmentID] = true
				}
				if s.cfg.Observer != nil {
					s.cfg.Observer.Enqueued(len(fresh))
				}
			}
		}
		s.mu.Lock()
		changed := len(still) != len(s.enqueued)
		for id := range still {
			changed = changed || !s.enqueued[id]
		}
		// What is no longer drifted is forgotten, so that drifting again enqueues it again.
		s.enqueued = still
		s.mu.Unlock()
		if changed && s.cfg.State != nil {
			if serr := s.cfg.State.Save(ctx, slices.Collect(maps.Keys(still))); serr != nil {
				s.cfg.Logger.Warn("drift scanner: state not saved; a restart enqueues what is still drifted again", "err", serr)
			}
		}
		s.cfg.Logger.Info("drift scan", "scan", n, "packages", sum.Packages, "assignments", sum.Assignments,
			"drifted", sum.Drifted, "enqueued", len(fresh), "skipped", sum.Skipped, "unchecked_roles", sum.UncheckedRoles,
			"findings", len(sum.Findings), "duration", sum.Elapsed.Round(time.Millisecond))
	} else {
		s.cfg.Logger.Error("drift scan failed", "scan", n, "err", err)
	}
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
	if s.cfg.OnScan != nil {
		s.cfg.OnScan(n, found, sum, err)
	}
}

package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/reprocessor/reprocessor/config"
)

// GridRates, GridLatencies and GridReplicas are the cells of bench --grid: a Graph that
// admits R calls/s, answering each call after a latency, against one replica or three.
var (
	GridRates     = []float64{20, 200, 1000}
	GridLatencies = []time.Duration{50 * time.Millisecond, 300 * time.Millisecond, time.Second}
	GridReplicas  = []int{1, 3}
)

// Cell is one run of the grid, summed up against its R.
type Cell struct {
	R                float64 `json:"r"`
	LatencyMS        int     `json:"latencyMs"`
	Replicas         int     `json:"replicas"`
	Seconds          float64 `json:"seconds"`
	AcceptedToR      float64 `json:"acceptedToR"`       // accepted/s over the second half of the run, over R
	ThrottledShare   float64 `json:"throttledShare"`    // of all Graph calls, answered 429
	SecondsTo90      float64 `json:"secondsTo90"`       // until the accepted rate first reached 0.9·R; -1: never
	PeakInFlight     int     `json:"peakInFlight"`      // Graph calls answered at once, at most
	PeakRSSMiB       float64 `json:"peakRssMiB"`        // of the whole bench process (NATS, simulated Graph, workers)
	CPUPerIDMicros   float64 `json:"cpuPerIdMicros"`    // of the whole bench process
	Target           float64 `json:"target"`            // 0.9 with one replica, 0.85 with three
	Met              bool    `json:"met"`               // accepted ≥ target·R, 429s ≤ 5%, 0.9·R within 60 s
	AcceptedPerSec   float64 `json:"acceptedPerSecond"` // over the second half
	CompletedPerCall float64 `json:"completedPerCall"`
}

// CellName names a cell as --grid-only takes it: "20/50ms/3" (R, latency, replicas).
func CellName(r float64, lat time.Duration, replicas int) string {
	return fmt.Sprintf("%g/%s/%d", r, lat, replicas)
}

// RunGrid runs every cell (or those named in only) with cfg (the worker's defaults unless the caller changed them),
// each for cell long, and reports each cell to progress as it ends.
func RunGrid(ctx context.Context, cfg config.Config, cell time.Duration, only []string, log *slog.Logger, stderr io.Writer, progress func(Cell)) ([]Cell, error) {
	var cells []Cell
	for _, replicas := range GridReplicas {
		for _, lat := range GridLatencies {
			for _, r := range GridRates {
				if len(only) > 0 && !slices.Contains(only, CellName(r, lat, replicas)) {
					continue
				}
				if ctx.Err() != nil {
					return cells, ctx.Err()
				}
				// More ids than the run can work, queued before it starts: the backlog of a
				// bulk remediation, so that Graph, not the publisher, sets the pace.
				ids := int(math.Ceil(r*cell.Seconds()*1.2)) + 1000
				res, err := Run(ctx, cfg, Options{
					IDs: ids, Replicas: replicas, Latency: lat, LatencyMax: lat, Throttle: r,
					Duration: cell, Preload: true, RetryAfter: "0.1",
				}, log, stderr)
				if err != nil {
					return cells, fmt.Errorf("cell R=%g latency=%s replicas=%d: %w", r, lat, replicas, err)
				}
				c := Cell{
					R: r, LatencyMS: int(lat / time.Millisecond), Replicas: replicas, Seconds: res.Seconds,
					AcceptedPerSec: res.SteadyAcceptedPerSec, AcceptedToR: res.SteadyAcceptedPerSec / r,
					ThrottledShare: res.ThrottledShare, SecondsTo90: res.SecondsTo90,
					PeakInFlight: res.PeakInFlight, PeakRSSMiB: res.PeakRSSMiB, CPUPerIDMicros: res.CPUPerIDMicros,
					Target: 0.9, CompletedPerCall: float64(res.Completed) / float64(max(res.GraphCalls, 1)),
				}
				if replicas > 1 {
					c.Target = 0.85
				}
				c.Met = c.AcceptedToR >= c.Target && c.ThrottledShare <= 0.05 && c.SecondsTo90 >= 0 && c.SecondsTo90 <= 60
				cells = append(cells, c)
				if progress != nil {
					progress(c)
				}
			}
		}
	}
	return cells, nil
}

// GridHeader and Line print the grid as a table, one line per cell.
const GridHeader = "replicas  R/s   latency  accepted/R  429s    to 0.9·R  peak in flight  RSS MiB  CPU µs/id  target"

func (c Cell) Line() string {
	to90 := "never"
	if c.SecondsTo90 >= 0 {
		to90 = fmt.Sprintf("%.1fs", c.SecondsTo90)
	}
	verdict := "met"
	if !c.Met {
		verdict = "MISSED"
	}
	return fmt.Sprintf("%-9d %-5g %-8s %-11.3f %-7s %-9s %-15d %-8.1f %-10.1f %.2f %s",
		c.Replicas, c.R, (time.Duration(c.LatencyMS) * time.Millisecond).String(), c.AcceptedToR,
		fmt.Sprintf("%.2f%%", 100*c.ThrottledShare), to90, c.PeakInFlight, c.PeakRSSMiB, c.CPUPerIDMicros, c.Target, verdict)
}

// GridSummary says how many cells met their targets.
func GridSummary(cells []Cell) string {
	met := 0
	var missed []string
	for _, c := range cells {
		if c.Met {
			met++
		} else {
			missed = append(missed, fmt.Sprintf("R=%g/%dms/%d", c.R, c.LatencyMS, c.Replicas))
		}
	}
	s := fmt.Sprintf("%d of %d cells met their targets", met, len(cells))
	if len(missed) > 0 {
		s += " (missed: " + strings.Join(missed, ", ") + ")"
	}
	return s
}

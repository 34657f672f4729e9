package service

import (
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/metrics"
	"github.com/reprocessor/reprocessor/queue"
	"github.com/reprocessor/reprocessor/ratelimit"
	"github.com/reprocessor/reprocessor/worker"
)

// rateControl is the worker's Graph rate limiter and its coordination with the other
// replicas of the deployment: pauses are shared whatever the rate; with REPROCESSOR_RATE=auto
// the adaptive limiter's cuts and each replica's share of the rate are too. The throttle
// gate is their one owner: replica control pauses it, the adaptive limiter reports its cuts
// to it, and it tells replica control what this process heard.
type rateControl struct {
	gate     *worker.Gate
	limiter  worker.Limiter // nil: unlimited
	rate     func() float64 // the limiter's current rate, which sizes the worker's concurrency; nil: unlimited
	adaptive *ratelimit.Adaptive
	control  *queue.Control
}

// feedback is what the worker tells of Graph's answers: the adaptive limiter, if any.
func (rc *rateControl) feedback() worker.RateFeedback {
	if rc.adaptive == nil {
		return nil // not a nil *Adaptive in a non-nil interface
	}
	return rc.adaptive
}

// startRateControl builds the gate and the limiter the configuration asks for and joins the
// deployment's control subjects on nc. Close leaves them.
func startRateControl(cfg config.Config, nc *nats.Conn, m *metrics.Metrics, log *slog.Logger) (*rateControl, error) {
	rc := &rateControl{gate: worker.NewGate(nil, m)}
	switch {
	case cfg.RateAuto:
		a, err := ratelimit.New(ratelimit.Config{
			Ceiling:  cfg.RateCeiling,
			Initial:  cfg.RateInitial,
			Step:     cfg.RateStep,
			Logger:   log,
			OnChange: m.SetRateLimit,
			OnCut:    rc.gate.Cut,
		})
		if err != nil {
			return nil, err
		}
		rc.limiter, rc.adaptive, rc.rate = a, a, a.Rate
	case cfg.Rate > 0:
		fixed := cfg.Rate
		rc.limiter, rc.rate = ratelimit.Fixed(fixed), func() float64 { return fixed }
		m.SetRateLimit(cfg.Rate)
	default:
		m.SetRateLimit(0)
	}
	cc := queue.ControlConfig{
		Prefix:   cfg.SubjectPrefix,
		Instance: cfg.Instance,
		Pause:    rc.gate.PauseUntil,
		Logger:   log.With("component", "replicas"),
	}
	if rc.adaptive != nil {
		cc.Rate = rc.adaptive
	}
	c, err := queue.StartControl(nc, cc)
	if err != nil {
		return nil, fmt.Errorf("share throttling with other replicas: %w", err)
	}
	rc.control = c
	rc.gate.ShareWith(c)
	return rc, nil
}

// describe says which rate is in force, for the log.
func (rc *rateControl) describe(cfg config.Config) any {
	switch {
	case cfg.RateAuto:
		return fmt.Sprintf("auto (from %g/s, ceiling %g/s)", rc.adaptive.Rate(), cfg.RateCeiling)
	case cfg.Rate > 0:
		return cfg.Rate
	}
	return "unlimited"
}

// Close leaves the deployment's control subjects, handing this replica's share of the rate
// to the others.
func (rc *rateControl) Close() { rc.control.Close() }

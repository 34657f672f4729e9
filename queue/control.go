package queue

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/ratelimit"
	"github.com/reprocessor/reprocessor/worker"
)

// SharedRate is the part of an adaptive rate limiter (ratelimit.Adaptive) that the replicas
// of a deployment coordinate.
type SharedRate interface {
	// Rate returns this replica's current rate in calls per second.
	Rate() float64
	// Discovered reports whether the rate has been shaped by throttling (the slow start
	// is over), so that a replica starting late may adopt it.
	Discovered() bool
	// PeerThrottled cuts the rate because another replica was throttled.
	PeerThrottled()
	// SetReplicas says how many live replicas share the deployment's rate.
	SetReplicas(n int)
	// Adopt sets the rate to this replica's share of the deployment's discovered rate.
	Adopt(share float64)
	// Lead makes this replica the leader of a grid of of replicas (until until, unless
	// renewed), grows the rate if due and grow is set (at a heartbeat, not at the answer to
	// a hello), and returns the leader's next slot, the rate and whether it is discovered
	// (ratelimit.Adaptive.Lead).
	Lead(of int, until time.Time, grow bool) (start time.Time, rate float64, discovered bool)
	// Follow puts this replica on the leader's grid and takes the leader's rate; a rate
	// of 0 moves only the grid.
	Follow(g ratelimit.Grid, rate float64, discovered bool)
}

// ControlConfig configures a Control.
type ControlConfig struct {
	// Prefix is the subject prefix of the deployment (DefaultPrefix when empty); control
	// messages go to <prefix>.control.throttle and <prefix>.control.replicas.
	Prefix string
	// Instance names this replica in logs.
	Instance string
	// Interval between heartbeats; a replica silent for three intervals is counted gone.
	// Default 1s.
	Interval time.Duration
	// Rate is this replica's adaptive limiter; nil when the rate is fixed, and then only
	// pauses are shared.
	Rate SharedRate
	// Pause applies a pause heard from another replica (worker.Gate.PauseUntil).
	Pause  func(until time.Time)
	Logger *slog.Logger
	Now    func() time.Time // default time.Now
}

// Control shares throttling between the replicas of one deployment over core NATS, so that
// together they stay under Graph's limit:
//
//   - a Retry-After seen by one replica is published on <prefix>.control.throttle and every
//     replica pauses until it passes;
//   - a cut of the adaptive rate (a throttled answer) is published there too, and every
//     replica cuts its own rate once (the limiter's cooldown makes one throttling episode
//     one cut, however many replicas saw 429s);
//   - every replica publishes a heartbeat on <prefix>.control.replicas each interval with
//     its rate and any pause in force. Each counts the live replicas N and holds 1/N of the
//     deployment's rate: increases are divided by N, and when N changes each scales its
//     rate by old/new N, so the deployment's total is kept when a replica joins or dies.
//   - a replica that starts announces itself; the others answer at once with a heartbeat,
//     so it learns within a round trip of a pause in force and of the rate the others have
//     discovered, and takes its share of that rather than probing from the start.
//   - the live replica with the lowest id leads: its heartbeats are ticks, which carry its
//     rate and when its next call is due. Each replica places its calls on the grid that
//     tick anchors (ratelimit.Grid), at its rank among the live ids, so that the
//     deployment's calls reach Graph evenly spaced; the leader grows the rate at each tick
//     and the others take it. A tick not renewed within three intervals lapses, and each
//     replica paces on its own again (as with a leader of a release before ticks).
//
// The alternative, a JetStream key-value bucket holding the deployment's rate, needs a
// writable stream that must itself survive a leader election, and read-modify-write races
// between replicas; plain subjects need no storage and carry one small message per replica
// per second. The cost is that state lives only in the running replicas: when all of them
// stop, the next start probes again.
type Control struct {
	cfg     ControlConfig
	nc      *nats.Conn
	id      string
	throttl string // subject of pauses and cuts
	beats   string // subject of heartbeats

	mu          sync.Mutex
	peers       map[string]peer
	pausedUntil time.Time // the latest pause shared or heard
	adopted     bool
	started     time.Time
	answered    time.Time // the last hello answered
	lastTick    controlMsg
	tickHeard   time.Time // when lastTick was heard; zero before any

	sub       *nats.Subscription
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	// byeMu orders the bye after every hello and beat: the subscription's handler may
	// still be answering a message while Close runs, and a beat after the bye would have
	// the others count this replica again until it falls silent.
	byeMu sync.Mutex
	gone  bool // the bye is out: no more hellos or beats
}

type peer struct {
	seen       time.Time
	rate       float64
	discovered bool
}

// controlMsg is one control message. Durations, not instants, cross the wire, so that
// clocks need not agree.
type controlMsg struct {
	Kind       string  `json:"kind"` // pause, cut, beat, hello, bye
	ID         string  `json:"id"`
	Instance   string  `json:"instance,omitempty"`
	Rate       float64 `json:"rate,omitempty"`
	Discovered bool    `json:"discovered,omitempty"`
	PauseMS    int64   `json:"pauseMs,omitempty"`  // a pause in force for this much longer
	Tick       bool    `json:"tick,omitempty"`     // a beat of the leader, anchoring the grid
	SlotInUS   int64   `json:"slotInUs,omitempty"` // a tick: the leader's next call, this long from now
}

// StartControl subscribes to the deployment's control subjects, announces this replica and
// starts its heartbeats. Close stops them.
func StartControl(nc *nats.Conn, cfg ControlConfig) (*Control, error) {
	if cfg.Pause == nil {
		return nil, errors.New("control: Pause is required")
	}
	cfg.Interval = cmp.Or(cfg.Interval, time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	prefix := cmp.Or(cfg.Prefix, DefaultPrefix)
	var b [8]byte
	_, _ = rand.Read(b[:])
	c := &Control{
		cfg:     cfg,
		nc:      nc,
		id:      hex.EncodeToString(b[:]),
		throttl: prefix + ".control.throttle",
		beats:   prefix + ".control.replicas",
		peers:   make(map[string]peer),
		started: cfg.Now(),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	sub, err := nc.Subscribe(prefix+".control.*", c.receive)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s.control.*: %w", prefix, err)
	}
	c.sub = sub
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("control subscription: %w", err)
	}
	c.publish(c.beats, controlMsg{Kind: "hello"})
	go c.heartbeat()
	return c, nil
}

// SharePause tells the other replicas to pause until the given time (a Retry-After). A
// pause that ends no later than one already shared or heard is not published again, so a
// burst of 429s makes one message.
func (c *Control) SharePause(until time.Time) {
	now := c.cfg.Now()
	c.mu.Lock()
	if !until.After(c.pausedUntil.Add(50 * time.Millisecond)) {
		c.mu.Unlock()
		return
	}
	c.pausedUntil = until
	c.mu.Unlock()
	c.publish(c.throttl, controlMsg{Kind: "pause", PauseMS: max(until.Sub(now).Milliseconds(), 1)})
}

// ShareCut tells the other replicas that this one cut its rate on a throttled answer
// (worker.Gate.Cut passes on ratelimit.Config.OnCut).
func (c *Control) ShareCut(float64) { c.publish(c.throttl, controlMsg{Kind: "cut"}) }

// Replicas returns the number of live replicas, this one included.
func (c *Control) Replicas() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return 1 + len(c.peers)
}

// Close says goodbye, so that the others take over this replica's share at once, and stops.
// Calling it again does nothing.
func (c *Control) Close() {
	c.closeOnce.Do(func() {
		close(c.stop)
		<-c.done
		c.publish(c.beats, controlMsg{Kind: "bye"})
		_ = c.sub.Unsubscribe()
	})
}

func (c *Control) publish(subject string, m controlMsg) {
	if m.Kind == "hello" || m.Kind == "beat" || m.Kind == "bye" {
		c.byeMu.Lock()
		defer c.byeMu.Unlock()
		if c.gone {
			return
		}
		c.gone = m.Kind == "bye"
	}
	m.ID, m.Instance = c.id, c.cfg.Instance
	data, err := json.Marshal(m)
	if err != nil {
		return
	}
	if err := c.nc.Publish(subject, data); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		c.cfg.Logger.Debug("control message not published", "subject", subject, "err", err)
	}
}

// Bounds on what a control message may say: anything outside them is not obeyed.
const (
	maxControlBytes = 1024 // a longer message is ignored
	maxPeers        = 256  // replicas counted at most; more are ignored until some leave
	maxPeerRate     = 1e6  // calls per second a heartbeat may report
	maxInstanceLen  = 128  // longest instance name logged
	controlIDLen    = 16   // hex digits of a replica id
	maxPauseMS      = int64(worker.MaxPause / time.Millisecond)
	maxSlotInUS     = int64(10 * time.Second / time.Microsecond) // the floor's interval is 2 s
)

// parseControl decodes and validates one control message: nil for one that does not parse
// or says what no replica would (an unknown kind, a malformed id, a negative or non-finite
// rate, a negative pause). A pause longer than worker.MaxPause is cut to it and reported.
func parseControl(data []byte) (m *controlMsg, capped bool) {
	if len(data) > maxControlBytes {
		return nil, false
	}
	var cm controlMsg
	if err := json.Unmarshal(data, &cm); err != nil {
		return nil, false
	}
	switch cm.Kind {
	case "pause", "cut", "beat", "hello", "bye":
	default:
		return nil, false
	}
	if len(cm.ID) != controlIDLen || strings.Trim(cm.ID, "0123456789abcdef") != "" {
		return nil, false
	}
	if !(cm.Rate >= 0 && cm.Rate <= maxPeerRate) || cm.PauseMS < 0 || cm.SlotInUS < 0 || cm.SlotInUS > maxSlotInUS {
		return nil, false
	}
	if cm.Tick && cm.Kind != "beat" {
		cm.Tick = false
	}
	if cm.PauseMS > maxPauseMS {
		cm.PauseMS, capped = maxPauseMS, true
	}
	cm.Instance = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, cm.Instance)
	if len(cm.Instance) > maxInstanceLen {
		cm.Instance = cm.Instance[:maxInstanceLen]
	}
	return &cm, capped
}

func (c *Control) receive(msg *nats.Msg) {
	m, capped := parseControl(msg.Data)
	if m == nil {
		c.cfg.Logger.Debug("ignoring a control message that does not parse", "subject", msg.Subject, "bytes", len(msg.Data))
		return
	}
	if m.ID == c.id {
		return
	}
	if capped {
		c.cfg.Logger.Warn("a control message asked for a pause longer than the cap: capped", "replica", m.Instance, "replica_id", m.ID, "cap", worker.MaxPause)
	}
	now := c.cfg.Now()
	if m.PauseMS > 0 {
		pause := time.Duration(m.PauseMS) * time.Millisecond
		until := now.Add(pause)
		c.mu.Lock()
		later := until.After(c.pausedUntil)
		if later {
			c.pausedUntil = until
		}
		c.mu.Unlock()
		if later {
			c.cfg.Pause(until)
			c.cfg.Logger.Info("pausing Graph calls: another replica was told to retry later", "replica", m.Instance, "replica_id", m.ID, "for", pause)
		}
	}
	switch m.Kind {
	case "cut":
		if c.cfg.Rate != nil {
			c.cfg.Rate.PeerThrottled()
		}
	case "hello", "beat":
		c.mu.Lock()
		_, known := c.peers[m.ID]
		full := !known && len(c.peers) >= maxPeers
		if !full {
			c.peers[m.ID] = peer{seen: now, rate: m.Rate, discovered: m.Discovered}
		}
		c.mu.Unlock()
		if full {
			c.cfg.Logger.Warn("ignoring a replica: already counting the most replicas there may be", "replica", m.Instance, "max", maxPeers)
			return
		}
		if !known {
			c.cfg.Logger.Info("replica joined", "replica", m.Instance)
			c.update()
		}
		// After update: SetReplicas scales the rate by old/new, and the rate a tick carries
		// is already the leader's share of the new count, so it must have the last word.
		switch {
		case m.Tick:
			c.follow(m, now)
		case !known:
			c.refollow()
		}
		// A hello is answered at once, so that the newcomer learns the rate and any pause.
		// The leader answers with a tick, and ticks when it hears of a replica it did not
		// know, so that the grid is re-ranked at once and a newcomer's first calls are on it.
		if (m.Kind == "hello" || (!known && c.leads())) && c.mayAnswer(now) {
			c.tick(false)
		}
	case "bye":
		c.mu.Lock()
		_, known := c.peers[m.ID]
		delete(c.peers, m.ID)
		c.mu.Unlock()
		if known {
			c.cfg.Logger.Info("replica left", "replica", m.Instance)
			c.update()
			c.refollow()
			if c.leads() && c.mayAnswer(now) { // the leader may be the one that left
				c.tick(false)
			}
		}
	}
}

// leads reports whether this replica is the leader of the live ones.
func (c *Control) leads() bool {
	leader, _, _ := c.place()
	return leader == c.id
}

// update tells the limiter how many replicas are live and, once, adopts the share of the
// rate the others discovered.
func (c *Control) update() {
	if c.cfg.Rate == nil {
		return
	}
	c.mu.Lock()
	n := 1 + len(c.peers)
	var total float64
	var discovered bool
	for _, p := range c.peers {
		total += p.rate
		discovered = discovered || p.discovered
	}
	adopt := !c.adopted && discovered && c.cfg.Now().Sub(c.started) < 3*c.cfg.Interval
	if discovered {
		c.adopted = true // only a replica that has just started adopts
	}
	c.mu.Unlock()
	c.cfg.Rate.SetReplicas(n)
	if adopt {
		// The others scale themselves by (n-1)/n when they count this replica.
		c.cfg.Rate.Adopt(total / float64(n))
	}
}

// mayAnswer reports whether a hello, a join or a leave may be answered now: at most one
// answer a tenth of an interval, so that a flood of hellos or of made-up replicas on the
// control subject is not echoed as a flood.
func (c *Control) mayAnswer(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.answered) < c.cfg.Interval/10 {
		return false
	}
	c.answered = now
	return true
}

// place returns the id of the leader (the lowest live id), this replica's rank among the
// live ids and their number.
func (c *Control) place() (leader string, rank, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	leader = c.id
	for id := range c.peers {
		if id < c.id {
			rank++
		}
		leader = min(leader, id)
	}
	return leader, rank, 1 + len(c.peers)
}

// follow puts this replica on the grid of a tick heard at now, and takes its rate, when it
// comes from the leader; the tick is kept for refollow.
func (c *Control) follow(m *controlMsg, now time.Time) {
	if c.onGrid(m, now, m.Rate) {
		c.mu.Lock()
		c.lastTick, c.tickHeard = *m, now // a tick from another than the leader never displaces it
		c.mu.Unlock()
	}
}

// onGrid puts this replica on the grid of a tick heard at now with rate (0: the grid
// only), if the tick is the leader's; it reports whether it was.
func (c *Control) onGrid(m *controlMsg, now time.Time, rate float64) bool {
	if c.cfg.Rate == nil {
		return false
	}
	leader, rank, n := c.place()
	if m.ID != leader || n < 2 {
		return false
	}
	g := ratelimit.Grid{
		Start: now.Add(time.Duration(m.SlotInUS) * time.Microsecond),
		Rank:  rank,
		Of:    n,
		Until: now.Add(3 * c.cfg.Interval),
	}
	c.cfg.Rate.Follow(g, rate, m.Discovered)
	return true
}

// refollow re-ranks this replica on the last tick's grid when the live replicas change, so
// that a replica that learns of the others one by one (a newcomer hearing their answers)
// does not stay on a grid of too few until the next tick. The rate stays as it is: it
// may have been cut since that tick.
func (c *Control) refollow() {
	c.mu.Lock()
	m, heard := c.lastTick, c.tickHeard
	c.mu.Unlock()
	if !heard.IsZero() && c.cfg.Now().Sub(heard) < 3*c.cfg.Interval {
		c.onGrid(&m, heard, 0) // a rate of 0: ratelimit.Adaptive.Follow only moves the grid
	}
}

// tick is the heartbeat of the leader: it anchors the grid and carries the rate. Of the
// other replicas it is a plain heartbeat. grow is set at the heartbeat, whose interval
// paces the deployment's growth, and not when answering a hello.
func (c *Control) tick(grow bool) {
	leader, _, n := c.place()
	if c.cfg.Rate == nil || leader != c.id || n < 2 {
		c.beat()
		return
	}
	now := c.cfg.Now()
	start, r, discovered := c.cfg.Rate.Lead(n, now.Add(3*c.cfg.Interval), grow)
	m := controlMsg{Kind: "beat", Tick: true, Rate: r, Discovered: discovered,
		SlotInUS: min(max(start.Sub(now).Microseconds(), 0), maxSlotInUS)}
	c.withPause(&m, now)
	c.publish(c.beats, m)
}

func (c *Control) beat() {
	m := controlMsg{Kind: "beat"}
	if c.cfg.Rate != nil {
		m.Rate, m.Discovered = c.cfg.Rate.Rate(), c.cfg.Rate.Discovered()
	}
	c.withPause(&m, c.cfg.Now())
	c.publish(c.beats, m)
}

// withPause adds to m the pause in force, if any.
func (c *Control) withPause(m *controlMsg, now time.Time) {
	c.mu.Lock()
	if left := c.pausedUntil.Sub(now); left > 0 {
		m.PauseMS = max(left.Milliseconds(), 1)
	}
	c.mu.Unlock()
}

func (c *Control) heartbeat() {
	defer close(c.done)
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.tick(true)
		now := c.cfg.Now()
		var gone []string
		c.mu.Lock()
		for id, p := range c.peers {
			if now.Sub(p.seen) > 3*c.cfg.Interval {
				delete(c.peers, id)
				gone = append(gone, id)
			}
		}
		c.mu.Unlock()
		if len(gone) > 0 {
			c.cfg.Logger.Info("replicas silent, counted gone", "count", len(gone))
		}
		c.update()
		if len(gone) > 0 {
			c.refollow()
		}
	}
}

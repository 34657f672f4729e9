// Package bulk holds the parts of bulk remediation that talk to JetStream: publishing many
// request messages under a run id with a bounded window of asynchronous acknowledgements,
// the run record that lets a run be resumed without publishing an id twice, following the
// events of a run to their outcomes, the report of a run, and listing and replaying dead
// letters.
package bulk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/idlist"
)

// Run records. The requests stream drops a repeated Nats-Msg-Id only within its duplicate
// window (2 minutes by default); a run resumed later must know by itself what it already
// published. Every acknowledged id is therefore appended, in batches, to the subject
// "<prefix>.runs.<run id>" of the RUNS stream, and a run started with an existing run id
// reads that subject first and skips what it finds there.
const (
	DefaultRunsStream = "REPROCESS_RUNS"
	DefaultRunsMaxAge = 30 * 24 * time.Hour
	recordBatch       = 1000 // ids per run record message (about 37 KB)
)

// ValidRunID reports whether id may name a run: 1 to 64 letters, digits, '-' or '_' (it
// becomes a subject token and part of every Nats-Msg-Id).
func ValidRunID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// RunsConfig names the run record stream.
type RunsConfig struct {
	Stream   string        // default DefaultRunsStream
	Prefix   string        // the subject prefix; records go to "<prefix>.runs.<run id>"
	MaxAge   time.Duration // default DefaultRunsMaxAge
	Replicas int           // default 1
	NoCreate bool          // only look the stream up
}

func (c RunsConfig) withDefaults() RunsConfig {
	if c.Stream == "" {
		c.Stream = DefaultRunsStream
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultRunsMaxAge
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	return c
}

// subject returns the run record subject of runID.
func (c RunsConfig) subject(runID string) string { return c.Prefix + ".runs." + runID }

// EnsureRunsStream creates the run record stream when it does not exist (unless NoCreate).
func EnsureRunsStream(ctx context.Context, js jetstream.JetStream, c RunsConfig) error {
	c = c.withDefaults()
	_, err := js.Stream(ctx, c.Stream)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("look up stream %s: %w", c.Stream, err)
	}
	if c.NoCreate {
		return fmt.Errorf("stream %s does not exist and creation is turned off", c.Stream)
	}
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        c.Stream,
		Description: "reprocessor: the ids each enqueue run published, so that a run can be resumed",
		Subjects:    []string{c.Prefix + ".runs.>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.MaxAge,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create stream %s: %w", c.Stream, err)
	}
	return nil
}

// PriorRun is what a run id published before.
type PriorRun struct {
	Published *idlist.Set
	Started   time.Time // when its first record was stored; zero for a new run
}

// LoadRun reads the run record of runID.
func LoadRun(ctx context.Context, js jetstream.JetStream, c RunsConfig, runID string) (PriorRun, error) {
	c = c.withDefaults()
	prior := PriorRun{Published: idlist.NewSet(0)}
	err := readAll(ctx, js, c.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{c.subject(runID)}}, func(m jetstream.Msg, md *jetstream.MsgMetadata) error {
		if prior.Started.IsZero() {
			prior.Started = md.Timestamp
		}
		for line := range bytes.SplitSeq(m.Data(), []byte{'\n'}) {
			if id, ok := idlist.Parse(string(line)); ok {
				prior.Published.Add(id)
			}
		}
		return nil
	})
	if err != nil {
		return prior, fmt.Errorf("read run record of %s: %w", runID, err)
	}
	return prior, nil
}

// errStopRead stops readAll early without an error.
var errStopRead = errors.New("stop")

// readAll calls fn for every message of stream matching cfg that is stored when it starts,
// in order. fn may return errStopRead.
func readAll(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig, fn func(jetstream.Msg, *jetstream.MsgMetadata) error) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("consumer on %s: %w", stream, err)
	}
	// The ordered consumer's Info, unlike the rest of jetstream's API, does not bound a
	// context without a deadline: a request the account may not make would wait forever.
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	info, err := cons.Info(ictx)
	cancel()
	if err != nil {
		return fmt.Errorf("consumer on %s: %w", stream, err)
	}
	remaining := info.NumPending
	for remaining > 0 {
		// Ask for exactly what is left, so that no fetch outlives this function.
		batch, err := cons.Fetch(int(min(remaining, 500)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("fetch from %s: %w", stream, err)
		}
		n := 0
		var stop error
		for m := range batch.Messages() {
			if stop != nil {
				continue // let the fetch finish
			}
			n++
			md, err := m.Metadata()
			if err != nil {
				stop = fmt.Errorf("message of %s: %w", stream, err)
				continue
			}
			remaining = md.NumPending
			if err := fn(m, md); err != nil {
				stop = err
				continue
			}
			if remaining == 0 {
				stop = errStopRead
			}
		}
		if stop != nil {
			if errors.Is(stop, errStopRead) {
				return nil
			}
			return stop
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("fetch from %s: %w", stream, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if n == 0 {
			return nil // nothing more within the wait: what was there has been read
		}
	}
	return nil
}

// runRecord appends acknowledged ids to a run's record in batches. It is used by one
// goroutine at a time.
type runRecord struct {
	js      jetstream.JetStream
	subject string
	buf     bytes.Buffer
	n       int
}

func (r *runRecord) add(ctx context.Context, id idlist.ID) error {
	r.buf.WriteString(id.String())
	r.buf.WriteByte('\n')
	r.n++
	if r.n >= recordBatch {
		return r.flush(ctx)
	}
	return nil
}

func (r *runRecord) flush(ctx context.Context) error {
	if r.n == 0 {
		return nil
	}
	var err error
	for attempt := range 5 {
		if _, err = r.js.Publish(ctx, r.subject, r.buf.Bytes()); err == nil {
			r.buf.Reset()
			r.n = 0
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	return fmt.Errorf("record published ids in %s: %w", r.subject, err)
}

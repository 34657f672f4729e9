package bulk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ScannerStateRunID names the subject "<prefix>.runs.drift-scanner" of the runs stream
// where the scheduled drift scanner keeps what it has enqueued.
const ScannerStateRunID = "drift-scanner"

// ScannerState keeps, in one message of the runs stream, the assignments a scheduled drift
// scanner has enqueued and still saw drifted at its last scan, so that a restarted scanner
// enqueues none of them again. Only the newest message matters; older ones are purged.
type ScannerState struct {
	js      jetstream.JetStream
	cfg     RunsConfig
	subject string
	max     int // ids that fit a message
}

type scannerState struct {
	Saved time.Time `json:"saved"`
	IDs   []string  `json:"ids"`
	Cut   int       `json:"cut,omitempty"` // ids left out: the message would not fit
}

// NewScannerState readies the state on js (creating the runs stream unless NoCreate);
// maxPayload is the server's (nats.Conn.MaxPayload).
func NewScannerState(ctx context.Context, js jetstream.JetStream, cfg RunsConfig, maxPayload int64) (*ScannerState, error) {
	cfg = cfg.withDefaults()
	if err := EnsureRunsStream(ctx, js, cfg); err != nil {
		return nil, err
	}
	// An id costs 39 bytes in the JSON array; keep 4 KiB for the rest.
	return &ScannerState{js: js, cfg: cfg, subject: cfg.subject(ScannerStateRunID), max: max(int(maxPayload-4096)/39, 0)}, nil
}

// Load returns the ids saved last, or none.
func (s *ScannerState) Load(ctx context.Context) ([]string, error) {
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", s.cfg.Stream, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, s.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.subject, err)
	}
	var v scannerState
	if err := json.Unmarshal(m.Data, &v); err != nil {
		return nil, fmt.Errorf("read %s: %w", s.subject, err)
	}
	return v.IDs, nil
}

// Save replaces the saved ids with ids. Ids beyond what one message holds are left out (a
// restart enqueues those once more) and counted in the message.
func (s *ScannerState) Save(ctx context.Context, ids []string) error {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	v := scannerState{Saved: time.Now().UTC(), IDs: ids}
	if len(ids) > s.max {
		v.IDs, v.Cut = ids[:s.max], len(ids)-s.max
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ack, err := s.js.Publish(ctx, s.subject, data)
	if err != nil {
		return fmt.Errorf("save the scanner's state to %s: %w", s.subject, err)
	}
	if st, err := s.js.Stream(ctx, s.cfg.Stream); err == nil {
		// Older states are of no use; the stream's max age would drop them in time anyway.
		_ = st.Purge(ctx, jetstream.WithPurgeSubject(s.subject), jetstream.WithPurgeSequence(ack.Sequence))
	}
	if v.Cut > 0 {
		return fmt.Errorf("saved %d of %d enqueued ids: the rest do not fit a message of this server", len(v.IDs), len(ids))
	}
	return nil
}

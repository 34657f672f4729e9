package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/reprocessor/reprocessor/graph/graphtest"
)

// The peer's subjects and streams, apart from the worker's.
const (
	peerPrefix         = "peer.reprocess"
	peerRequestsStream = "PEER_REQUESTS"
	peerEventsStream   = "PEER_EVENTS"
)

// peerResult is what a run of the peer measured.
type peerResult struct {
	idsPerSec float64 // from its first stored event to its last
	cpuPerID  float64 // the peer process's own CPU, µs per id
}

// runPeer queues n ids for the peer binary at path (peers/watermill), runs it as a child
// process on the same NATS server and simulated Graph with concurrency messages at once,
// and measures how fast it stores an event per id.
func runPeer(ctx context.Context, js jetstream.JetStream, gt *graphtest.Server, natsURL, dir, path string, n, concurrency int) (peerResult, error) {
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: peerRequestsStream, Subjects: []string{peerPrefix + ".requests"}, Storage: jetstream.FileStorage}); err != nil {
		return peerResult{}, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: peerEventsStream, Subjects: []string{peerPrefix + ".events.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
		return peerResult{}, err
	}
	if err := publishIDs(ctx, js, peerPrefix+".requests", n, 0, nil); err != nil {
		return peerResult{}, err
	}
	caFile, err := gt.WriteCAFile(dir)
	if err != nil {
		return peerResult{}, err
	}
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "PEER_PREFIX="+peerPrefix, "PEER_CONCURRENCY="+strconv.Itoa(concurrency))
	for k, v := range gt.Env(caFile) {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	if err := cmd.Start(); err != nil {
		return peerResult{}, fmt.Errorf("start the peer %s: %w", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	events, err := js.Stream(ctx, peerEventsStream)
	if err != nil {
		return peerResult{}, err
	}
	deadline := time.Now().Add(10 * time.Minute)
	var info *jetstream.StreamInfo
	for {
		select {
		case err := <-exited:
			return peerResult{}, fmt.Errorf("the peer exited early: %v", err)
		case <-ctx.Done():
			return peerResult{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if info, err = events.Info(ctx); err != nil {
			return peerResult{}, err
		}
		if info.State.Msgs >= uint64(n) {
			break
		}
		if time.Now().After(deadline) {
			return peerResult{}, errors.New("the peer did not store an event per id within 10 minutes")
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	<-exited
	res := peerResult{}
	if span := info.State.LastTime.Sub(info.State.FirstTime); span > 0 {
		res.idsPerSec = float64(n-1) / span.Seconds()
	}
	if ps := cmd.ProcessState; ps != nil {
		res.cpuPerID = float64((ps.UserTime() + ps.SystemTime()).Microseconds()) / float64(n)
	}
	return res, nil
}

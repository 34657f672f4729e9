package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/config"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/logging"
	"github.com/reprocessor/reprocessor/service"
)

// natsContexts writes NATS CLI contexts under a fresh XDG_CONFIG_HOME, as "nats context
// add" and "nats context select" do, and selects selected.
func natsContexts(t *testing.T, selected string, contexts map[string]string) {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "nats", "context")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, body := range contexts {
		if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if selected != "" {
		if err := os.WriteFile(filepath.Join(root, "nats", "context.txt"), []byte(selected), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("XDG_CONFIG_HOME", root)
}

// A NATS CLI user with a context selected and no NATS_URL: the worker connects where the
// context says, says so, and never starts an embedded server instead.
func TestNATSContextSelected(t *testing.T) {
	sys := newSystem(t, graphtest.Options{})
	natsContexts(t, "dev", map[string]string{"dev": `{"description":"test","url":"` + sys.nats.ClientURL() + `"}`})
	e := env{}
	for k, v := range sys.env {
		e[k] = v
	}
	delete(e, "NATS_URL")
	e["REPROCESSOR_EMBEDDED_ADDR"] = "127.0.0.1:1" // an embedded server could not start here

	var out, errOut syncBuffer
	if code := Main(context.Background(), []string{"check-config"}, e.get, &out, &errOut); code != exitOK ||
		!strings.Contains(out.String(), `nats: NATS context "dev" (selected with nats context select)`) {
		t.Errorf("check-config exit %d:\n%s%s", code, out.String(), errOut.String())
	}

	cfg, _, err := config.Load(nil, e.get)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log, _ := logging.New(logs, "info", "text", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up := make(chan service.Started, 1)
	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, cfg, log, e.get, service.Options{GraphHTTP: sys.gt.Client(), Started: func(s service.Started) { up <- s }})
	}()
	select {
	case s := <-up:
		if s.NATSURL != sys.nats.ClientURL() {
			t.Errorf("connected to %s, want the context's %s", s.NATSURL, sys.nats.ClientURL())
		}
	case err := <-done:
		t.Fatalf("run: %v\n%s", err, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatal("not started")
	}
	if !strings.Contains(logs.String(), `from="NATS context \"dev\" (selected with nats context select)"`) {
		t.Errorf("the log does not say where the connection came from:\n%s", logs.String())
	}
	sys.publish(payloads(ids(3, 71))...)
	if evs := sys.events(3); len(evs) != 3 {
		t.Errorf("%d events", len(evs))
	}
	cancel()
	<-done

	// A context named (NATS_CONTEXT) wins over the selected one; one that does not exist is
	// an error, not the embedded server.
	e["NATS_CONTEXT"] = "missing"
	out, errOut = syncBuffer{}, syncBuffer{}
	if code := Main(context.Background(), []string{"check-config"}, e.get, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), `NATS context "missing"`) {
		t.Errorf("check-config with a missing context: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	cfg, _, _ = config.Load(nil, e.get)
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	if err := service.Run(rctx, cfg, log, e.get, service.Options{GraphHTTP: sys.gt.Client()}); err == nil || !strings.Contains(err.Error(), `NATS context "missing"`) {
		t.Errorf("run with a missing context: %v", err)
	}
}

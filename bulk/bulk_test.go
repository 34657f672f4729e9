package bulk

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTrackerAndReport(t *testing.T) {
	t.Parallel()
	a, _ := idlist.Parse("0a1b2c3d-0000-4000-8000-000000000001")
	b, _ := idlist.Parse("0a1b2c3d-0000-4000-8000-000000000002")
	tr := NewTracker("run1", true)
	tr.Add(a, 1)
	tr.Add(b, 2)
	if tr.Add(a, 3) {
		t.Fatal("a duplicate was added")
	}
	now := time.Now()
	ev := func(kind, id, corr string) *worker.Event {
		return &worker.Event{Type: worker.TypePrefix + kind, Subject: id, Time: now,
			Data: worker.EventData{AssignmentID: id, CorrelationID: corr, HTTPStatus: 202, CompletedAt: now}}
	}
	tr.Observe(ev(worker.KindAccepted, a.String(), "other-run")) // not ours
	tr.Observe(ev(worker.KindAccepted, a.String(), "run1"))
	f := ev(worker.KindFailed, b.String(), "run1")
	f.Data.HTTPStatus, f.Data.Error = 404, &worker.EventError{Code: worker.CodeNotFound}
	tr.Observe(f)
	if _, remaining := tr.Counts(); remaining != 1 {
		t.Fatalf("remaining = %d, want 1 (a waits for its settled state)", remaining)
	}
	settled := true
	sc := ev(worker.KindStateChanged, a.String(), "")
	sc.Data.State, sc.Data.Settled = "delivered", &settled
	tr.Observe(sc)
	if ch, done := tr.allDone(); !done {
		<-ch
	}
	rows := tr.Rows(OutcomePending)
	s := Summarize(rows)
	if s.Outcomes["accepted"] != 1 || s.Outcomes["failed"] != 1 || s.ErrorCodes["not_found"] != 1 || s.States["delivered"] != 1 {
		t.Fatalf("summary = %+v", s)
	}
	var buf bytes.Buffer
	if err := WriteReport(&buf, "csv", rows); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), strings.Join(ReportColumns, ",")+"\n") || !strings.Contains(buf.String(), ",failed,not_found,404,") {
		t.Fatalf("csv report:\n%s", buf.String())
	}
	buf.Reset()
	if err := WriteReport(&buf, "json", rows); err != nil || !strings.Contains(buf.String(), `"settled":true`) {
		t.Fatalf("json report: %v\n%s", err, buf.String())
	}
}

func TestValidRunID(t *testing.T) {
	t.Parallel()
	for id, ok := range map[string]bool{"run-1_A": true, "": false, "a.b": false, "a b": false, strings.Repeat("x", 65): false, "x>": false} {
		if ValidRunID(id) != ok {
			t.Errorf("ValidRunID(%q) = %v", id, !ok)
		}
	}
}

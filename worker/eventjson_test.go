package worker

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// TestAppendJSONMatchesEncodingJSON compares appendJSON with json.Marshal over events made
// of hostile strings (quotes, HTML, control characters, invalid UTF-8, U+2028), odd times
// (zones, nanoseconds, the zero time, years json refuses) and every optional field set or not.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	strs := []string{
		"", "a", "be0c0000-0000-4000-8000-000000000001", `quote " and \ backslash`, "<script>&amp;</script>",
		"tab\there\nnewline\r\b\f\x00\x1f\x7f", "é ü 漢字 🙂", "\u2028\u2029", "bad \xff\xfe utf8", "\xc3",
		"entitlement.reprocess.accepted", "REPROCESS_REQUESTS-42-accepted",
	}
	zones := []*time.Location{time.UTC, time.FixedZone("plus", 5*3600+30*60), time.FixedZone("minus", -8*3600),
		time.FixedZone("seconds", 3600+7), time.FixedZone("day", 24*3600), time.FixedZone("far", -25*3600)}
	times := []time.Time{{}, time.Date(2026, 11, 30, 4, 5, 6, 0, time.UTC), time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 120000000, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Now()}
	rng := rand.New(rand.NewPCG(1, 2))
	str := func() string { return strs[rng.IntN(len(strs))] }
	tm := func() time.Time { return times[rng.IntN(len(times))].In(zones[rng.IntN(len(zones))]) }
	for i := range 20000 {
		e := Event{SpecVersion: str(), ID: str(), Source: str(), Type: str(), Subject: str(), Time: tm(), DataContentType: str(),
			Data: EventData{AssignmentID: str(), Attempts: rng.IntN(5) - 1, HTTPStatus: []int{0, 200, 429, -1}[rng.IntN(4)],
				GraphRequestID: str(), ClientRequestID: str(), CorrelationID: str(), RequestedBy: str(), Reason: str(),
				RequestedAt: tm(), CompletedAt: tm(), PreviousState: str(), State: str(), Status: str(), Final: rng.IntN(2) == 0}}
		if rng.IntN(2) == 0 {
			e.Data.Error = &EventError{Code: str(), Message: str()}
		}
		if n := rng.IntN(3); n > 0 {
			settled := n == 1
			e.Data.Settled = &settled
		}
		want, wantErr := json.Marshal(&e)
		got, err := e.appendJSON([]byte("prefix"))
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("event %d: appendJSON error %v, json.Marshal error %v", i, err, wantErr)
		}
		if err != nil {
			if string(got) != "prefix" {
				t.Fatalf("event %d: on error appendJSON returned %q, want the prefix untouched", i, got)
			}
			continue
		}
		if !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("event %d:\n got %s\nwant prefix%s", i, got, want)
		}
	}
}

func BenchmarkEventJSON(b *testing.B) {
	now := time.Now().UTC()
	e := Event{SpecVersion: "1.0", ID: "REPROCESS_REQUESTS-123456-accepted", Source: "reprocessor/worker-1",
		Type: TypePrefix + KindAccepted, Subject: "be0c0000-0000-4000-8000-000000000001", Time: now, DataContentType: "application/json",
		Data: EventData{AssignmentID: "be0c0000-0000-4000-8000-000000000001", Attempts: 1, HTTPStatus: 200,
			GraphRequestID: "00000000-0000-4000-8000-000000000000", ClientRequestID: "00000000-0000-4000-8000-000000000000",
			RequestedAt: now, CompletedAt: now}}
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(&e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("JSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.JSON(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

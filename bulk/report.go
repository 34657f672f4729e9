package bulk

import (
	"bufio"
	"cmp"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ReportColumns are the columns of a CSV report, and the members of a JSON one.
var ReportColumns = []string{"assignmentId", "inputLine", "outcome", "errorCode", "httpStatus", "graphRequestId",
	"attempts", "state", "settled", "requestedAt", "completedAt", "stateAt", "restored", "missing"}

// reportRow is a Row as written in a JSON report.
type reportRow struct {
	AssignmentID   string   `json:"assignmentId"`
	InputLine      int      `json:"inputLine,omitempty"`
	Outcome        string   `json:"outcome"`
	ErrorCode      string   `json:"errorCode,omitempty"`
	HTTPStatus     int      `json:"httpStatus,omitempty"`
	GraphRequestID string   `json:"graphRequestId,omitempty"`
	Attempts       int      `json:"attempts,omitempty"`
	State          string   `json:"state,omitempty"`
	Settled        *bool    `json:"settled,omitempty"`
	RequestedAt    string   `json:"requestedAt,omitempty"`
	CompletedAt    string   `json:"completedAt,omitempty"`
	StateAt        string   `json:"stateAt,omitempty"`
	Restored       *bool    `json:"restored,omitempty"`
	Missing        []string `json:"missing,omitempty"`
}

func toReport(r Row) reportRow {
	out := reportRow{
		AssignmentID: r.ID.String(), InputLine: r.Line, Outcome: r.Outcome, ErrorCode: r.ErrorCode,
		HTTPStatus: r.HTTPStatus, GraphRequestID: r.GraphRequestID, Attempts: r.Attempts, State: r.State,
		RequestedAt: stamp(r.RequestedAt), CompletedAt: stamp(r.CompletedAt), StateAt: stamp(r.StateAt),
	}
	if r.SettledKnown {
		out.Settled = &r.Settled
	}
	if r.RestoredKnown {
		out.Restored, out.Missing = &r.Restored, r.Missing
	}
	return out
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// WriteReport writes rows as CSV (format "csv", with a header row of ReportColumns) or as a
// JSON array of objects (format "json").
func WriteReport(w io.Writer, format string, rows []Row) error {
	bw := bufio.NewWriter(w)
	switch format {
	case "csv":
		cw := csv.NewWriter(bw)
		_ = cw.Write(ReportColumns)
		for _, r := range rows {
			x := toReport(r)
			settled := ""
			if x.Settled != nil {
				settled = strconv.FormatBool(*x.Settled)
			}
			restored := ""
			if x.Restored != nil {
				restored = strconv.FormatBool(*x.Restored)
			}
			_ = cw.Write([]string{x.AssignmentID, itoa(x.InputLine), x.Outcome, x.ErrorCode, itoa(x.HTTPStatus), x.GraphRequestID,
				itoa(x.Attempts), x.State, settled, x.RequestedAt, x.CompletedAt, x.StateAt, restored, strings.Join(x.Missing, "; ")})
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	case "json":
		bw.WriteString("[")
		for i, r := range rows {
			if i > 0 {
				bw.WriteString(",")
			}
			bw.WriteString("\n  ")
			b, err := json.Marshal(toReport(r))
			if err != nil {
				return fmt.Errorf("write report: %w", err)
			}
			bw.Write(b)
		}
		bw.WriteString("\n]\n")
	default:
		return fmt.Errorf("report format %q: want csv or json", format)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func itoa(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// Summary counts rows per outcome, per error code and per final state.
type Summary struct {
	Outcomes, ErrorCodes, States map[string]int
	Resources                    map[string]int // resource verification: restored, not restored
}

// Summarize counts rows.
func Summarize(rows []Row) Summary {
	s := Summary{Outcomes: map[string]int{}, ErrorCodes: map[string]int{}, States: map[string]int{}, Resources: map[string]int{}}
	for _, r := range rows {
		s.Outcomes[r.Outcome]++
		if r.ErrorCode != "" {
			s.ErrorCodes[r.ErrorCode]++
		}
		if r.State != "" {
			st := r.State
			if r.SettledKnown && !r.Settled {
				st += " (not settled)"
			}
			s.States[st]++
		}
		if r.RestoredKnown {
			if r.Restored {
				s.Resources["restored"]++
			} else {
				s.Resources["not restored"]++
			}
		}
	}
	return s
}

// Line formats counts as "k1 n1, k2 n2", largest first.
func Line(m map[string]int) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), strings.Compare(a, b)) })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

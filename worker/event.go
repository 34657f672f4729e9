package worker

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Event kinds; an event's type is "entitlement.reprocess.<kind>".
const (
	KindAccepted     = "accepted"
	KindFailed       = "failed"
	KindRejected     = "rejected"
	KindCoalesced    = "coalesced"
	KindStateChanged = "state_changed"
)

// TypePrefix prefixes every event type.
const TypePrefix = "entitlement.reprocess."

// Outcomes are the terminal event kinds: every request ends in exactly one.
var Outcomes = []string{KindAccepted, KindFailed, KindRejected, KindCoalesced}

// EventKinds lists every event kind.
var EventKinds = []string{KindAccepted, KindFailed, KindRejected, KindCoalesced, KindStateChanged}

// Error codes carried in failed and rejected events and in the Reprocess-Error header.
const (
	CodeInvalidPayload   = "invalid_payload"
	CodeInvalidID        = "invalid_id"
	CodePayloadTooLarge  = "payload_too_large"
	CodeBadRequest       = "bad_request"
	CodeNotFound         = "not_found"
	CodeForbidden        = "forbidden"
	CodeUnauthorized     = "unauthorized"
	CodeConflict         = "conflict"
	CodeRetriesExhausted = "retries_exhausted"
	CodeAPIError         = "api_error"
)

// ErrorCodes lists every error code.
var ErrorCodes = []string{
	CodeInvalidPayload, CodeInvalidID, CodePayloadTooLarge, CodeBadRequest, CodeNotFound,
	CodeForbidden, CodeUnauthorized, CodeConflict, CodeRetriesExhausted, CodeAPIError,
}

// Retry reasons, the label of reprocessor_retries_total.
const (
	RetryThrottled    = "throttled"
	RetryServerError  = "server_error"
	RetryNetwork      = "network"
	RetryTimeout      = "timeout"
	RetryUnauthorized = "unauthorized"
)

// RetryReasons lists every retry reason.
var RetryReasons = []string{RetryThrottled, RetryServerError, RetryNetwork, RetryTimeout, RetryUnauthorized}

// Event is a CloudEvents 1.0 document in structured JSON mode.
type Event struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject,omitempty"`
	Time            time.Time `json:"time"`
	DataContentType string    `json:"datacontenttype"`
	DataSchema      string    `json:"dataschema,omitempty"`
	Instance        string    `json:"instance,omitempty"` // extension attribute: the replica that published it
	// TraceParent is the CloudEvents distributed-tracing extension attribute: the W3C
	// traceparent of the span that produced the event (tracing on, or a traceparent on the
	// request).
	TraceParent string    `json:"traceparent,omitempty"`
	Data        EventData `json:"data"`
}

// SchemaBase is where the JSON Schemas of the events' data are published (the repository's
// schemas/events/), one per kind: SchemaBase + "<kind>.v1.json".
const SchemaBase = "https://raw.githubusercontent.com/reprocessor/reprocessor/main/schemas/events/"

// DataSchema is the dataschema of an event of kind.
func DataSchema(kind string) string { return SchemaBase + kind + ".v1.json" }

// EventData is an event's data, in camelCase.
type EventData struct {
	AssignmentID    string      `json:"assignmentId,omitempty"`
	Attempts        int         `json:"attempts"`
	HTTPStatus      int         `json:"httpStatus,omitempty"`
	GraphRequestID  string      `json:"graphRequestId,omitempty"`
	ClientRequestID string      `json:"clientRequestId,omitempty"`
	Error           *EventError `json:"error,omitempty"`
	CorrelationID   string      `json:"correlationId,omitempty"`
	RequestedBy     string      `json:"requestedBy,omitempty"`
	Reason          string      `json:"reason,omitempty"`
	RequestedAt     time.Time   `json:"requestedAt"`
	CompletedAt     time.Time   `json:"completedAt"`
	PreviousState   string      `json:"previousState,omitempty"`
	State           string      `json:"state,omitempty"`
	Status          string      `json:"status,omitempty"`
	Settled         *bool       `json:"settled,omitempty"`
	// Final marks the last state_changed event of a request: tracking ended, because the
	// state settled, the deadline passed (settled false) or the state could not be read.
	Final bool `json:"final,omitempty"`
	// Restored and Missing are the resource verification's verdict on a delivered
	// assignment (REPROCESSOR_VERIFY_RESOURCES): whether the target holds every group and
	// app role of its package, and the resource roles still absent.
	Restored *bool    `json:"restored,omitempty"`
	Missing  []string `json:"missing,omitempty"`
}

// EventError is the error of a failed or rejected event.
type EventError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Kind returns the event's kind, the last part of its type.
func (e *Event) Kind() string { return strings.TrimPrefix(e.Type, TypePrefix) }

// RequestRef names one request message for the ids derived from it: the stream's name, the
// message's sequence and the time the stream stored it, in Unix nanoseconds
// ("REPROCESS_REQUESTS-42-1764655200123456789"). It is the same on every delivery, whichever
// replica handles it, and differs between incarnations of the stream (an operator who
// deletes and recreates it starts the sequences at 1 again, never the store times).
func RequestRef(stream string, seq uint64, stored time.Time) string {
	return stream + "-" + strconv.FormatUint(seq, 10) + "-" + strconv.FormatInt(stored.UnixNano(), 10)
}

// OutcomeEventID is the id of a request's terminal event, whatever the outcome: when a
// redelivery reaches another outcome than the first delivery, the stream keeps the first
// and drops the second as a duplicate.
func OutcomeEventID(d Delivery) string {
	return RequestRef(d.Stream, d.StreamSeq, d.Timestamp) + "-outcome"
}

// MaxFieldBytes bounds the text fields of an event that come from Graph (an error message,
// a state, a status): a longer value is cut, ending in TruncatedMarker, so that an event
// always fits the server's max payload.
const MaxFieldBytes = 1024

// TruncatedMarker ends a field that was cut.
const TruncatedMarker = "...[truncated]"

// cutField returns s cut to at most n bytes, on a rune boundary, ending in TruncatedMarker
// when it was cut.
func cutField(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n-len(TruncatedMarker), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + TruncatedMarker
}

// Shrunk returns a copy of e whose free-text fields (error message, state, status, the
// request's correlation id, requester and reason) are cut to n bytes each: what a publisher
// sends when the whole event did not fit the server's limits.
func (e *Event) Shrunk(n int) *Event {
	c := *e
	if e.Data.Error != nil {
		ee := *e.Data.Error
		ee.Message = cutField(ee.Message, n)
		c.Data.Error = &ee
	}
	d := &c.Data
	for _, f := range []*string{&d.CorrelationID, &d.RequestedBy, &d.Reason, &d.PreviousState, &d.State, &d.Status} {
		*f = cutField(*f, n)
	}
	return &c
}

package worker

import (
	"strconv"
	"strings"
	"time"
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
	Data            EventData `json:"data"`
}

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
}

// EventError is the error of a failed or rejected event.
type EventError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Kind returns the event's kind, the last part of its type.
func (e *Event) Kind() string { return strings.TrimPrefix(e.Type, TypePrefix) }

// EventID derives an event's id from the request's stream sequence and the event kind, so
// that a redelivered request produces the same id and the stream drops the duplicate.
func EventID(stream string, seq uint64, kind string) string {
	return stream + "-" + strconv.FormatUint(seq, 10) + "-" + kind
}

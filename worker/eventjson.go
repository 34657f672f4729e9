package worker

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// jsonSize is room for a typical event's JSON: an accepted event is about 450 bytes.
const jsonSize = 640

// JSON returns the event's JSON encoding: byte for byte what json.Marshal produces, written
// without reflection. An event is encoded for every request, and json.Marshal's reflection
// and its buffer copies were the largest share of the worker's own CPU time per id in
// `reprocessor bench --rate 0`. A string that needs escaping and a time outside what RFC
// 3339 can carry are handed to encoding/json, so that its rules (HTML-safe escapes, U+2028,
// invalid UTF-8, the error for a year past 9999) stay the only ones.
func (e *Event) JSON() ([]byte, error) { return e.appendJSON(make([]byte, 0, jsonSize)) }

// appendJSON appends the event's JSON encoding to dst; on error it returns dst unchanged.
func (e *Event) appendJSON(dst []byte) ([]byte, error) {
	var err error
	b := append(dst, `{"specversion":`...)
	b = appendString(b, e.SpecVersion)
	b = appendField(b, "id", e.ID)
	b = appendField(b, "source", e.Source)
	b = appendField(b, "type", e.Type)
	if e.Subject != "" {
		b = appendField(b, "subject", e.Subject)
	}
	if b, err = appendTime(append(b, `,"time":`...), e.Time); err != nil {
		return dst, err
	}
	b = appendField(b, "datacontenttype", e.DataContentType)
	if e.DataSchema != "" {
		b = appendField(b, "dataschema", e.DataSchema)
	}
	if e.Instance != "" {
		b = appendField(b, "instance", e.Instance)
	}
	if e.TraceParent != "" {
		b = appendField(b, "traceparent", e.TraceParent)
	}
	if b, err = e.Data.appendJSON(append(b, `,"data":`...)); err != nil {
		return dst, err
	}
	return append(b, '}'), nil
}

func (d *EventData) appendJSON(b []byte) ([]byte, error) {
	var err error
	b = append(b, '{')
	if d.AssignmentID != "" {
		b = appendString(append(b, `"assignmentId":`...), d.AssignmentID)
		b = append(b, ',')
	}
	b = strconv.AppendInt(append(b, `"attempts":`...), int64(d.Attempts), 10)
	if d.HTTPStatus != 0 {
		b = strconv.AppendInt(append(b, `,"httpStatus":`...), int64(d.HTTPStatus), 10)
	}
	if d.GraphRequestID != "" {
		b = appendField(b, "graphRequestId", d.GraphRequestID)
	}
	if d.ClientRequestID != "" {
		b = appendField(b, "clientRequestId", d.ClientRequestID)
	}
	if d.Error != nil {
		b = appendString(append(b, `,"error":{"code":`...), d.Error.Code)
		b = appendField(b, "message", d.Error.Message)
		b = append(b, '}')
	}
	for _, f := range [...]struct{ name, value string }{
		{"correlationId", d.CorrelationID}, {"requestedBy", d.RequestedBy}, {"reason", d.Reason},
	} {
		if f.value != "" {
			b = appendField(b, f.name, f.value)
		}
	}
	if b, err = appendTime(append(b, `,"requestedAt":`...), d.RequestedAt); err != nil {
		return b, err
	}
	if b, err = appendTime(append(b, `,"completedAt":`...), d.CompletedAt); err != nil {
		return b, err
	}
	for _, f := range [...]struct{ name, value string }{
		{"previousState", d.PreviousState}, {"state", d.State}, {"status", d.Status},
	} {
		if f.value != "" {
			b = appendField(b, f.name, f.value)
		}
	}
	if d.Settled != nil {
		b = strconv.AppendBool(append(b, `,"settled":`...), *d.Settled)
	}
	if d.Final {
		b = append(b, `,"final":true`...)
	}
	if d.Restored != nil {
		b = strconv.AppendBool(append(b, `,"restored":`...), *d.Restored)
	}
	if d.Missing != nil {
		b = append(b, `,"missing":[`...)
		for i, m := range d.Missing {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, m)
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// appendField appends `,"name":"value"`; name needs no escaping.
func appendField(b []byte, name, value string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendString(b, value)
}

// appendString appends s as a JSON string. Printable ASCII other than the characters
// encoding/json escapes is copied as it is; anything else goes through encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendTime appends t as time.Time's MarshalJSON does: RFC 3339 with nanoseconds, quoted.
// Years outside 0–9999 and zone offsets of a day or more go through MarshalJSON, which
// refuses them, and so do offsets with seconds, which RFC 3339 cannot carry.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	_, off := t.Zone()
	if y := t.Year(); y < 0 || y > 9999 || off%60 != 0 || off <= -24*3600 || off >= 24*3600 {
		return marshalTime(b, t)
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

func marshalTime(b []byte, t time.Time) ([]byte, error) {
	q, err := t.MarshalJSON()
	if err != nil {
		return b, err
	}
	return append(b, q...), nil
}

package worker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/reprocessor/reprocessor/idlist"
)

// MaxPayload is the largest request payload accepted, in bytes (DESIGN section 2).
const MaxPayload = 4096

// Request is a decoded, validated request message.
type Request struct {
	ID            string // the assignment id: a GUID in lower case
	CorrelationID string
	RequestedBy   string
	Reason        string
}

// DecodeError says why a payload was rejected; Code is one of the rejected error codes.
type DecodeError struct {
	Code   string // CodeInvalidPayload, CodeInvalidID or CodePayloadTooLarge
	Detail string
}

func (e *DecodeError) Error() string { return e.Code + ": " + e.Detail }

// Decode validates a request payload: either the bare assignment id (surrounding white space
// ignored) or a JSON object whose only required member is "id". An id must be exactly a
// 36-character 8-4-4-4-12 hexadecimal GUID; upper case is normalised to lower case and
// nothing else is: no braces, prefixes, suffixes or escapes.
func Decode(data []byte) (Request, error) {
	if len(data) > MaxPayload {
		return Request{}, &DecodeError{CodePayloadTooLarge, fmt.Sprintf("payload is %d bytes, the limit is %d", len(data), MaxPayload)}
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return Request{}, &DecodeError{CodeInvalidPayload, "empty payload"}
	}
	if len(trimmed) == 36 { // the common case, a bare GUID: nothing below could refuse it
		if id, ok := idlist.Normalize(string(trimmed)); ok {
			return Request{ID: id}, nil
		}
	}
	if !utf8.Valid(trimmed) {
		return Request{}, &DecodeError{CodeInvalidPayload, "payload is not UTF-8 text"}
	}
	if trimmed[0] == '{' && (json.Valid(trimmed) || bytes.ContainsAny(trimmed, "\":")) {
		return decodeJSON(trimmed)
	}
	if trimmed[0] == '[' || trimmed[0] == '"' {
		return Request{}, &DecodeError{CodeInvalidPayload, "payload must be an assignment id or a JSON object with an \"id\" member"}
	}
	for _, b := range trimmed {
		if (b < 0x20 && b != '\t' && b != '\n' && b != '\r') || b == 0x7f {
			return Request{}, &DecodeError{CodeInvalidPayload, "payload contains control characters"}
		}
	}
	if fields := bytes.Fields(trimmed); len(fields) > 1 {
		ids := 0
		for _, f := range fields {
			if _, ok := idlist.Normalize(string(f)); ok {
				ids++
			}
		}
		if ids > 1 {
			return Request{}, &DecodeError{CodeInvalidPayload, fmt.Sprintf("%d ids in one message: send one id per message", ids)}
		}
	}
	id, ok := idlist.Normalize(string(trimmed))
	if !ok {
		return Request{}, &DecodeError{CodeInvalidID, "not an assignment id (a GUID such as 0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12): " + quote(trimmed)}
	}
	return Request{ID: id}, nil
}

// jsonRequest is the JSON form of a request; only id is required.
type jsonRequest struct {
	ID            *string `json:"id"`
	CorrelationID *string `json:"correlationId"`
	RequestedBy   *string `json:"requestedBy"`
	Reason        *string `json:"reason"`
}

func decodeJSON(data []byte) (Request, error) {
	if err := checkSingleID(data); err != nil {
		return Request{}, err
	}
	var jr jsonRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&jr); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return Request{}, &DecodeError{CodeInvalidPayload, fmt.Sprintf("JSON member %q must be a string", typeErr.Field)}
		}
		return Request{}, &DecodeError{CodeInvalidPayload, "invalid JSON: " + err.Error()}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Request{}, &DecodeError{CodeInvalidPayload, "invalid JSON: data after the object"}
	}
	if jr.ID == nil {
		return Request{}, &DecodeError{CodeInvalidPayload, "JSON object has no \"id\" member"}
	}
	id, ok := idlist.Normalize(*jr.ID)
	if !ok {
		return Request{}, &DecodeError{CodeInvalidID, "\"id\" is not an assignment id (a GUID such as 0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12): " + quote([]byte(*jr.ID))}
	}
	return Request{ID: id, CorrelationID: deref(jr.CorrelationID), RequestedBy: deref(jr.RequestedBy), Reason: deref(jr.Reason)}, nil
}

// checkSingleID rejects an object that names "id" more than once: encoding/json would
// silently keep the last one, so two ids in one message would quietly lose one.
func checkSingleID(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // the opening brace
		return &DecodeError{CodeInvalidPayload, "invalid JSON: " + err.Error()}
	}
	ids := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return &DecodeError{CodeInvalidPayload, "invalid JSON: " + err.Error()}
		}
		if key, _ := tok.(string); key == "id" {
			ids++
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return &DecodeError{CodeInvalidPayload, "invalid JSON: " + err.Error()}
		}
	}
	if ids > 1 {
		return &DecodeError{CodeInvalidPayload, "JSON object has more than one \"id\" member: send one id per message"}
	}
	return nil
}

// quote shows at most 80 bytes of untrusted input, escaped.
func quote(b []byte) string {
	if len(b) > 80 {
		return fmt.Sprintf("%q…", b[:80])
	}
	return fmt.Sprintf("%q", b)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

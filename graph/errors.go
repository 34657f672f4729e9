package graph

import (
	"encoding/json"
	"errors"
	"strings"
)

// Sentinel errors. A method's error wraps one of them; when it wraps ErrToken, ErrTimeout or
// ErrNetwork, no HTTP answer from Graph was had.
var (
	// ErrInvalidID: the assignment id is not a GUID; no HTTP call was made.
	ErrInvalidID = errors.New("invalid assignment id")
	// ErrInvalidQuery: a list query or next link was refused; no HTTP call was made.
	ErrInvalidQuery = errors.New("invalid list query")
	// ErrToken: no token could be obtained; no HTTP call to Graph was made (or, after a 401,
	// the refreshed token could not be had). The error carries the authority's reason.
	ErrToken = errors.New("graph token unavailable")
	// ErrTimeout: the call did not complete within its timeout.
	ErrTimeout = errors.New("graph call timed out")
	// ErrNetwork: the call failed in transport.
	ErrNetwork = errors.New("graph call failed in transport")
	// ErrDecode: Graph answered 2xx with a body that could not be decoded; the Result is
	// returned with the error.
	ErrDecode = errors.New("graph answer could not be decoded")
)

// APIError is Graph's error body:
// {"error":{"code","message","innerError":{"request-id","client-request-id","date"}}}.
type APIError struct {
	Code            string
	Message         string
	RequestID       string
	ClientRequestID string
	Date            string
}

// Error implements error.
func (e *APIError) Error() string {
	switch {
	case e.Code != "" && e.Message != "":
		return "graph error " + e.Code + ": " + e.Message
	case e.Code != "":
		return "graph error " + e.Code
	default:
		return "graph error: " + e.Message
	}
}

type errorBody struct {
	Error struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		InnerError struct {
			RequestID       string `json:"request-id"`
			ClientRequestID string `json:"client-request-id"`
			Date            string `json:"date"`
		} `json:"innerError"`
	} `json:"error"`
}

// maxErrorText bounds the message kept from a body that is not Graph's JSON.
const maxErrorText = 512

// decodeAPIError decodes an error body. A body that is not Graph's JSON (empty, HTML from a
// proxy) gives an APIError whose Message is the start of the text, or nil when it is empty.
func decodeAPIError(body []byte) *APIError {
	var b errorBody
	if err := json.Unmarshal(body, &b); err == nil && (b.Error.Code != "" || b.Error.Message != "") {
		return &APIError{
			Code:            b.Error.Code,
			Message:         b.Error.Message,
			RequestID:       b.Error.InnerError.RequestID,
			ClientRequestID: b.Error.InnerError.ClientRequestID,
			Date:            b.Error.InnerError.Date,
		}
	}
	text := strings.TrimSpace(strings.ToValidUTF8(string(body), ""))
	if text == "" {
		return nil
	}
	if len(text) > maxErrorText {
		text = strings.ToValidUTF8(text[:maxErrorText], "") + "..."
	}
	return &APIError{Message: text}
}

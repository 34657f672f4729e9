package graph

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/reprocessor/reprocessor/worker"
)

// TestAdaptResult: every way a call can end reaches the worker as the error or status its
// decision table knows.
func TestAdaptResult(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		err    error
		want   error // nil: an answer
		status int
	}{
		{"answer", nil, nil, 202},
		{"token", fmt.Errorf("%w: authority down", ErrToken), worker.ErrCredential, 0},
		{"timeout", fmt.Errorf("%w: slow", ErrTimeout), worker.ErrTimeout, 0},
		{"network", fmt.Errorf("%w: reset", ErrNetwork), worker.ErrNetwork, 0},
		{"invalid id", fmt.Errorf("%w: ../x", ErrInvalidID), nil, http.StatusBadRequest},
	} {
		resp, err := adaptResult(Result{Status: tc.status, Error: &APIError{Code: "c", Message: "m"}}, tc.err)
		switch {
		case tc.want != nil && !errors.Is(err, tc.want):
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		case tc.want == nil && (err != nil || resp.Status != tc.status):
			t.Errorf("%s: status %d err %v, want status %d", tc.name, resp.Status, err, tc.status)
		}
	}
}

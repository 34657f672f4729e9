package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/reprocessor/reprocessor/worker"
)

// ForWorker presents c to the worker: it is the worker's Graph (reprocess) and its
// StateReader (state tracking), each answer translated into worker.Response and each
// failure to get one wrapped in worker's ErrCredential, ErrTimeout or ErrNetwork.
func ForWorker(c *Client) WorkerAdapter { return WorkerAdapter{c: c} }

// WorkerAdapter is the Graph client as the worker's ports see it.
type WorkerAdapter struct{ c *Client }

var (
	_ worker.Graph       = WorkerAdapter{}
	_ worker.StateReader = WorkerAdapter{}
)

// Reprocess calls the reprocess action for id.
func (g WorkerAdapter) Reprocess(ctx context.Context, id string) (worker.Response, error) {
	r, err := g.c.Reprocess(ctx, id)
	return adaptResult(r, err)
}

// GetAssignment reads the assignment id. A 200 whose body cannot be read (or is about
// another assignment) is a 502 to the worker: retried like a server error.
func (g WorkerAdapter) GetAssignment(ctx context.Context, id string) (worker.Assignment, worker.Response, error) {
	get := g.c.GetAssignment
	if !g.c.beta {
		// v1.0 names the package and the target in the same read, for resource verification.
		get = g.c.GetAssignmentDetail
	}
	a, r, err := get(ctx, id)
	resp, err := adaptResult(r, err)
	if errors.Is(err, ErrDecode) {
		// A 200 whose body cannot be read: retried like a server error.
		resp.Status, err = http.StatusBadGateway, nil
	}
	return worker.Assignment{State: a.State, Status: a.Status, Detailed: !g.c.beta, AccessPackageID: a.AccessPackageID,
		TargetID: a.Target.ObjectID, TargetIsSPN: strings.EqualFold(a.Target.SubjectType, "servicePrincipal")}, resp, err
}

// adaptResult presents a Graph answer, or the failure to get one, to the worker.
func adaptResult(r Result, err error) (worker.Response, error) {
	resp := worker.Response{
		Status:          r.Status,
		RequestID:       r.RequestID,
		ClientRequestID: r.ClientRequestID,
		RetryAfter:      r.RetryAfter,
		HasRetryAfter:   r.HasRetryAfter,
		AuthRetries:     r.AuthRetries,
	}
	if r.Error != nil {
		resp.ErrorCode, resp.ErrorMessage = r.Error.Code, r.Error.Message
	}
	switch {
	case err == nil:
		return resp, nil
	case errors.Is(err, ErrToken):
		return resp, fmt.Errorf("%w: %w", worker.ErrCredential, err)
	case errors.Is(err, ErrTimeout):
		return resp, fmt.Errorf("%w: %w", worker.ErrTimeout, err)
	case errors.Is(err, ErrInvalidID):
		// The worker validates ids as strictly as the client; should they ever disagree,
		// the request fails rather than reaching Graph.
		resp.Status, resp.ErrorCode, resp.ErrorMessage = http.StatusBadRequest, "invalid_id", err.Error()
		return resp, nil
	default:
		return resp, fmt.Errorf("%w: %w", worker.ErrNetwork, err)
	}
}

package bulk

import (
	"context"
	"fmt"
	"net/http"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/idlist"
	"github.com/reprocessor/reprocessor/worker"
)

// Lister lists assignments: *graph.Client.
type Lister interface {
	ListAssignments(ctx context.Context, q graph.ListQuery) (graph.Page, graph.Result, error)
}

// Limiter paces calls: *rate.Limiter.
type Limiter interface {
	Wait(ctx context.Context) error
}

// ListConfig says how to list assignments from Graph.
type ListConfig struct {
	Query    graph.ListQuery
	Limiter  Limiter                      // nil: unlimited
	Backoff  worker.Backoff               // delays between retries without Retry-After
	Attempts int                          // calls per page before giving up; default 10
	OnPage   func(n int, assignments int) // called after page n (from 1) arrived
}

// ListFromGraph calls fn for every assignment id Graph lists, page after page through
// @odata.nextLink. 429, 503 and 504 are retried after their Retry-After (or the backoff
// when there is none), other 5xx and transport errors after the backoff; any other answer
// ends the listing with an error.
func ListFromGraph(ctx context.Context, l Lister, c ListConfig, fn func(idlist.ID) error) error {
	if c.Attempts <= 0 {
		c.Attempts = 10
	}
	q := c.Query
	for page := 1; ; page++ {
		p, err := listPage(ctx, l, c, q, page)
		if err != nil {
			return err
		}
		for _, a := range p.Assignments {
			id, ok := idlist.Parse(a.ID)
			if !ok {
				continue // Graph's own ids are GUIDs; never publish anything else
			}
			if err := fn(id); err != nil {
				return err
			}
		}
		if c.OnPage != nil {
			c.OnPage(page, len(p.Assignments))
		}
		if p.NextLink == "" {
			return nil
		}
		if p.NextLink == q.NextLink {
			return fmt.Errorf("list assignments, page %d: Graph answered the same @odata.nextLink again", page)
		}
		q = graph.ListQuery{NextLink: p.NextLink}
	}
}

func listPage(ctx context.Context, l Lister, c ListConfig, q graph.ListQuery, page int) (graph.Page, error) {
	var p graph.Page
	res, err := graph.Retry(ctx, c.Attempts, c.Backoff, func() (graph.Result, error) {
		if c.Limiter != nil {
			if err := c.Limiter.Wait(ctx); err != nil {
				return graph.Result{}, err
			}
		}
		var res graph.Result
		var err error
		p, res, err = l.ListAssignments(ctx, q)
		return res, err
	})
	switch {
	case ctx.Err() != nil:
		return graph.Page{}, ctx.Err()
	case err != nil:
		return graph.Page{}, fmt.Errorf("list assignments, page %d: %w", page, err)
	case res.Status != http.StatusOK:
		return graph.Page{}, fmt.Errorf("list assignments, page %d: graph answered %d%s (request-id %s)", page, res.Status, res.Detail(), res.RequestID)
	}
	return p, nil
}

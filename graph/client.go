// Package graph is the Microsoft Graph client of reprocessor: it calls the entitlement
// management reprocess action, reads and lists access package assignments, builds the URLs
// for each cloud and API version, authenticates with azidentity credentials (refreshing the
// token once on a 401), decodes Graph's error bodies and parses Retry-After.
//
// The client never retries throttled or failed calls itself: it returns what Graph
// answered, with the Retry-After it asked for, and leaves the decision to the caller.
package graph

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// API versions.
const (
	V1   = "v1.0"
	Beta = "beta"
)

// Operations, as passed to Config.Observe and named in metrics.
const (
	OpReprocess       = "reprocess"
	OpGetAssignment   = "get_assignment"
	OpListAssignments = "list_assignments"
)

// DefaultTimeout is the per-call timeout when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Bounds on what is read of an answer (DESIGN section 4): a body only where it carries
// information, an error body or a single assignment at most 64 KiB, a page of a list at
// most 8 MiB (999 assignments with their properties); the headers at most 64 KiB; a header
// value kept for events and logs at most 256 bytes.
const (
	maxBody         = 64 << 10
	maxPageBody     = 8 << 20
	maxHeaderBytes  = 64 << 10
	maxHeaderValue  = 256
	maxDrainOnReuse = 4 << 10 // what is read of an unread body to keep its connection
)

// Config configures a Client. Its zero value, with Tokens set, calls the public cloud's v1.0.
type Config struct {
	// BaseURL is Graph's URL without a version, e.g. https://graph.microsoft.com (the
	// default). It must be https unless AllowHTTP.
	BaseURL string
	// AllowHTTP allows an http BaseURL (tests only: the token would travel in clear).
	AllowHTTP bool
	// APIVersion is "v1.0" (the default) or "beta".
	APIVersion string
	// Timeout bounds each HTTP call, including a token refresh after a 401; default 30s.
	Timeout time.Duration
	// HTTPClient's transport sends the calls (default a tuned one); its redirect policy,
	// timeout and cookie jar are not used: no redirect is ever followed, and Timeout bounds
	// each call.
	HTTPClient *http.Client
	// Tokens supplies bearer tokens; required.
	Tokens TokenSource
	// Observe, if set, is called after each HTTP call with the operation ("reprocess",
	// "get_assignment", "list_assignments"), the HTTP status ("202") or "error", and the
	// duration. It must be cheap and safe for concurrent use.
	Observe func(operation, code string, d time.Duration)
	// Logger receives a debug record per call; default discards.
	Logger *slog.Logger
	// NewID generates client-request-id values; default a random UUID v4.
	NewID func() string
}

// TokenSource supplies bearer tokens for Graph.
type TokenSource interface {
	// Token returns a token that is believed valid.
	Token(ctx context.Context) (string, error)
	// Refresh returns a token newer than stale, fetching one from outside any cache if the
	// current token is still stale; one refresh serves every caller that saw a 401 with the
	// same token.
	Refresh(ctx context.Context, stale string) (string, error)
}

// Client calls Microsoft Graph. It is safe for concurrent use.
type Client struct {
	base       *url.URL // scheme and host (and an optional path prefix) of Graph
	collection string   // absolute URL of the assignments collection
	beta       bool
	timeout    time.Duration
	transport  http.RoundTripper // of Config.HTTPClient; a redirect is never followed (roundTrip)
	tokens     TokenSource
	observe    func(operation, code string, d time.Duration)
	log        *slog.Logger
	newID      func() string
}

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	if cfg.Tokens == nil {
		return nil, errors.New("graph config: Tokens is required")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("graph config: Timeout %s is negative", cfg.Timeout)
	}
	base, err := parseBaseURL(cmp.Or(cfg.BaseURL, "https://graph.microsoft.com"), cfg.AllowHTTP)
	if err != nil {
		return nil, fmt.Errorf("graph config: BaseURL: %w", err)
	}
	version := cmp.Or(cfg.APIVersion, V1)
	if version != V1 && version != Beta {
		return nil, fmt.Errorf("graph config: APIVersion %q: valid values are %s, %s", version, V1, Beta)
	}
	c := &Client{
		base:       base,
		collection: base.String() + collectionPath(version),
		beta:       version == Beta,
		timeout:    cmp.Or(cfg.Timeout, DefaultTimeout),
		tokens:     cfg.Tokens,
		observe:    cfg.Observe,
		log:        cfg.Logger,
		newID:      cfg.NewID,
	}
	switch {
	case cfg.HTTPClient == nil:
		c.transport = NewTransport()
	case cfg.HTTPClient.Transport == nil:
		c.transport = http.DefaultTransport // as the client would send it
	default:
		c.transport = cfg.HTTPClient.Transport
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.newID == nil {
		c.newID = NewUUID
	}
	return c, nil
}

func parseBaseURL(s string, allowHTTP bool) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(s, "/"))
	if err != nil {
		return nil, err
	}
	switch {
	case u.Scheme != "https" && !(allowHTTP && u.Scheme == "http"):
		return nil, fmt.Errorf("%q: must be https", s)
	case u.Host == "":
		return nil, fmt.Errorf("%q: no host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%q: must hold only scheme, host and path", s)
	}
	return u, nil
}

func collectionPath(version string) string {
	if version == Beta {
		return "/beta/identityGovernance/entitlementManagement/accessPackageAssignments"
	}
	return "/v1.0/identityGovernance/entitlementManagement/assignments"
}

// NewTransport returns the default transport: HTTP/2 allowed, TLS 1.2 or later, many idle
// connections kept per host, answers' headers at most 64 KiB.
func NewTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ForceAttemptHTTP2 = true
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	t.MaxResponseHeaderBytes = maxHeaderBytes
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	return t
}

// NoRedirects returns a copy of hc (a new default client when nil) that follows no
// redirect: a 3xx is returned as the answer. Go strips the Authorization header on a
// redirect only when the host name changes, so a redirect to another port or scheme of the
// same host would carry the bearer token (or, from the authority, the client secret) there,
// once in clear text; and a 302 or 303 turns the POST into a GET.
func NoRedirects(hc *http.Client) *http.Client {
	c := &http.Client{Transport: NewTransport()}
	if hc != nil {
		c2 := *hc
		c = &c2
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

// NewUUID returns a random (version 4) UUID in lower case.
func NewUUID() string { return uuid.NewString() }

// Result is what Graph answered to one call (the last HTTP call, after a 401 retry).
type Result struct {
	Status          int           // HTTP status; 0 when no answer was had
	RequestID       string        // Graph's request-id header
	ClientRequestID string        // the client-request-id sent
	RetryAfter      time.Duration // Retry-After, when HasRetryAfter
	HasRetryAfter   bool
	Error           *APIError // decoded error body of a non-2xx answer, if it had one
	AuthRetries     int       // 1 when a 401 made the client refresh its token and retry
	Date            string    // the Date header
	Diagnostic      string    // the x-ms-ags-diagnostic header
}

// assignmentURL validates id and returns the assignment's URL; suffix is appended.
func (c *Client) assignmentURL(id, suffix string) (string, error) {
	if !ValidID(id) {
		return "", fmt.Errorf("%w: %q", ErrInvalidID, truncate(id, 64))
	}
	return c.collection + "/" + url.PathEscape(strings.ToLower(id)) + suffix, nil
}

// Reprocess calls the reprocess action for the assignment id. A 202 is success; any other
// status is returned in the Result with a nil error. A non-nil error wraps ErrInvalidID,
// ErrToken, ErrTimeout, ErrNetwork or the context's error.
func (c *Client) Reprocess(ctx context.Context, id string) (Result, error) {
	u, err := c.assignmentURL(id, "/reprocess")
	if err != nil {
		return Result{}, fmt.Errorf("reprocess: %w", err)
	}
	_, res, err := c.do(ctx, OpReprocess, http.MethodPost, u)
	if err != nil {
		return res, fmt.Errorf("reprocess %s: %w", strings.ToLower(id), err)
	}
	return res, nil
}

// GetAssignment reads the assignment id. The Assignment is set when Graph answered 200; its
// State is in v1.0's camelCase whatever the API version.
func (c *Client) GetAssignment(ctx context.Context, id string) (Assignment, Result, error) {
	u, err := c.assignmentURL(id, "")
	if err != nil {
		return Assignment{}, Result{}, fmt.Errorf("get assignment: %w", err)
	}
	body, res, err := c.do(ctx, OpGetAssignment, http.MethodGet, u)
	if err != nil {
		return Assignment{}, res, fmt.Errorf("get assignment %s: %w", strings.ToLower(id), err)
	}
	if res.Status != http.StatusOK {
		return Assignment{}, res, nil
	}
	a, err := decodeAssignment(body, c.beta)
	if err != nil {
		return Assignment{}, res, fmt.Errorf("get assignment %s: %w", strings.ToLower(id), err)
	}
	if !strings.EqualFold(a.ID, id) {
		// An answer about another assignment (or none) says nothing of this one's state.
		return Assignment{}, res, fmt.Errorf("get assignment %s: %w: the answer is about assignment %q", strings.ToLower(id), ErrDecode, truncate(a.ID, 64))
	}
	return a, res, nil
}

// GetAssignmentDetail reads the assignment id with its target and its access package's id
// ($expand=target,accessPackage($select=id)): what resource verification needs. v1.0 only.
func (c *Client) GetAssignmentDetail(ctx context.Context, id string) (Assignment, Result, error) {
	if !ValidID(id) {
		return Assignment{}, Result{}, fmt.Errorf("get assignment: %w: %q", ErrInvalidID, truncate(id, 64))
	}
	u := c.base.String() + collectionPath(V1) + "/" + strings.ToLower(id) + "?$expand=" + queryEscape("target,accessPackage($select=id)")
	body, res, err := c.do(ctx, OpGetAssignment, http.MethodGet, u)
	if err != nil || res.Status != http.StatusOK {
		return Assignment{}, res, wrapErr("get assignment", id, err)
	}
	a, err := decodeAssignment(body, false)
	if err == nil && !strings.EqualFold(a.ID, id) {
		err = fmt.Errorf("%w: the answer is about assignment %q", ErrDecode, truncate(a.ID, 64))
	}
	return a, res, wrapErr("get assignment", id, err)
}

// ListQuery selects assignments to list.
type ListQuery struct {
	// Filter is an OData $filter expression added as is (and-ed with the others).
	Filter string
	// State selects assignments in this v1.0 state (e.g. "delivered"); for beta it is
	// translated to PascalCase.
	State string
	// AccessPackageID selects assignments of this access package; it must be a GUID.
	AccessPackageID string
	// Top is the page size asked for ($top), 0 for Graph's default; at most 999.
	Top int
	// ExpandTarget asks for each assignment's target ($expand=target) and reads its schedule.
	ExpandTarget bool
	// NextLink, when set, is the @odata.nextLink of the previous page, fetched as is; the
	// other fields are ignored. It must point at the client's BaseURL scheme and host.
	NextLink string
}

// ListAssignments fetches one page of assignments. Follow Page.NextLink with another call
// (ListQuery{NextLink: page.NextLink}) until it is empty.
func (c *Client) ListAssignments(ctx context.Context, q ListQuery) (Page, Result, error) {
	u, err := c.listURL(q)
	if err != nil {
		return Page{}, Result{}, fmt.Errorf("list assignments: %w", err)
	}
	body, res, err := c.do(ctx, OpListAssignments, http.MethodGet, u)
	if err != nil {
		return Page{}, res, fmt.Errorf("list assignments: %w", err)
	}
	if res.Status != http.StatusOK {
		return Page{}, res, nil
	}
	p, err := decodePage(body, c.beta)
	if err != nil {
		return Page{}, res, fmt.Errorf("list assignments: %w", err)
	}
	return p, res, nil
}

func (c *Client) listURL(q ListQuery) (string, error) {
	if q.NextLink != "" {
		return c.checkNextLink(q.NextLink)
	}
	var filters []string
	if q.Filter != "" {
		filters = append(filters, "("+q.Filter+")")
	}
	if q.State != "" {
		if c.beta {
			filters = append(filters, "assignmentState eq "+odataString(betaState(q.State)))
		} else {
			filters = append(filters, "state eq "+odataString(q.State))
		}
	}
	if q.AccessPackageID != "" {
		if !ValidID(q.AccessPackageID) {
			return "", fmt.Errorf("%w: access package id %q is not a GUID", ErrInvalidQuery, truncate(q.AccessPackageID, 64))
		}
		filters = append(filters, "accessPackage/id eq "+odataString(strings.ToLower(q.AccessPackageID)))
	}
	if q.Top < 0 || q.Top > 999 {
		return "", fmt.Errorf("%w: top %d is not within 0..999", ErrInvalidQuery, q.Top)
	}
	var params []string
	if len(filters) > 0 {
		params = append(params, "$filter="+queryEscape(strings.Join(filters, " and ")))
	}
	if q.ExpandTarget {
		params = append(params, "$expand=target")
	}
	if q.Top > 0 {
		params = append(params, "$top="+strconv.Itoa(q.Top))
	}
	if len(params) == 0 {
		return c.collection, nil
	}
	return c.collection + "?" + strings.Join(params, "&"), nil
}

// checkNextLink returns an @odata.nextLink to fetch as is, once it is known to point at
// the client's Graph (scheme and host): the bearer token goes nowhere else.
func (c *Client) checkNextLink(link string) (string, error) {
	u, err := url.Parse(link)
	if err != nil {
		return "", fmt.Errorf("%w: next link: %w", ErrInvalidQuery, err)
	}
	if u.Scheme != c.base.Scheme || !strings.EqualFold(u.Host, c.base.Host) || u.User != nil {
		return "", fmt.Errorf("%w: next link does not point at %s://%s", ErrInvalidQuery, c.base.Scheme, c.base.Host)
	}
	return link, nil
}

// odataString quotes s as an OData string literal: single quotes, doubled inside.
func odataString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// queryEscape escapes s for a query value, spaces as %20.
func queryEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// do makes one call, and one more after a 401 with a refreshed token.
func (c *Client) do(ctx context.Context, op, method, target string) ([]byte, Result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	token, err := c.tokens.Token(ctx)
	if err != nil {
		return nil, Result{}, tokenError(err)
	}
	var res Result
	for attempt := 0; ; attempt++ {
		var body []byte
		body, res, err = c.send(ctx, op, method, target, token)
		res.AuthRetries = attempt
		if err != nil || res.Status != http.StatusUnauthorized || attempt > 0 {
			return body, res, err
		}
		if token, err = c.tokens.Refresh(ctx, token); err != nil {
			return body, res, tokenError(err)
		}
	}
}

// tokenError wraps a token source's error with ErrToken (the context's error stays visible).
func tokenError(err error) error {
	if errors.Is(err, ErrToken) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrToken, err)
}

// callError classifies a failed HTTP call.
func callError(ctx context.Context, err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return err
	default:
		return fmt.Errorf("%w: %w", ErrNetwork, err)
	}
}

// bodyLimit is how much of a 2xx answer to op is read: none of a reprocess (its status is
// the whole answer), a page of a list or an object holding a collection up to maxPageBody,
// anything else up to maxBody.
func bodyLimit(op string, status int) int64 {
	switch {
	case status < 200 || status >= 300:
		return maxBody // an error body: code and message
	case op == OpReprocess:
		return 0
	case strings.HasPrefix(op, "list_"), op == OpGetAccessPackage, op == OpGetServicePrincipal:
		// A page, or an object with a collection inside (a package's resource role
		// scopes, an application's app roles): hundreds of entries are legitimate.
		return maxPageBody
	}
	return maxBody
}

// send makes one HTTP call and reads its answer. The status decides: a body is read only
// where it carries information, at most bodyLimit; an error body that cannot be read in
// time (it stalls, or the connection breaks) leaves the status standing without it. A 2xx
// body that is longer than the limit is ErrDecode.
func (c *Client) send(ctx context.Context, op, method, target, token string) ([]byte, Result, error) {
	res := Result{ClientRequestID: c.newID()}
	req, err := http.NewRequestWithContext(ctx, method, target, http.NoBody)
	if err != nil {
		return nil, res, fmt.Errorf("%w: %w", ErrNetwork, err)
	}
	req.Header = http.Header{ // canonical keys, as Header.Set would make them
		"Authorization":            {"Bearer " + token},
		"Client-Request-Id":        {res.ClientRequestID},
		"Return-Client-Request-Id": {"true"},
		"Accept":                   {"application/json"},
	}
	start := time.Now()
	resp, err := c.roundTrip(req)
	if err != nil {
		c.observed(op, "error", time.Since(start))
		err = callError(ctx, err)
		c.log.LogAttrs(ctx, slog.LevelDebug, "graph call failed", slog.String("operation", op),
			slog.String("client_request_id", res.ClientRequestID), slog.Any("error", err))
		return nil, res, err
	}
	res.Status = resp.StatusCode
	res.RequestID = headerValue(resp.Header, "request-id")
	res.Date = headerValue(resp.Header, "Date")
	res.Diagnostic = headerValue(resp.Header, "x-ms-ags-diagnostic")
	if h := resp.Header.Get("Retry-After"); h != "" {
		res.RetryAfter, res.HasRetryAfter = ParseRetryAfter(h, time.Now())
	}
	limit := bodyLimit(op, resp.StatusCode)
	var body []byte
	var readErr error
	if limit > 0 {
		body, readErr = io.ReadAll(io.LimitReader(resp.Body, limit+1))
	}
	if limit > 0 && readErr == nil && resp.ContentLength >= 0 && resp.ContentLength <= maxDrainOnReuse {
		// Drain a short rest of known length so that the connection is reused; a body of
		// unknown or great length, or one not read at all, is cut by closing it instead.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainOnReuse))
	}
	_ = resp.Body.Close()
	c.observed(op, strconv.Itoa(resp.StatusCode), time.Since(start))
	if resp.StatusCode >= 300 {
		if readErr != nil {
			c.log.LogAttrs(ctx, slog.LevelDebug, "graph error body not read; the status stands", slog.String("operation", op),
				slog.Int("status", res.Status), slog.Any("error", readErr))
			body = nil
		}
		res.Error = decodeAPIError(bytes.TrimSpace(body[:min(len(body), maxBody)]))
		body = nil
	} else if limit > 0 {
		switch {
		case readErr != nil:
			return nil, res, fmt.Errorf("%w: reading the answer: %w", ErrDecode, callError(ctx, readErr))
		case len(body) > int(limit):
			return nil, res, fmt.Errorf("%w: the answer is longer than %d bytes", ErrDecode, limit)
		}
	}
	if c.log.Enabled(ctx, slog.LevelDebug) {
		c.log.LogAttrs(ctx, slog.LevelDebug, "graph call", slog.String("operation", op),
			slog.Int("status", res.Status), slog.String("request_id", res.RequestID),
			slog.String("client_request_id", res.ClientRequestID), slog.String("date", res.Date),
			slog.String("diagnostic", res.Diagnostic), slog.Duration("duration", time.Since(start)))
	}
	return body, res, nil
}

// roundTrip sends req with the client's transport instead of http.Client.Do: a redirect is
// never followed (a 3xx is the answer, as NoRedirects makes it for Do), and Do's copying of
// the headers for every call, kept for a redirect that never comes, cost about 3% of the
// worker's CPU at full speed. An error is wrapped as Do wraps it.
func (c *Client) roundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.transport.RoundTrip(req)
	if err != nil {
		op := req.Method[:1] + strings.ToLower(req.Method[1:])
		return nil, &url.Error{Op: op, URL: req.URL.String(), Err: err}
	}
	return resp, nil
}

// headerValue returns a header's value cut to maxHeaderValue bytes, valid UTF-8 without
// control characters: what an answer says goes into events and logs.
func headerValue(h http.Header, name string) string {
	v := h.Get(name)
	if len(v) > maxHeaderValue {
		v = v[:maxHeaderValue]
	}
	if plainASCII(v) {
		return v // what Graph sends: no copy
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return -1
		}
		return r
	}, strings.ToValidUTF8(v, ""))
}

// plainASCII reports whether s is printable ASCII.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func (c *Client) observed(op, code string, d time.Duration) {
	if c.observe != nil {
		c.observe(op, code, d)
	}
}

package graph_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/internal/testsync"
)

const id1 = "0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5c6d"

// bundle is what most tests need: a simulated Graph, a credential against it and a client.
type bundle struct {
	srv    *graphtest.Server
	cred   *graph.Credential
	client *graph.Client
	logs   *syncBuffer
}

type setupOpts struct {
	server     graphtest.Options
	version    string
	timeout    time.Duration
	secret     string // overrides the right secret
	minBackoff time.Duration
	observe    func(op, code string, d time.Duration)
	onReady    func()
}

func setup(t *testing.T, o setupOpts) *bundle {
	t.Helper()
	srv := graphtest.New(o.server)
	t.Cleanup(srv.Close)
	env := srv.Env("")
	if o.secret != "" {
		env["AZURE_CLIENT_SECRET"] = o.secret
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cred, err := graph.NewCredential(func(k string) string { return env[k] }, graph.Cloud{Name: "test", GraphURL: srv.URL},
		graph.CredentialOptions{HTTPClient: srv.Client(), Logger: logger, MinBackoff: o.minBackoff, MaxBackoff: o.minBackoff * 2, OnReady: o.onReady})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cred.Close)
	client, err := graph.New(graph.Config{BaseURL: srv.URL, APIVersion: o.version, Timeout: o.timeout,
		HTTPClient: srv.Client(), Tokens: cred, Logger: logger, Observe: o.observe})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{srv: srv, cred: cred, client: client, logs: logs}
}

type syncBuffer = testsync.SyncBuffer

func TestReprocess(t *testing.T) {
	t.Parallel()
	for _, version := range []string{graph.V1, graph.Beta} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			var observed atomic.Value
			b := setup(t, setupOpts{version: version, observe: func(op, code string, d time.Duration) { observed.Store(op + " " + code) }})
			res, err := b.client.Reprocess(context.Background(), strings.ToUpper(id1))
			if err != nil {
				t.Fatal(err)
			}
			calls := b.srv.Calls()
			c := calls[len(calls)-1]
			if res.Status != 202 || res.RequestID == "" || res.RequestID != c.RequestID || res.ClientRequestID != c.ClientRequestID ||
				!graph.ValidID(res.ClientRequestID) || res.Date == "" || res.Diagnostic == "" || res.Error != nil || res.AuthRetries != 0 {
				t.Fatalf("result %+v, call %+v", res, c)
			}
			if c.Operation != graphtest.OpReprocess || c.AssignmentID != id1 || c.APIVersion != version {
				t.Fatalf("call %+v", c)
			}
			if observed.Load() != "reprocess 202" {
				t.Fatalf("observed %v", observed.Load())
			}
			if !strings.Contains(b.logs.String(), "request_id="+res.RequestID) {
				t.Fatalf("debug log lacks the request id: %s", b.logs)
			}
		})
	}
}

func TestInvalidIDMakesNoCall(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	for _, id := range []string{"../../users", "%2e%2e%2f", "{" + id1 + "}", "urn:uuid:" + id1, id1 + "?x=1", id1 + "/x", id1[1:], ""} {
		if _, err := b.client.Reprocess(context.Background(), id); !errors.Is(err, graph.ErrInvalidID) {
			t.Errorf("Reprocess(%q): %v", id, err)
		}
		if _, _, err := b.client.GetAssignment(context.Background(), id); !errors.Is(err, graph.ErrInvalidID) {
			t.Errorf("GetAssignment(%q): %v", id, err)
		}
	}
	if n := len(b.srv.Calls()); n != 0 {
		t.Fatalf("%d calls made", n)
	}
}

func TestErrorAnswers(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	ctx := context.Background()
	tests := []struct {
		status int
		code   string
	}{{400, "BadRequest"}, {403, "Authorization_RequestDenied"}, {404, "ResourceNotFound"}, {409, "Conflict"}, {500, "UnknownError"}, {503, "ServiceUnavailable"}}
	for _, tt := range tests {
		b.srv.SetAnswer(id1, tt.status)
		res, err := b.client.Reprocess(ctx, id1)
		if err != nil || res.Status != tt.status || res.Error == nil || res.Error.Code != tt.code ||
			res.Error.RequestID != res.RequestID || res.Error.ClientRequestID != res.ClientRequestID {
			t.Errorf("%d: %+v %+v %v", tt.status, res, res.Error, err)
		}
	}
	b.srv.SetAnswer(id1, 0)

	b.srv.Throttle429(1, "2.128")
	res, err := b.client.Reprocess(ctx, id1)
	if err != nil || res.Status != 429 || !res.HasRetryAfter || res.RetryAfter != 2128*time.Millisecond {
		t.Errorf("429: %+v %v", res, err)
	}
	b.srv.Throttle429(1, "")
	res, err = b.client.Reprocess(ctx, id1)
	if err != nil || res.Status != 429 || res.HasRetryAfter {
		t.Errorf("429 without Retry-After: %+v %v", res, err)
	}
	// The client never retries 429 or 5xx itself.
	b.srv.ResetCalls()
	b.srv.Storm503(-1)
	if res, _ := b.client.Reprocess(ctx, id1); res.Status != 503 || b.srv.CallCount(graphtest.OpReprocess) != 1 {
		t.Errorf("503: %+v, %d calls", res, b.srv.CallCount(graphtest.OpReprocess))
	}
}

func TestGetAssignment(t *testing.T) {
	t.Parallel()
	for _, version := range []string{graph.V1, graph.Beta} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			b := setup(t, setupOpts{version: version})
			b.srv.SetState(id1, "partiallyDelivered", "Partially delivered")
			a, res, err := b.client.GetAssignment(context.Background(), id1)
			if err != nil || res.Status != 200 || a != (graph.Assignment{ID: id1, State: "partiallyDelivered", Status: "Partially delivered"}) {
				t.Fatalf("%+v %+v %v", a, res, err)
			}
			b.srv.SetAnswer(id1, 404)
			a, res, err = b.client.GetAssignment(context.Background(), id1)
			if err != nil || res.Status != 404 || a.ID != "" || res.Error.Code != "ResourceNotFound" {
				t.Fatalf("404: %+v %+v %v", a, res, err)
			}
		})
	}
}

func TestListAssignments(t *testing.T) {
	t.Parallel()
	for _, version := range []string{graph.V1, graph.Beta} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			b := setup(t, setupOpts{version: version, server: graphtest.Options{PageSize: 3}})
			pkg := "aaaaaaaa-0000-4000-8000-000000000000"
			var want []string
			for i := range 8 {
				id := graph.NewUUID()
				state := "delivered"
				if i%4 == 3 {
					state = "expired"
				}
				b.srv.AddAssignments(graphtest.Assignment{ID: id, AccessPackageID: pkg, State: state})
				if state == "delivered" {
					want = append(want, id)
				}
			}
			b.srv.AddAssignments(graphtest.Assignment{ID: graph.NewUUID(), AccessPackageID: graph.NewUUID()})
			q := graph.ListQuery{State: "delivered", AccessPackageID: strings.ToUpper(pkg), Top: 2}
			var got []string
			pages := 0
			for {
				p, res, err := b.client.ListAssignments(context.Background(), q)
				if err != nil || res.Status != 200 {
					t.Fatalf("%+v %v", res, err)
				}
				pages++
				for _, a := range p.Assignments {
					if a.State != "delivered" {
						t.Fatalf("state %q", a.State)
					}
					got = append(got, a.ID)
				}
				if p.NextLink == "" {
					break
				}
				q = graph.ListQuery{NextLink: p.NextLink}
			}
			if strings.Join(got, ",") != strings.Join(want, ",") || pages != 3 {
				t.Fatalf("got %v in %d pages, want %v", got, pages, want)
			}
			calls := b.srv.CallCount(graphtest.OpListAssignments)
			if _, _, err := b.client.ListAssignments(context.Background(), graph.ListQuery{NextLink: "https://example.com/x"}); !errors.Is(err, graph.ErrInvalidQuery) {
				t.Fatalf("foreign next link: %v", err)
			}
			if b.srv.CallCount(graphtest.OpListAssignments) != calls {
				t.Fatal("a foreign next link was called")
			}
		})
	}
}

// TestRefreshSharedOn401 has many callers see a 401 on the same token: one refresh serves
// them all, and each call is retried once.
func TestRefreshSharedOn401(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	ctx := context.Background()
	b.srv.ExpireTokensEarly(true)
	stale, err := b.cred.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b.srv.ExpireTokensEarly(false)
	waitRejected(t, b.srv, stale)
	b.srv.ResetCalls()

	const callers = 32
	var wg sync.WaitGroup
	results := make([]graph.Result, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() { results[i], errs[i] = b.client.Reprocess(ctx, id1) })
	}
	wg.Wait()
	// A caller that starts after the refresh has finished uses the fresh token at once:
	// each call is retried at most once, and every 401 was answered by the same refresh.
	retried := 0
	for i := range callers {
		if errs[i] != nil || results[i].Status != 202 || results[i].AuthRetries > 1 {
			t.Fatalf("caller %d: %+v %v", i, results[i], errs[i])
		}
		retried += results[i].AuthRetries
	}
	if retried == 0 {
		t.Fatal("no caller met the stale token")
	}
	if n := b.srv.CallCount(graphtest.OpToken); n != 1 {
		t.Fatalf("%d token requests for one stale token, want 1", n)
	}
	if n := b.srv.CallCount(graphtest.OpReprocess); n != callers+retried {
		t.Fatalf("%d reprocess calls, want %d (%d retried)", n, callers+retried, retried)
	}
	fresh, err := b.cred.Token(ctx)
	if err != nil || fresh == stale {
		t.Fatalf("token after refresh: %v", err)
	}
}

// waitRejected polls until the server rejects tok.
func waitRejected(t *testing.T, srv *graphtest.Server, tok string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1.0/identityGovernance/entitlementManagement/assignments/"+id1, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("token still accepted")
		}
		time.Sleep(10 * time.Millisecond) // polling the server's clock
	}
}

// TestSecondUnauthorized: a 401 after the refresh is returned as the Result.
func TestSecondUnauthorized(t *testing.T) {
	t.Parallel()
	// Every token is rejected 100ms after issue, and every answer takes 150ms.
	b := setup(t, setupOpts{})
	b.srv.ExpireTokensEarly(true)
	b.srv.SetLatency(150*time.Millisecond, 0)
	res, err := b.client.Reprocess(context.Background(), id1)
	if err != nil || res.Status != 401 || res.AuthRetries != 1 || res.Error == nil || res.Error.Code != "InvalidAuthenticationToken" {
		t.Fatalf("%+v %v", res, err)
	}
	if n := b.srv.CallCount(graphtest.OpReprocess); n != 2 {
		t.Fatalf("%d reprocess calls, want 2", n)
	}
}

func TestTokenFailure(t *testing.T) {
	t.Parallel()
	const secret = "Wr0ng~Secret.Value"
	b := setup(t, setupOpts{secret: secret, minBackoff: time.Hour})
	_, err := b.client.Reprocess(context.Background(), id1)
	if !errors.Is(err, graph.ErrToken) || !strings.Contains(err.Error(), "AADSTS7000215") || strings.Contains(err.Error(), secret) {
		t.Fatalf("error %v", err)
	}
	var te *graph.TokenError
	if !errors.As(err, &te) || te.Status != 401 || te.Kind != graph.KindClientSecret {
		t.Fatalf("token error %+v", te)
	}
	if b.srv.CallCount(graphtest.OpReprocess) != 0 {
		t.Fatal("graph called without a token")
	}
	// While the backoff runs, the authority is not asked again.
	for range 5 {
		if _, err := b.client.Reprocess(context.Background(), id1); !errors.Is(err, graph.ErrToken) {
			t.Fatal(err)
		}
	}
	if n := b.srv.CallCount(graphtest.OpToken); n != 1 {
		t.Fatalf("%d token requests during backoff, want 1", n)
	}
	if b.cred.Ready() || !errors.Is(b.cred.LastError(), graph.ErrToken) {
		t.Fatalf("ready %v, last error %v", b.cred.Ready(), b.cred.LastError())
	}
	logs := b.logs.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "AADSTS7000215") || strings.Contains(logs, secret) {
		t.Fatalf("logs: %s", logs)
	}
}

// runCredential runs the credential's refresh loop until the returned stop is called or
// the test ends.
func (b *bundle) runCredential(t *testing.T) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.cred.Run(ctx)
	}()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

func TestCredentialRun(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{minBackoff: 5 * time.Millisecond})
	b.srv.FailTokens(true)
	stop := b.runCredential(t)
	eventually(t, func() bool { return b.srv.CallCount(graphtest.OpToken) >= 3 })
	if b.cred.Ready() || b.cred.LastError() == nil {
		t.Fatal("ready while the authority fails")
	}
	b.srv.FailTokens(false)
	eventually(t, b.cred.Ready)
	if b.cred.LastError() != nil {
		t.Fatal(b.cred.LastError())
	}
	stop()
	res, err := b.client.Reprocess(context.Background(), id1)
	if err != nil || res.Status != 202 {
		t.Fatalf("%+v %v", res, err)
	}
}

// TestCredentialOnReady: OnReady is called when a token arrives while none is held, once,
// and not when a valid token is replaced.
func TestCredentialOnReady(t *testing.T) {
	t.Parallel()
	var ready atomic.Int64
	b := setup(t, setupOpts{minBackoff: 5 * time.Millisecond, onReady: func() { ready.Add(1) }})
	b.srv.FailTokens(true)
	b.runCredential(t)
	eventually(t, func() bool { return b.srv.CallCount(graphtest.OpToken) >= 2 })
	if n := ready.Load(); n != 0 {
		t.Fatalf("OnReady called %d times while the authority fails", n)
	}
	b.srv.FailTokens(false)
	eventually(t, func() bool { return ready.Load() > 0 })
	if !b.cred.Ready() {
		t.Fatal("OnReady called before the credential is ready")
	}
	tok, err := b.cred.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.cred.Refresh(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if n := ready.Load(); n != 1 {
		t.Fatalf("OnReady called %d times, want 1: replacing a valid token is no news", n)
	}
}

// TestCredentialRenewsBeforeExpiry: with a 3s lifetime the token is replaced after 1.5s.
func TestCredentialRenewsBeforeExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{server: graphtest.Options{TokenLifetime: 3 * time.Second}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.cred.Run(ctx)
	}()
	eventually(t, func() bool { return b.srv.CallCount(graphtest.OpToken) >= 2 })
	if !b.cred.Ready() {
		t.Fatal("not ready")
	}
	cancel()
	<-done
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	testsync.Poll(t, "the condition", 10*time.Second, 5*time.Millisecond, cond)
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	var code atomic.Value
	b := setup(t, setupOpts{timeout: 50 * time.Millisecond, observe: func(op, c string, d time.Duration) { code.Store(c) }})
	if _, err := b.cred.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.srv.SetLatency(time.Second, 0)
	_, err := b.client.Reprocess(context.Background(), id1)
	if !errors.Is(err, graph.ErrTimeout) || code.Load() != "error" {
		t.Fatalf("%v, observed %v", err, code.Load())
	}
	// A caller's cancellation is not a timeout.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err = b.client.Reprocess(ctx, id1)
	if !errors.Is(err, context.Canceled) || errors.Is(err, graph.ErrTimeout) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestNetworkError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := graph.New(graph.Config{BaseURL: "https://" + addr, Tokens: fixedTokens{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Reprocess(context.Background(), id1); !errors.Is(err, graph.ErrNetwork) {
		t.Fatalf("%v", err)
	}
}

type fixedTokens struct{}

func (fixedTokens) Token(context.Context) (string, error)           { return "t", nil }
func (fixedTokens) Refresh(context.Context, string) (string, error) { return "t", nil }

// recorder is a transport that records requests and answers 202.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	return &http.Response{StatusCode: 202, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
}

func TestURLsPerCloudAndVersion(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"public", "usgov", "usgovdod", "china"} {
		cl, err := graph.CloudByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, version := range []string{graph.V1, graph.Beta} {
			rec := &recorder{}
			c, err := graph.New(graph.Config{BaseURL: cl.GraphURL, APIVersion: version, Tokens: fixedTokens{},
				HTTPClient: &http.Client{Transport: rec}, NewID: func() string { return "fixed-id" }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Reprocess(context.Background(), strings.ToUpper(id1)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.GetAssignment(context.Background(), id1); err != nil {
				t.Fatal(err)
			}
			collection := "/v1.0/identityGovernance/entitlementManagement/assignments/"
			if version == graph.Beta {
				collection = "/beta/identityGovernance/entitlementManagement/accessPackageAssignments/"
			}
			want := []string{"POST " + cl.GraphURL + collection + id1 + "/reprocess", "GET " + cl.GraphURL + collection + id1}
			for i, req := range rec.reqs {
				if got := req.Method + " " + req.URL.String(); got != want[i] {
					t.Errorf("%s %s: %s, want %s", name, version, got, want[i])
				}
				h := req.Header
				if h.Get("Authorization") != "Bearer t" || h.Get("client-request-id") != "fixed-id" || h.Get("return-client-request-id") != "true" {
					t.Errorf("headers %v", h)
				}
				if req.Method == http.MethodPost && req.ContentLength != 0 {
					t.Errorf("POST with a body of %d bytes", req.ContentLength)
				}
			}
		}
	}
}

func TestFreshClientRequestID(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	c, err := graph.New(graph.Config{Tokens: fixedTokens{}, HTTPClient: &http.Client{Transport: rec}})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 10 {
		res, err := c.Reprocess(context.Background(), id1)
		if err != nil || seen[res.ClientRequestID] || !graph.ValidID(res.ClientRequestID) {
			t.Fatalf("%+v %v", res, err)
		}
		seen[res.ClientRequestID] = true
	}
}

func TestCredentialKinds(t *testing.T) {
	t.Parallel()
	srv := graphtest.New(graphtest.Options{})
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	certPath := writeCertificate(t, dir)
	tokenFile := filepath.Join(dir, "federated-token")
	if err := os.WriteFile(tokenFile, []byte("header.payload.signature"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := srv.Env("")
	delete(base, "AZURE_CLIENT_SECRET")
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name     string
		env      map[string]string
		kind     string
		getToken bool
	}{
		{"secret", with("AZURE_CLIENT_SECRET", srv.ClientSecret), graph.KindClientSecret, true},
		{"certificate", with("AZURE_CLIENT_CERTIFICATE_PATH", certPath), graph.KindClientCertificate, true},
		{"workload identity", with("AZURE_FEDERATED_TOKEN_FILE", tokenFile), graph.KindWorkloadIdentity, true},
		{"managed identity", with(), graph.KindManagedIdentity, false},
	}
	for _, tt := range tests {
		cred, err := graph.NewCredential(func(k string) string { return tt.env[k] }, graph.Cloud{GraphURL: srv.URL},
			graph.CredentialOptions{HTTPClient: srv.Client()})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		t.Cleanup(cred.Close)
		if cred.Kind() != tt.kind || cred.Scope() != srv.URL+"/.default" {
			t.Errorf("%s: kind %q scope %q", tt.name, cred.Kind(), cred.Scope())
		}
		if tt.getToken {
			if _, err := cred.Token(context.Background()); err != nil || !cred.Ready() {
				t.Errorf("%s: %v", tt.name, err)
			}
		}
	}

	bad := []map[string]string{
		with("AZURE_CLIENT_SECRET", "s", "AZURE_AUTHORITY_HOST", "http://127.0.0.1:1/"),
		with("AZURE_CLIENT_SECRET", "s", "AZURE_TENANT_ID", ""),
		with("AZURE_CLIENT_CERTIFICATE_PATH", filepath.Join(dir, "missing.pem")),
	}
	for _, env := range bad {
		if _, err := graph.NewCredential(func(k string) string { return env[k] }, graph.Cloud{}, graph.CredentialOptions{}); err == nil {
			t.Errorf("%v accepted", env)
		}
	}
}

func TestCredentialScopePerCloud(t *testing.T) {
	t.Parallel()
	env := map[string]string{"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s"}
	for _, name := range []string{"public", "usgov", "usgovdod", "china"} {
		cl, _ := graph.CloudByName(name)
		cred, err := graph.NewCredential(func(k string) string { return env[k] }, cl, graph.CredentialOptions{})
		if err != nil || cred.Scope() != cl.GraphURL+"/.default" {
			t.Errorf("%s: %v %v", name, cred, err)
		}
	}
}

// writeCertificate writes a self-signed RSA certificate and its key, PEM, for a client
// certificate credential.
func writeCertificate(t *testing.T, dir string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "reprocessor test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	_ = pem.Encode(&buf, &pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(key))})
	path := filepath.Join(dir, "client.pem")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func BenchmarkReprocess(b *testing.B) {
	srv := graphtest.New(graphtest.Options{MaxRecordedCalls: 1})
	defer srv.Close()
	cred, err := graph.NewCredential(func(k string) string { return srv.Env("")[k] }, graph.Cloud{GraphURL: srv.URL},
		graph.CredentialOptions{HTTPClient: srv.Client()})
	if err != nil {
		b.Fatal(err)
	}
	client, err := graph.New(graph.Config{BaseURL: srv.URL, Tokens: cred, HTTPClient: srv.Client()})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cred.Token(ctx); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := client.Reprocess(ctx, id1)
			if err != nil || res.Status != 202 {
				b.Errorf("%+v %v", res, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

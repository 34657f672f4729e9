package graph_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/graph"
)

// A hostile Graph and authority: each test makes the simulated server answer as no real
// Graph should, and checks that the client keeps its promises (DESIGN section 4).

const someID = "0f8fad5b-d9cb-469f-a165-70867728950e"

// listener counts the requests that reach it and whether they carried a secret.
type listener struct {
	url      string
	requests atomic.Int64
	secrets  atomic.Int64 // requests with an Authorization header or a client secret
}

func newListener(t *testing.T, tls bool) *listener {
	t.Helper()
	l := &listener{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.requests.Add(1)
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if r.Header.Get("Authorization") != "" || strings.Contains(string(body), "client_secret") {
			l.secrets.Add(1)
		}
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"id":"`+someID+`","state":"delivered","access_token":"x","token_type":"Bearer","expires_in":3600}`)
	})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	l.url = srv.URL
	return l
}

// TestRedirectsAreNotFollowed: a reprocess answered 307 to http on another port of the
// same host, or 302 to https on another port, is not followed: the token goes nowhere
// else, and the answer is the 3xx itself (failed, never accepted).
func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	plain, other := newListener(t, false), newListener(t, true)
	for _, tc := range []struct {
		status int
		to     string
	}{
		{http.StatusTemporaryRedirect, plain.url},
		{http.StatusFound, other.url},
		{http.StatusSeeOther, other.url},
		{http.StatusPermanentRedirect, plain.url},
	} {
		b.srv.SetInterceptor(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.HasSuffix(r.URL.Path, "/reprocess") {
				return false
			}
			http.Redirect(w, r, tc.to+r.URL.Path, tc.status)
			return true
		})
		res, err := b.client.Reprocess(context.Background(), someID)
		if err != nil || res.Status != tc.status {
			t.Errorf("redirect %d: status %d, err %v; want the %d itself", tc.status, res.Status, err, tc.status)
		}
	}
	if n := plain.requests.Load() + other.requests.Load(); n != 0 {
		t.Fatalf("redirects were followed: %d requests reached the other ports", n)
	}
}

// TestTokenRedirectIsNotFollowed: a token endpoint answering 307 does not get the client
// secret posted elsewhere.
func TestTokenRedirectIsNotFollowed(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{minBackoff: 50 * time.Millisecond})
	elsewhere := newListener(t, true)
	b.srv.SetInterceptor(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
			return false
		}
		http.Redirect(w, r, elsewhere.url+r.URL.Path, http.StatusTemporaryRedirect)
		return true
	})
	if _, err := b.cred.Token(context.Background()); !errors.Is(err, graph.ErrToken) {
		t.Fatalf("token through a redirect: %v, want a token error", err)
	}
	if n := elsewhere.requests.Load(); n != 0 {
		t.Fatalf("%d token requests (%d with the secret) followed the redirect", n, elsewhere.secrets.Load())
	}
}

// TestStatusDecides: a 202 whose body is endless or stalls is a 202, at once, and memory
// stays bounded; an error body that stalls leaves its status standing.
func TestStatusDecides(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{timeout: 2 * time.Second})
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	var mode atomic.Value
	b.srv.SetInterceptor(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/reprocess") {
			return false
		}
		switch mode.Load() {
		case "endless":
			w.WriteHeader(http.StatusAccepted)
			chunk := []byte(strings.Repeat("x", 64<<10))
			for range 640 { // 40 MiB
				if _, err := w.Write(chunk); err != nil {
					return true
				}
			}
		case "stall202":
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusAccepted)
			w.(http.Flusher).Flush()
			select {
			case <-stall:
			case <-r.Context().Done():
			}
		case "stall404":
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"error":`)
			w.(http.Flusher).Flush()
			select {
			case <-stall:
			case <-r.Context().Done():
			}
		}
		return true
	})
	for _, m := range []string{"endless", "stall202", "stall404"} {
		mode.Store(m)
		start := time.Now()
		res, err := b.client.Reprocess(context.Background(), someID)
		want := http.StatusAccepted
		if m == "stall404" {
			want = http.StatusNotFound
		}
		if err != nil || res.Status != want {
			t.Errorf("%s: status %d, err %v; want %d", m, res.Status, err, want)
		}
		if m != "stall404" && time.Since(start) > time.Second {
			t.Errorf("%s: took %s: the body was waited for", m, time.Since(start))
		}
	}
}

// TestAnswersAreBounded: a 2 MiB error message, a 2 MiB state, an assignment that is not the
// one asked for and a huge request-id header do not pass unbounded.
func TestAnswersAreBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	huge := strings.Repeat("m", 2<<20)
	var mode atomic.Value
	b.srv.SetInterceptor(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/oauth2/") || strings.Contains(r.URL.Path, "/.well-known/") || strings.Contains(r.URL.Path, "/discovery/") {
			return false
		}
		w.Header().Set("request-id", strings.Repeat("r", 32<<10))
		switch mode.Load() {
		case "error":
			w.WriteHeader(http.StatusNotFound)
			_, _ = fmt.Fprintf(w, `{"error":{"code":"ResourceNotFound","message":"%s"}}`, huge)
		case "state":
			_, _ = fmt.Fprintf(w, `{"id":"%s","state":"%s","status":"%s"}`, someID, huge, huge)
		case "other":
			_, _ = io.WriteString(w, `{"id":"11111111-2222-4333-8444-555555555555","state":"delivered"}`)
		}
		return true
	})
	mode.Store("error")
	res, err := b.client.Reprocess(context.Background(), someID)
	if err != nil || res.Status != 404 || res.Error == nil || len(res.Error.Message) > 64<<10 {
		t.Fatalf("huge error: %d %v, message of %d bytes", res.Status, err, len(res.Error.Message))
	}
	if len(res.RequestID) > 256 {
		t.Fatalf("request-id of %d bytes kept", len(res.RequestID))
	}
	mode.Store("state")
	if _, _, err := b.client.GetAssignment(context.Background(), someID); !errors.Is(err, graph.ErrDecode) {
		t.Fatalf("2 MiB state: %v, want ErrDecode", err)
	}
	mode.Store("other")
	if _, _, err := b.client.GetAssignment(context.Background(), someID); !errors.Is(err, graph.ErrDecode) {
		t.Fatalf("an answer about another assignment: %v, want ErrDecode", err)
	}
}

// TestTokenThatExpiresAtOnce: an authority issuing tokens with expires_in 0 is asked again
// with backoff, not in a loop, and the reason is the credential's last error.
func TestTokenThatExpiresAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{minBackoff: 200 * time.Millisecond})
	var requests atomic.Int64
	b.srv.SetInterceptor(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
			return false
		}
		requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token_type":"Bearer","expires_in":0,"access_token":"short"}`)
		return true
	})
	stop := b.runCredential(t)
	time.Sleep(1500 * time.Millisecond) // the loop would make ~100 requests in this time
	stop()
	if n := requests.Load(); n > 8 {
		t.Fatalf("%d token requests in 1.5s for tokens that expire at once", n)
	}
	if b.cred.Ready() || b.cred.LastError() == nil || !strings.Contains(b.cred.LastError().Error(), "expires at once") {
		t.Fatalf("ready %v, last error %v", b.cred.Ready(), b.cred.LastError())
	}
	if !strings.Contains(b.logs.String(), "expires at once") {
		t.Fatalf("the log does not say why: %s", b.logs.String())
	}
}

// TestEndlessTokenAnswer: an authority answering with an endless body is read up to a
// bound, and the request fails.
func TestEndlessTokenAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{minBackoff: 50 * time.Millisecond})
	b.srv.SetInterceptor(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token_type":"Bearer","expires_in":3600,"access_token":"`)
		chunk := strings.Repeat("a", 64<<10)
		for range 1024 { // 64 MiB, unless the client hangs up
			if _, err := io.WriteString(w, chunk); err != nil {
				break
			}
		}
		return true
	})
	if _, err := b.cred.Token(context.Background()); !errors.Is(err, graph.ErrToken) {
		t.Fatalf("token from an endless answer: %v, want a token error", err)
	}
}

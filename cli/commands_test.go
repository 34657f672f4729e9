package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/reprocessor/reprocessor/worker"
)

// TestDemo runs the demo as a user would, with nothing configured, until its sample ids
// are settled and tracked.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole demo: CI runs it, -short does not")
	}
	t.Parallel()
	var out, errOut syncBuffer
	env := env{"REPROCESSOR_HTTP_ADDR": "127.0.0.1:0"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Every event the demo publishes is collected from its NATS and checked against
	// schemas/events.
	var events eventCollector
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"demo", "--ids", "25", "--per-second", "50"}, env.get, &out, &errOut)
	}()
	natsURL := regexp.MustCompile(`embedded NATS at (nats://127\.0\.0\.1:\d+)`)
	waitUntil(t, "the demo's NATS", time.Minute, func() bool { return natsURL.MatchString(out.String()) })
	nc, err := nats.Connect(natsURL.FindStringSubmatch(out.String())[1])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Subscribe("entitlement.reprocess.events.>", func(m *nats.Msg) { events.add(m.Data) }); err != nil {
		t.Fatal(err)
	}
	code := <-done
	kinds := checkEvents(t, events.all(), "urn:reprocessor:entitlement.reprocess")
	if kinds[worker.KindAccepted] == 0 || kinds[worker.KindStateChanged] == 0 || kinds[worker.KindRejected] == 0 {
		t.Errorf("events heard from the demo: %v; want accepted, rejected and state_changed among them", kinds)
	}
	if code != exitOK {
		t.Fatalf("demo exited %d\n%s\n%s", code, out.String(), errOut.String())
	}
	text := out.String()
	for _, want := range []string{"simulated Graph at https://127.0.0.1:", "embedded NATS at nats://127.0.0.1:", "metrics at http://127.0.0.1:",
		" accepted ", " rejected ", "published 25", "state_changed", "(settled)", "demo stopped cleanly"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
}

// TestFakeGraph serves the simulated Graph alone and checks that what it prints points a
// client at it: the CA file, the authority and the credentials.
func TestFakeGraph(t *testing.T) {
	t.Parallel()
	var out, errOut syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	dir := t.TempDir()
	go func() { done <- Main(ctx, []string{"fake-graph", "--ca-dir", dir}, env{}.get, &out, &errOut) }()
	exports := map[string]string{}
	re := regexp.MustCompile(`(?m)^export ([A-Z_]+)="([^"]*)"$`)
	waitUntil(t, "the settings", 10*time.Second, func() bool {
		for _, m := range re.FindAllStringSubmatch(out.String(), -1) {
			exports[m[1]] = m[2]
		}
		return strings.Contains(out.String(), "reprocessor run")
	})
	for _, k := range []string{"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST", "SSL_CERT_FILE", "REPROCESSOR_GRAPH_URL"} {
		if exports[k] == "" {
			t.Fatalf("%s not printed:\n%s", k, out.String())
		}
	}
	pem, err := os.ReadFile(exports["SSL_CERT_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("the CA file holds no certificate")
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	authority := strings.TrimRight(exports["AZURE_AUTHORITY_HOST"], "/")
	resp, err := client.Get(authority + "/" + exports["AZURE_TENANT_ID"] + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("openid-configuration: %d", resp.StatusCode)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("fake-graph exited %d: %s", code, errOut.String())
	}
}

func TestCommandErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		env  env
		code int
		want string
	}{
		{nil, env{}, exitUsage, "a command is required"},
		{[]string{"frobnicate"}, env{}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"run", "extra"}, env{}, exitUsage, `unexpected arguments ["extra"]`},
		{[]string{"run"}, env{"REPROCESSOR_CONCURRENCY": "0"}, exitUsage, "REPROCESSOR_CONCURRENCY: must be between 1 and 10000"},
		{[]string{"check-config"}, env{"REPROCESSOR_GRAPH_TIMEOUT": "30"}, exitUsage, "REPROCESSOR_GRAPH_TIMEOUT"},
	} {
		var out, errOut syncBuffer
		code := Main(context.Background(), tc.args, tc.env.get, &out, &errOut)
		if code != tc.code || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut.String(), tc.code, tc.want)
		}
	}
	var out syncBuffer
	if code := Main(context.Background(), []string{"version"}, env{}.get, &out, &out); code != exitOK || !strings.HasPrefix(out.String(), "reprocessor ") {
		t.Errorf("version: %d %q", code, out.String())
	}
	out = syncBuffer{}
	if code := Main(context.Background(), []string{"check-config"}, env{}.get, &out, &out); code != exitOK || !strings.Contains(out.String(), "configuration is valid") ||
		!strings.Contains(out.String(), "AZURE_CLIENT_SECRET=unset") {
		t.Errorf("check-config: %d %q", code, out.String())
	}
}

// TestNATSPasswordNeverShown: a NATS_URL with credentials in any form nats.go accepts (no
// scheme, a comma or an '@' in the password, a token) is redacted from check-config and
// from the log of a worker trying to connect with it.
func TestNATSPasswordNeverShown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a port that takes connections and says nothing
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	hostPort := ln.Addr().String()
	for _, tc := range []struct {
		url, secret string
		code        int
	}{
		{"alice:pa55w0rd1@" + hostPort, "pa55w0rd1", exitOK},
		// nats.go splits the list on commas, so this is two broken URLs: refused, unshown.
		{"nats://alice:p4ss,w0rd2@" + hostPort, "p4ss,w0rd2", exitUsage},
		{"nats://alice:p4ss@w0rd3@" + hostPort, "p4ss@w0rd3", exitOK},
		{"nats://t0kens3cr3t4@" + hostPort, "t0kens3cr3t4", exitOK},
	} {
		t.Run(tc.secret, func(t *testing.T) {
			t.Parallel()
			checkNATSURLNotShown(t, tc.url, tc.secret, tc.code)
		})
	}
}

// checkNATSURLNotShown runs check-config and a worker with NATS_URL natsURL and checks that
// neither shows secret, nor a piece of it.
func checkNATSURLNotShown(t *testing.T, natsURL, secret string, wantCode int) {
	tc := struct {
		url, secret string
		code        int
	}{natsURL, secret, wantCode}
	{
		e := env{"NATS_URL": tc.url, "REPROCESSOR_HTTP_ADDR": "off", "REPROCESSOR_LOG_LEVEL": "debug"}
		var out syncBuffer
		if code := Main(context.Background(), []string{"check-config"}, e.get, &out, &out); code != tc.code {
			t.Fatalf("check-config %q: exit %d, want %d: %s", tc.url, code, tc.code, out.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
		var logs syncBuffer
		_ = Main(ctx, []string{"run"}, e.get, &logs, &logs)
		cancel()
		for what, text := range map[string]string{"check-config": out.String(), "run": logs.String()} {
			pieces := append([]string{tc.secret}, strings.FieldsFunc(tc.secret, func(r rune) bool { return r == ',' || r == '@' })...)
			for _, p := range pieces {
				if strings.Contains(text, p) {
					t.Errorf("%s with NATS_URL %q shows %q:\n%s", what, tc.url, p, text)
				}
			}
		}
	}
}

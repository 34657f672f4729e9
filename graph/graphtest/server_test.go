package graphtest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"go.uber.org/goleak"

	"github.com/reprocessor/reprocessor/graph/graphtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const id1 = "0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5c6d"

func start(t *testing.T, opts graphtest.Options) *graphtest.Server {
	t.Helper()
	s := graphtest.New(opts)
	t.Cleanup(s.Close)
	return s
}

// token gets a token from the server's token endpoint with the given secret.
func token(t *testing.T, s *graphtest.Server, secret string) (int, map[string]any) {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {s.ClientID},
		"client_secret": {secret}, "scope": {s.URL + "/.default"}}
	resp, err := s.Client().PostForm(s.URL+"/"+s.TenantID+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func validToken(t *testing.T, s *graphtest.Server) string {
	t.Helper()
	status, body := token(t, s, s.ClientSecret)
	if status != http.StatusOK {
		t.Fatalf("token status %d: %v", status, body)
	}
	return body["access_token"].(string)
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
}

func call(t *testing.T, s *graphtest.Server, method, path, tok string) answer {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("client-request-id", "11111111-2222-4333-8444-555555555555")
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &a.body); err != nil {
			t.Fatalf("body %q: %v", data, err)
		}
	}
	return a
}

func reprocessPath(version, id string) string {
	if version == "beta" {
		return "/beta/identityGovernance/entitlementManagement/accessPackageAssignments/" + id + "/reprocess"
	}
	return "/v1.0/identityGovernance/entitlementManagement/assignments/" + id + "/reprocess"
}

func assignmentPath(version, id string) string {
	return strings.TrimSuffix(reprocessPath(version, id), "/reprocess")
}

func errorCode(a answer) string {
	e, _ := a.body["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

func TestTokenEndpoint(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{TokenLifetime: 2 * time.Hour})

	status, body := token(t, s, s.ClientSecret)
	if status != http.StatusOK || body["token_type"] != "Bearer" || body["expires_in"] != float64(7200) || body["access_token"] == "" {
		t.Fatalf("good secret: %d %v", status, body)
	}
	status, body = token(t, s, "wrong")
	if status != http.StatusUnauthorized || body["error"] != "invalid_client" ||
		!strings.HasPrefix(body["error_description"].(string), "AADSTS7000215:") {
		t.Fatalf("wrong secret: %d %v", status, body)
	}
	s.FailTokens(true)
	if status, body = token(t, s, s.ClientSecret); status != http.StatusUnauthorized {
		t.Fatalf("FailTokens: %d %v", status, body)
	}
	s.FailTokens(false)

	// A client assertion is accepted without verification; a wrong client id is not.
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {s.ClientID}, "scope": {s.URL + "/.default"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {"a.b.c"}}
	resp, err := s.Client().PostForm(s.URL+"/"+s.TenantID+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("assertion: %d", resp.StatusCode)
	}
	form.Set("client_id", "someone-else")
	resp, err = s.Client().PostForm(s.URL+"/"+s.TenantID+"/oauth2/v2.0/token", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("wrong client id: %d", resp.StatusCode)
	}
	if got := s.CallCount(graphtest.OpToken); got != 5 {
		t.Fatalf("token calls %d, want 5", got)
	}
}

func TestOpenIDConfiguration(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	a := call(t, s, http.MethodGet, "/"+s.TenantID+"/v2.0/.well-known/openid-configuration", "")
	if a.status != http.StatusOK || a.body["issuer"] != s.URL+"/"+s.TenantID+"/v2.0" ||
		a.body["token_endpoint"] != s.URL+"/"+s.TenantID+"/oauth2/v2.0/token" {
		t.Fatalf("%d %v", a.status, a.body)
	}
}

func TestReprocessAndGet(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	tok := validToken(t, s)
	for _, version := range []string{"v1.0", "beta"} {
		a := call(t, s, http.MethodPost, reprocessPath(version, id1), tok)
		if a.status != http.StatusAccepted || a.header.Get("request-id") == "" || a.header.Get("Date") == "" ||
			a.header.Get("client-request-id") != "11111111-2222-4333-8444-555555555555" || a.header.Get("x-ms-ags-diagnostic") == "" {
			t.Fatalf("%s reprocess: %d %v", version, a.status, a.header)
		}
		// Upper case ids are the same assignment.
		a = call(t, s, http.MethodGet, assignmentPath(version, strings.ToUpper(id1)), tok)
		if a.status != http.StatusOK || a.body["id"] != id1 {
			t.Fatalf("%s get: %d %v", version, a.status, a.body)
		}
		if version == "beta" && (a.body["assignmentState"] != "Delivered" || a.body["assignmentStatus"] != "Delivered") ||
			version == "v1.0" && (a.body["state"] != "delivered" || a.body["status"] != "Delivered") {
			t.Fatalf("%s get: %v", version, a.body)
		}
	}
	s.SetState(id1, "partiallyDelivered", "PartiallyDelivered")
	if a := call(t, s, http.MethodGet, assignmentPath("beta", id1), tok); a.body["assignmentState"] != "PartiallyDelivered" {
		t.Fatalf("beta state: %v", a.body)
	}
	if a := call(t, s, http.MethodGet, assignmentPath("v1.0", id1), tok); a.body["state"] != "partiallyDelivered" {
		t.Fatalf("v1.0 state: %v", a.body)
	}
}

func TestInvalidRequests(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	tok := validToken(t, s)
	tests := []struct {
		name, method, path, token string
		status                    int
		code                      string
	}{
		{"no token", http.MethodPost, reprocessPath("v1.0", id1), "", 401, "InvalidAuthenticationToken"},
		{"unknown token", http.MethodPost, reprocessPath("v1.0", id1), "forged", 401, "InvalidAuthenticationToken"},
		{"invalid guid", http.MethodPost, reprocessPath("v1.0", "not-a-guid"), tok, 400, "BadRequest"},
		{"invalid guid get", http.MethodGet, assignmentPath("beta", id1+"0"), tok, 400, "BadRequest"},
		{"wrong method", http.MethodGet, reprocessPath("v1.0", id1), tok, 400, "BadRequest"},
		{"unknown path", http.MethodGet, "/v1.0/users", tok, 404, "UnknownRoute"},
	}
	for _, tt := range tests {
		a := call(t, s, tt.method, tt.path, tt.token)
		if a.status != tt.status || errorCode(a) != tt.code {
			t.Errorf("%s: %d %v, want %d %s", tt.name, a.status, a.body, tt.status, tt.code)
		}
		inner, _ := a.body["error"].(map[string]any)["innerError"].(map[string]any)
		if inner["request-id"] != a.header.Get("request-id") || inner["client-request-id"] != "11111111-2222-4333-8444-555555555555" {
			t.Errorf("%s: innerError %v", tt.name, inner)
		}
	}
	if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), "forged"); a.header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
}

func TestExpireTokensEarly(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	s.ExpireTokensEarly(true)
	status, body := token(t, s, s.ClientSecret)
	if status != http.StatusOK || body["expires_in"] != float64(3600) {
		t.Fatalf("%d %v", status, body)
	}
	tok := body["access_token"].(string)
	deadline := time.Now().Add(5 * time.Second)
	for call(t, s, http.MethodPost, reprocessPath("v1.0", id1), tok).status != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatal("token still accepted after 5s")
		}
		time.Sleep(20 * time.Millisecond) // polling for the server's clock to pass the early expiry
	}
	s.ExpireTokensEarly(false)
	if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), validToken(t, s)); a.status != http.StatusAccepted {
		t.Fatalf("after ExpireTokensEarly(false): %d", a.status)
	}
	s.RevokeTokens()
	if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), tok); a.status != http.StatusUnauthorized {
		t.Fatalf("after RevokeTokens: %d", a.status)
	}
}

func TestSetAnswer(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	tok := validToken(t, s)
	tests := []struct {
		status int
		code   string
		get    int // the answer to GET of the same id
	}{
		{400, "BadRequest", 400},
		{403, "Authorization_RequestDenied", 200},
		{404, "ResourceNotFound", 404},
		{409, "Conflict", 200},
		{500, "UnknownError", 200},
		{503, "ServiceUnavailable", 200},
	}
	for i, tt := range tests {
		id := "00000000-0000-4000-8000-00000000000" + strconv.Itoa(i)
		s.SetAnswer(id, tt.status)
		if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id), tok); a.status != tt.status || errorCode(a) != tt.code {
			t.Errorf("%d: %d %v", tt.status, a.status, a.body)
		}
		if a := call(t, s, http.MethodGet, assignmentPath("v1.0", id), tok); a.status != tt.get {
			t.Errorf("%d: get answered %d, want %d", tt.status, a.status, tt.get)
		}
		s.SetAnswer(id, 0)
		if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id), tok); a.status != http.StatusAccepted {
			t.Errorf("%d cleared: %d", tt.status, a.status)
		}
	}
}

// statuses makes n reprocess calls and returns their statuses.
func statuses(t *testing.T, s *graphtest.Server, tok string, n int) []int {
	t.Helper()
	var got []int
	for range n {
		got = append(got, call(t, s, http.MethodPost, reprocessPath("v1.0", id1), tok).status)
	}
	return got
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFaultCounters(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	tok := validToken(t, s)

	s.Storm503(2)
	if got := statuses(t, s, tok, 3); !equal(got, []int{503, 503, 202}) {
		t.Errorf("Storm503(2): %v", got)
	}
	// The storm is for reprocess only.
	s.Storm503(-1)
	if a := call(t, s, http.MethodGet, assignmentPath("v1.0", id1), tok); a.status != http.StatusOK {
		t.Errorf("get during storm: %d", a.status)
	}
	if got := statuses(t, s, tok, 3); !equal(got, []int{503, 503, 503}) {
		t.Errorf("Storm503(-1): %v", got)
	}
	s.ClearFaults()

	s.Throttle429(1, "2.128")
	a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), tok)
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "2.128" {
		t.Errorf("Throttle429 with header: %d %v", a.status, a.header)
	}
	s.Throttle429(1, "")
	a = call(t, s, http.MethodGet, assignmentPath("v1.0", id1), tok)
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "" {
		t.Errorf("Throttle429 without header: %d %v", a.status, a.header)
	}
	if got := statuses(t, s, tok, 1); !equal(got, []int{202}) {
		t.Errorf("after Throttle429: %v", got)
	}

	s.Forbid(2)
	if got := statuses(t, s, tok, 3); !equal(got, []int{403, 403, 202}) {
		t.Errorf("Forbid(2): %v", got)
	}
	s.Forbid(-1)
	if got := statuses(t, s, tok, 2); !equal(got, []int{403, 403}) {
		t.Errorf("Forbid(-1): %v", got)
	}
	s.ClearFaults()
	if got := statuses(t, s, tok, 1); !equal(got, []int{202}) {
		t.Errorf("after ClearFaults: %v", got)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	tok := validToken(t, s)
	s.SetRateLimit(0.5, 2) // one call every 2s after a burst of 2
	got := statuses(t, s, tok, 3)
	if !equal(got[:2], []int{202, 202}) || got[2] != 429 {
		t.Fatalf("statuses %v", got)
	}
	a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), tok)
	ra, err := strconv.ParseFloat(a.header.Get("Retry-After"), 64)
	if a.status != http.StatusTooManyRequests || err != nil || ra <= 0 || ra > 2 {
		t.Fatalf("429 Retry-After %q (%v)", a.header.Get("Retry-After"), err)
	}
	s.SetRateLimit(0, 0)
	if got := statuses(t, s, tok, 1); !equal(got, []int{202}) {
		t.Fatalf("without limit: %v", got)
	}
}

func TestRandomFaults(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{ThrottleRate: 1, RandomRetryAfter: "0.5"})
	tok := validToken(t, s)
	if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), tok); a.status != 429 || a.header.Get("Retry-After") != "0.5" {
		t.Fatalf("ThrottleRate 1: %d %v", a.status, a.header)
	}
	s.SetRandomFaults(0, 1, "")
	if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), tok); a.status != 503 || a.header.Get("Retry-After") != "1" {
		t.Fatalf("UnavailableRate 1: %d %v", a.status, a.header)
	}
	s.SetRandomFaults(0, 0, "")
	if got := statuses(t, s, tok, 1); !equal(got, []int{202}) {
		t.Fatalf("no random faults: %v", got)
	}
}

func TestUnknownIDs(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{UnknownRate: 0.5})
	tok := validToken(t, s)
	unknown := 0
	for i := range 200 {
		id := "00000000-0000-4000-8000-" + strings.Repeat("0", 9) + strconv.Itoa(100+i)
		first := call(t, s, http.MethodPost, reprocessPath("v1.0", id), tok).status
		if again := call(t, s, http.MethodPost, reprocessPath("v1.0", id), tok).status; again != first {
			t.Fatalf("%s answered %d then %d", id, first, again)
		}
		if first == http.StatusNotFound {
			unknown++
		}
	}
	if unknown < 50 || unknown > 150 {
		t.Fatalf("%d of 200 unknown at rate 0.5", unknown)
	}
	s.SetUnknownRate(0)
	if got := statuses(t, s, tok, 1); !equal(got, []int{202}) {
		t.Fatalf("rate 0: %v", got)
	}

	strict := start(t, graphtest.Options{StrictStore: true})
	tok = validToken(t, strict)
	if a := call(t, strict, http.MethodPost, reprocessPath("v1.0", id1), tok); a.status != http.StatusNotFound {
		t.Fatalf("strict store, unseeded: %d", a.status)
	}
	strict.AddAssignments(graphtest.Assignment{ID: id1})
	if a := call(t, strict, http.MethodPost, reprocessPath("v1.0", id1), tok); a.status != http.StatusAccepted {
		t.Fatalf("strict store, seeded: %d", a.status)
	}
}

func TestRealistic(t *testing.T) {
	t.Parallel()
	o := graphtest.Realistic()
	if o.LatencyMin != 50*time.Millisecond || o.LatencyMax != 300*time.Millisecond || o.UnknownRate != 0.02 ||
		o.ThrottleRate <= 0 || o.UnavailableRate <= 0 {
		t.Fatalf("%+v", o)
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	tok := validToken(t, s)
	s.SetLatency(30*time.Millisecond, 40*time.Millisecond)
	began := time.Now()
	statuses(t, s, tok, 1)
	if d := time.Since(began); d < 30*time.Millisecond {
		t.Fatalf("call took %s with latency 30-40ms", d)
	}
	s.SetLatency(0, 0)
}

func TestList(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{PageSize: 2})
	tok := validToken(t, s)
	pkg := "aaaaaaaa-0000-4000-8000-000000000000"
	var want []string
	for i := range 5 {
		id := "bbbbbbbb-0000-4000-8000-00000000000" + strconv.Itoa(i)
		state := "delivered"
		if i == 4 {
			state = "expired"
		}
		s.AddAssignments(graphtest.Assignment{ID: id, AccessPackageID: pkg, State: state})
		if state == "delivered" {
			want = append(want, id)
		}
	}
	s.AddAssignments(graphtest.Assignment{ID: "cccccccc-0000-4000-8000-000000000000", AccessPackageID: "dddddddd-0000-4000-8000-000000000000"})

	collect := func(version, query, field string) []string {
		t.Helper()
		next := s.URL + strings.TrimSuffix(assignmentPath(version, "x"), "/x") + "?" + query
		var ids []string
		for next != "" {
			a := call(t, s, http.MethodGet, strings.TrimPrefix(next, s.URL), tok)
			if a.status != http.StatusOK {
				t.Fatalf("%s: %d %v", next, a.status, a.body)
			}
			for _, v := range a.body["value"].([]any) {
				m := v.(map[string]any)
				if m[field] == nil {
					t.Fatalf("no %s in %v", field, m)
				}
				ids = append(ids, m["id"].(string))
			}
			next, _ = a.body["@odata.nextLink"].(string)
		}
		return ids
	}
	filter := url.QueryEscape("(state eq 'delivered') and accessPackage/id eq '" + pkg + "'")
	if got := collect("v1.0", "$filter="+filter, "state"); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("v1.0 list: %v, want %v", got, want)
	}
	filter = url.QueryEscape("assignmentState eq 'Delivered' and accessPackage/id eq '" + pkg + "'")
	if got := collect("beta", "$filter="+filter+"&$top=1", "assignmentState"); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("beta list: %v, want %v", got, want)
	}
	if got := collect("v1.0", "", "state"); len(got) != 6 {
		t.Errorf("unfiltered list: %v", got)
	}
	if got := collect("v1.0", "$filter="+url.QueryEscape("state eq 'it''s'"), "state"); len(got) != 0 {
		t.Errorf("quoted literal: %v", got)
	}
	a := call(t, s, http.MethodGet, "/v1.0/identityGovernance/entitlementManagement/assignments?$filter="+url.QueryEscape("startswith(id,'a')"), tok)
	if a.status != http.StatusBadRequest {
		t.Errorf("unsupported filter: %d", a.status)
	}
	if s.CallCount(graphtest.OpListAssignments) < 8 {
		t.Errorf("list calls %d", s.CallCount(graphtest.OpListAssignments))
	}
}

func TestCalls(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	tok := validToken(t, s)
	call(t, s, http.MethodPost, reprocessPath("beta", strings.ToUpper(id1)), tok)
	call(t, s, http.MethodGet, assignmentPath("v1.0", id1), "bad")
	calls := s.Calls()
	if len(calls) != 3 {
		t.Fatalf("%d calls: %+v", len(calls), calls)
	}
	if c := calls[0]; c.Operation != graphtest.OpToken || c.Status != 200 || !c.TokenValid {
		t.Errorf("token call %+v", c)
	}
	c := calls[1]
	if c.Operation != graphtest.OpReprocess || c.Method != http.MethodPost || c.APIVersion != "beta" || c.AssignmentID != id1 ||
		c.Status != 202 || !c.TokenValid || c.RequestID == "" || c.ClientRequestID != "11111111-2222-4333-8444-555555555555" || c.Time.IsZero() {
		t.Errorf("reprocess call %+v", c)
	}
	if c := calls[2]; c.Operation != graphtest.OpGetAssignment || c.Status != 401 || c.TokenValid {
		t.Errorf("get call %+v", c)
	}
	if s.CallCount(graphtest.OpReprocess) != 1 || s.CallCount(graphtest.OpGetAssignment) != 1 || s.CallCount("nothing") != 0 {
		t.Error("CallCount")
	}
	s.ResetCalls()
	if len(s.Calls()) != 0 || s.CallCount(graphtest.OpReprocess) != 0 {
		t.Error("ResetCalls")
	}
}

func TestEnvAndCAFile(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{TenantID: "t", ClientID: "c", ClientSecret: "s"})
	path, err := s.WriteCAFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || string(data) != string(s.CACertPEM()) || !strings.Contains(string(data), "BEGIN CERTIFICATE") {
		t.Fatalf("CA file %q: %v", data, err)
	}
	env := s.Env(path)
	want := map[string]string{"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s",
		"AZURE_AUTHORITY_HOST": s.URL + "/", "SSL_CERT_FILE": path, "REPROCESSOR_GRAPH_URL": s.URL}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
	if !strings.HasPrefix(s.URL, "https://127.0.0.1:") {
		t.Errorf("URL %s", s.URL)
	}
}

func TestHTTP2(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	resp, err := s.Client().Get(s.URL + "/" + s.TenantID + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("protocol %s", resp.Proto)
	}
}

func TestAddr(t *testing.T) {
	t.Parallel()
	s, err := graphtest.Start(graphtest.Options{Addr: "localhost:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := s.Client().Get(strings.Replace(s.URL, "127.0.0.1", "localhost", 1) + "/" + s.TenantID + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := graphtest.Start(graphtest.Options{Addr: strings.TrimPrefix(s.URL, "https://")}); err == nil {
		t.Fatal("second server on the same address started")
	}
}

// TestAzidentity checks the authority against the real azidentity client secret credential.
func TestAzidentity(t *testing.T) {
	t.Parallel()
	s := start(t, graphtest.Options{})
	credential := func(secret string) azcore.TokenCredential {
		c, err := azidentity.NewClientSecretCredential(s.TenantID, s.ClientID, secret, &azidentity.ClientSecretCredentialOptions{
			ClientOptions: azcore.ClientOptions{
				Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: s.URL + "/"},
				Transport: s.Client(),
			},
			DisableInstanceDiscovery: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	scope := policy.TokenRequestOptions{Scopes: []string{s.URL + "/.default"}}
	at, err := credential(s.ClientSecret).GetToken(ctx, scope)
	if err != nil {
		t.Fatal(err)
	}
	if a := call(t, s, http.MethodPost, reprocessPath("v1.0", id1), at.Token); a.status != http.StatusAccepted {
		t.Fatalf("reprocess with azidentity's token: %d", a.status)
	}
	if d := time.Until(at.ExpiresOn); d < 50*time.Minute {
		t.Fatalf("expires in %s", d)
	}
	_, err = credential("wrong-secret-value").GetToken(ctx, scope)
	if err == nil || !strings.Contains(err.Error(), "AADSTS7000215") || strings.Contains(err.Error(), "wrong-secret-value") {
		t.Fatalf("wrong secret: %v", err)
	}
	for _, c := range s.Calls() {
		if c.Operation != graphtest.OpToken && c.Operation != graphtest.OpDiscovery && c.Operation != graphtest.OpReprocess {
			t.Errorf("azidentity made an unexpected call %+v", c)
		}
	}
}

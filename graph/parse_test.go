package graph

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"1.5", 1500 * time.Millisecond, true},
		{"2.128", 2128 * time.Millisecond, true},
		{" 7 ", 7 * time.Second, true},
		{"120", 120 * time.Second, true},
		{"0", 0, true},
		{"0.000000001", time.Nanosecond, true},
		{"1.0000000019", time.Second + time.Nanosecond, true}, // beyond nanoseconds: truncated
		{".25", 250 * time.Millisecond, true},
		{"-1", 0, true},
		{"-0.5", 0, true},
		{"86400", MaxRetryAfter, true},
		{"99999999999999999999999", MaxRetryAfter, true},
		{"", 0, false},
		{"abc", 0, false},
		{"1e3", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
		{"0x10", 0, false},
		{".", 0, false},
		{"-", 0, false},
		{"1.2.3", 0, false},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{now.Add(-30 * time.Second).Format(http.TimeFormat), 0, true},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), MaxRetryAfter, true},
		{now.Add(90 * time.Second).Format(time.RFC850), 90 * time.Second, true},
		{"Fri, 02 Jan 2026 25:00:00 GMT", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ParseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"1.5", "2.128", "-1", "", "Fri, 02 Jan 2026 03:04:05 GMT", "1e9"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := ParseRetryAfter(s, now)
		if d < 0 || d > MaxRetryAfter || !ok && d != 0 {
			t.Fatalf("ParseRetryAfter(%q) = %s, %v", s, d, ok)
		}
	})
}

func TestValidID(t *testing.T) {
	t.Parallel()
	const g = "0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5c6d"
	tests := []struct {
		in   string
		want bool
	}{
		{g, true},
		{strings.ToUpper(g), true},
		{"00000000-0000-0000-0000-000000000000", true},
		{"", false},
		{"../../users", false},
		{"%2e%2e%2f", false},
		{"%2e%2e%2f" + g[9:], false},
		{"{" + g + "}", false},
		{"urn:uuid:" + g, false},
		{g + "?$select=id", false},
		{g + "/x", false},
		{g[:35], false},
		{g + "0", false},
		{"0b0e8bd56e1f4e0b9c1d1e2f3a4b5c6d", false},
		{"0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5c6g", false},
		{"0b0e8bd5_6e1f-4e0b-9c1d-1e2f3a4b5c6d", false},
		{"0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5c/d", false},
		{"0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5c d", false},
		{"0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5cé", false},
	}
	for _, tt := range tests {
		if got := ValidID(tt.in); got != tt.want {
			t.Errorf("ValidID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func FuzzValidIDURL(f *testing.F) {
	f.Add("0b0e8bd5-6e1f-4e0b-9c1d-1e2f3a4b5c6d")
	f.Add("../../users")
	c, err := New(Config{Tokens: staticTokens{}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id string) {
		u, err := c.assignmentURL(id, "/reprocess")
		if err != nil {
			return
		}
		want := c.collection + "/" + strings.ToLower(id) + "/reprocess"
		if u != want {
			t.Fatalf("id %q gave URL %s", id, u)
		}
	})
}

func TestDecodeAPIError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want *APIError
	}{
		{"graph", `{"error":{"code":"ResourceNotFound","message":"gone","innerError":{"request-id":"r1","client-request-id":"c1","date":"2026-01-02T03:04:05"}}}`,
			&APIError{Code: "ResourceNotFound", Message: "gone", RequestID: "r1", ClientRequestID: "c1", Date: "2026-01-02T03:04:05"}},
		{"empty message", `{"error":{"code":"UnknownError","message":""}}`, &APIError{Code: "UnknownError"}},
		{"empty", ``, nil},
		{"blank", " \n ", nil},
		{"html", `<html><body>502 Bad Gateway</body></html>`, &APIError{Message: `<html><body>502 Bad Gateway</body></html>`}},
		{"other json", `{"message":"nope"}`, &APIError{Message: `{"message":"nope"}`}},
		{"long text", strings.Repeat("x", 2000), &APIError{Message: strings.Repeat("x", maxErrorText) + "..."}},
	}
	for _, tt := range tests {
		got := decodeAPIError([]byte(tt.body))
		if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
		}
	}
	if s := (&APIError{Code: "Conflict", Message: "busy"}).Error(); s != "graph error Conflict: busy" {
		t.Errorf("Error() = %q", s)
	}
}

func TestDecodeAssignment(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body string
		beta bool
		want Assignment
	}{
		{`{"id":"a","state":"delivered","status":"Delivered"}`, false, Assignment{ID: "a", State: "delivered", Status: "Delivered"}},
		{`{"id":"a","state":"somethingNew","status":"x"}`, false, Assignment{ID: "a", State: "somethingNew", Status: "x"}},
		{`{"id":"a","assignmentState":"Delivered","assignmentStatus":"Delivered"}`, true, Assignment{ID: "a", State: "delivered", Status: "Delivered"}},
		{`{"id":"a","assignmentState":"PartiallyDelivered"}`, true, Assignment{ID: "a", State: "partiallyDelivered", Status: ""}},
		{`{"id":"a","assignmentState":"DeliveryFailed"}`, true, Assignment{ID: "a", State: "deliveryFailed", Status: ""}},
		{`{"id":"a","assignmentState":"Delivering"}`, true, Assignment{ID: "a", State: "delivering", Status: ""}},
		{`{"id":"a","assignmentState":"Expired"}`, true, Assignment{ID: "a", State: "expired", Status: ""}},
		{`{"id":"a","assignmentState":"BrandNew"}`, true, Assignment{ID: "a", State: "BrandNew", Status: ""}},
		{`{"id":"a","state":"Delivered"}`, false, Assignment{ID: "a", State: "delivered", Status: ""}},
		{`{"id":"a","assignmentState":"deliveryfailed"}`, true, Assignment{ID: "a", State: "deliveryFailed", Status: ""}},
		{`{"id":"a","state":"UNKNOWNFUTUREVALUE"}`, false, Assignment{ID: "a", State: "unknownFutureValue", Status: ""}},
	}
	for _, tt := range tests {
		got, err := decodeAssignment([]byte(tt.body), tt.beta)
		if err != nil || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v", tt.body, got, err, tt.want)
		}
	}
	if _, err := decodeAssignment([]byte("<html>"), false); err == nil {
		t.Error("no error for a body that is not JSON")
	}
}

func TestCloudByName(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, graph, authority string }{
		{"", "https://graph.microsoft.com", "https://login.microsoftonline.com/"},
		{"public", "https://graph.microsoft.com", "https://login.microsoftonline.com/"},
		{"usgov", "https://graph.microsoft.us", "https://login.microsoftonline.us/"},
		{"USGovDoD", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us/"},
		{"china", "https://microsoftgraph.chinacloudapi.cn", "https://login.chinacloudapi.cn/"},
	}
	for _, tt := range tests {
		c, err := CloudByName(tt.name)
		if err != nil || c.GraphURL != tt.graph || c.AuthorityHost != tt.authority {
			t.Errorf("CloudByName(%q) = %+v, %v", tt.name, c, err)
		}
	}
	_, err := CloudByName("azure")
	if err == nil || !strings.Contains(err.Error(), "public, usgov, usgovdod, china") {
		t.Errorf("unknown cloud: %v", err)
	}
}

func TestListURL(t *testing.T) {
	t.Parallel()
	const pkg = "AAAAAAAA-0000-4000-8000-000000000000"
	v1, _ := New(Config{Tokens: staticTokens{}})
	beta, _ := New(Config{Tokens: staticTokens{}, APIVersion: Beta, BaseURL: "https://graph.microsoft.us/"})
	const v1c = "https://graph.microsoft.com/v1.0/identityGovernance/entitlementManagement/assignments"
	const betac = "https://graph.microsoft.us/beta/identityGovernance/entitlementManagement/accessPackageAssignments"
	tests := []struct {
		c    *Client
		q    ListQuery
		want string
	}{
		{v1, ListQuery{}, v1c},
		{v1, ListQuery{State: "delivered"}, v1c + "?$filter=state%20eq%20%27delivered%27"},
		{v1, ListQuery{State: "it's", Top: 10}, v1c + "?$filter=state%20eq%20%27it%27%27s%27&$top=10"},
		{v1, ListQuery{State: "delivered", AccessPackageID: pkg},
			v1c + "?$filter=state%20eq%20%27delivered%27%20and%20accessPackage%2Fid%20eq%20%27aaaaaaaa-0000-4000-8000-000000000000%27"},
		{v1, ListQuery{Filter: "a eq 'b&c'"}, v1c + "?$filter=%28a%20eq%20%27b%26c%27%29"},
		{beta, ListQuery{State: "partiallyDelivered"}, betac + "?$filter=assignmentState%20eq%20%27PartiallyDelivered%27"},
		{v1, ListQuery{NextLink: "https://graph.microsoft.com/v1.0/x?$skiptoken=abc"}, "https://graph.microsoft.com/v1.0/x?$skiptoken=abc"},
	}
	for _, tt := range tests {
		got, err := tt.c.listURL(tt.q)
		if err != nil || got != tt.want {
			t.Errorf("%+v:\n got %s, %v\nwant %s", tt.q, got, err, tt.want)
		}
	}
	for _, q := range []ListQuery{
		{AccessPackageID: "x' or 1 eq 1 or 'x"},
		{Top: 1000},
		{Top: -1},
		{NextLink: "https://evil.example.com/v1.0/x"},
		{NextLink: "http://graph.microsoft.com/v1.0/x"},
		{NextLink: "https://user@graph.microsoft.com/v1.0/x"},
		{NextLink: "://bad"},
	} {
		if _, err := v1.listURL(q); err == nil {
			t.Errorf("%+v accepted", q)
		}
	}
}

func TestNewConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{},
		{Tokens: staticTokens{}, BaseURL: "http://graph.microsoft.com"},
		{Tokens: staticTokens{}, BaseURL: "https://graph.microsoft.com?x=1"},
		{Tokens: staticTokens{}, BaseURL: "https://"},
		{Tokens: staticTokens{}, APIVersion: "v2.0"},
		{Tokens: staticTokens{}, Timeout: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if _, err := New(Config{Tokens: staticTokens{}, BaseURL: "http://127.0.0.1:1", AllowHTTP: true}); err != nil {
		t.Errorf("AllowHTTP: %v", err)
	}
}

func TestNewUUID(t *testing.T) {
	t.Parallel()
	a, b := NewUUID(), NewUUID()
	if !ValidID(a) || a == b || a[14] != '4' || !strings.ContainsRune("89ab", rune(a[19])) {
		t.Fatalf("%s %s", a, b)
	}
}

package drift_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/reprocessor/reprocessor/drift"
	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/graph/graphtest"
	"github.com/reprocessor/reprocessor/worker"
)

// client returns a v1.0 client of srv with a real credential.
func client(tb testing.TB, srv *graphtest.Server) *graph.Client {
	tb.Helper()
	cred, err := graph.NewCredential(func(k string) string { return srv.Env("")[k] }, graph.Cloud{GraphURL: srv.URL},
		graph.CredentialOptions{HTTPClient: srv.Client()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cred.Close)
	c, err := graph.New(graph.Config{BaseURL: srv.URL, Tokens: cred, HTTPClient: srv.Client()})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

const (
	pkgA   = "aaaaaaaa-0000-4000-8000-000000000001"
	pkgB   = "bbbbbbbb-0000-4000-8000-000000000002"
	pkgC   = "cccccccc-0000-4000-8000-000000000003"
	g1     = "11111111-0000-4000-8000-000000000001"
	g2     = "22222222-0000-4000-8000-000000000002"
	g3     = "33333333-0000-4000-8000-000000000003"
	sp1    = "55555555-0000-4000-8000-000000000005"
	role1  = "66666666-0000-4000-8000-000000000006"
	role2  = "77777777-0000-4000-8000-000000000007"
	prefix = "9999"
)

func user(n int) string       { return fmt.Sprintf("00000000-0000-4000-8000-%012x", n+1) }
func assignment(n int) string { return fmt.Sprintf("a0000000-0000-4000-8000-%012x", n+1) }

// tenant seeds: package A grants member of g1, owner of g2, app role1 of sp1 and a
// SharePoint site, to users 0-4 (4 started a minute ago); package B grants member of g3
// (deleted) to user 5; package C grants role2 of sp1, which the app no longer defines, to user 6.
func tenant(t *testing.T, opts graphtest.Options) *graphtest.Server {
	srv := graphtest.New(opts)
	t.Cleanup(srv.Close)
	srv.AddGroup(g1, "Sales")
	srv.AddGroup(g2, "Sales owners")
	srv.AddGroup(g3, "Gone")
	srv.AddServicePrincipal(sp1, "CRM", role1, role2)
	srv.AddAccessPackage(graphtest.AccessPackage{ID: pkgA, DisplayName: "Sales", CatalogID: "c0000000-0000-4000-8000-00000000000c", Roles: []graphtest.ResourceRole{
		{Kind: graphtest.RoleMember, ResourceID: g1}, {Kind: graphtest.RoleOwner, ResourceID: g2},
		{Kind: graphtest.RoleApp, ResourceID: sp1, AppRoleID: role1},
		{Kind: graphtest.RoleSharePoint, ResourceID: "https://contoso.sharepoint.com/sites/sales"},
	}})
	srv.AddAccessPackage(graphtest.AccessPackage{ID: pkgB, DisplayName: "Gone", Roles: []graphtest.ResourceRole{{Kind: graphtest.RoleMember, ResourceID: g3}}})
	srv.AddAccessPackage(graphtest.AccessPackage{ID: pkgC, DisplayName: "CRM admins", Roles: []graphtest.ResourceRole{{Kind: graphtest.RoleApp, ResourceID: sp1, AppRoleID: role2}}})
	for i := range 5 {
		start := time.Now().Add(-48 * time.Hour)
		if i == 4 {
			start = time.Now().Add(-time.Minute)
		}
		srv.Assign(graphtest.Assignment{ID: assignment(i), AccessPackageID: pkgA, TargetID: user(i), PrincipalName: "user" + string(rune('0'+i)) + "@contoso.example", StartDateTime: start})
	}
	srv.Assign(graphtest.Assignment{ID: assignment(5), AccessPackageID: pkgB, TargetID: user(5)})
	srv.Assign(graphtest.Assignment{ID: assignment(6), AccessPackageID: pkgC, TargetID: user(6)})
	srv.RemoveMember(g1, user(1))
	srv.RemoveOwner(g2, user(2))
	srv.RemoveAppRoleAssignment(sp1, user(3), role1)
	srv.RemoveMember(g1, user(4)) // within the grace period: skipped
	srv.DeleteGroup(g3)
	srv.RemoveAppRole(sp1, role2)
	return srv
}

func TestScanFindsEachKindOfDrift(t *testing.T) {
	srv := tenant(t, graphtest.Options{PageSize: 2, StrictStore: true})
	srv.Throttle429(2, "0.05") // a 429 mid-scan is waited out
	s := drift.New(drift.Config{Reader: client(t, srv), Backoff: worker.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond}})
	found, sum, err := s.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range found {
		var parts []string
		for _, m := range d.Missing {
			parts = append(parts, m.String())
		}
		got[d.AssignmentID] = strings.Join(parts, "; ")
		if d.AccessPackageID != pkgA || d.TargetObjectID == "" || d.PrincipalName == "" {
			t.Errorf("drifted row %+v: want package A, a target and its principal name", d)
		}
	}
	want := map[string]string{
		assignment(1): "member of group " + g1,
		assignment(2): "owner of group " + g2,
		assignment(3): "appRole " + role1 + " of " + sp1,
	}
	if len(got) != len(want) {
		t.Errorf("drifted = %v, want %v", got, want)
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("assignment %s: missing %q, want %q", id, got[id], w)
		}
	}
	if sum.Packages != 3 || sum.Assignments != 6 || sum.Drifted != 3 || sum.Skipped != 1 || sum.UncheckedRoles != 4 {
		t.Errorf("summary %+v: want 3 packages, 6 checked, 3 drifted, 1 skipped, 4 unchecked (SharePoint)", sum)
	}
	kinds := map[string]int{}
	for _, f := range sum.Findings {
		kinds[f.Kind]++
	}
	if kinds[drift.FindingResourceNotFound] != 1 || kinds[drift.FindingAppRoleNotFound] != 1 || len(sum.Findings) != 2 {
		t.Errorf("findings %+v: want one deleted group and one app role no longer defined", sum.Findings)
	}
	if sum.Throttled != 2 {
		t.Errorf("throttled = %d, want the 2 injected 429s", sum.Throttled)
	}
	// Paging: the two pages of package A's 5 assignments at 2 a page are 3 calls.
	if n := sum.Calls[graph.OpListAssignments]; n != 3+1+1+1 { // A: 3 pages, B and C one each, plus one 429 retry at most
		if n < 5 || n > 7 {
			t.Errorf("list_assignments calls = %d, want about 5 (paged at 2)", n)
		}
	}
}

func TestScanWithoutDriftFindsNone(t *testing.T) {
	srv := graphtest.New(graphtest.Options{StrictStore: true})
	t.Cleanup(srv.Close)
	seeded := srv.Seed(graphtest.Shape{Packages: 7, Groups: 5, Apps: 2, SharePoint: true, Assignments: 60, Seed: 1})
	found, sum, err := drift.New(drift.Config{Reader: client(t, srv)}).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 0 || sum.Drifted != 0 || len(sum.Findings) != 0 {
		t.Fatalf("found %v, findings %v in a tenant without drift", found, sum.Findings)
	}
	if sum.Assignments != 60 || sum.Packages != len(seeded.Packages) {
		t.Errorf("summary %+v: want all 60 assignments of 7 packages checked", sum)
	}
}

func TestScanScope(t *testing.T) {
	srv := tenant(t, graphtest.Options{StrictStore: true})
	c := client(t, srv)
	_, sum, err := drift.New(drift.Config{Reader: c, Packages: []string{pkgC, strings.ToUpper(pkgC)}}).Run(context.Background())
	if err != nil || sum.Packages != 1 || sum.Assignments != 1 {
		t.Errorf("one package named twice: %+v, %v", sum, err)
	}
	found, sum, err := drift.New(drift.Config{Reader: c, Catalog: "c0000000-0000-4000-8000-00000000000c"}).Run(context.Background())
	if err != nil || sum.Packages != 1 || len(found) != 3 {
		t.Errorf("catalog of package A: %d drifted, %+v, %v", len(found), sum, err)
	}
	_, _, err = drift.New(drift.Config{Reader: c, Catalog: "c0000000-0000-4000-8000-0000000000ff"}).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("unknown catalog: err %v, want not found", err)
	}
	_, sum, err = drift.New(drift.Config{Reader: c, Packages: []string{"dddddddd-0000-4000-8000-000000000004"}}).Run(context.Background())
	if err != nil || len(sum.Findings) != 1 || sum.Findings[0].Kind != drift.FindingPackageNotFound {
		t.Errorf("unknown package: %+v, %v; want a package_not_found finding", sum.Findings, err)
	}
}

// The calls grow with packages, groups and pages, never with assignments × resources.
func TestScanCallsDoNotGrowWithAssignments(t *testing.T) {
	calls := func(assignments int) int64 {
		srv := graphtest.New(graphtest.Options{StrictStore: true, MaxRecordedCalls: 1, PageSize: 999})
		defer srv.Close()
		srv.Seed(graphtest.Shape{Packages: 10, Groups: 20, Apps: 2, Assignments: assignments, Drift: 0.1, Seed: 2})
		_, sum, err := drift.New(drift.Config{Reader: client(t, srv)}).Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, c := range sum.Calls {
			n += c
		}
		return n
	}
	small, large := calls(100), calls(2000)
	if small != large {
		t.Errorf("calls: %d for 100 assignments, %d for 2,000 (each list in one page of 999): want the same", small, large)
	}
}

// BenchmarkScan is the tenant: 500 packages, 1,000 groups, 100,000 assignments, 2%
// drifted, at zero latency. DRIFT_BENCH_ASSIGNMENTS makes it smaller.
func BenchmarkScan(b *testing.B) {
	n := 100_000
	if v := os.Getenv("DRIFT_BENCH_ASSIGNMENTS"); v != "" {
		n = atoi(v)
	}
	srv := graphtest.New(graphtest.Options{StrictStore: true, MaxRecordedCalls: 1, PageSize: 100})
	defer srv.Close()
	seeded := srv.Seed(graphtest.Shape{Packages: 500, Groups: 1000, Apps: 20, SharePoint: true, Assignments: n, Drift: 0.02, Seed: 3})
	c := client(b, srv)
	runtime.GC()
	b.ResetTimer()
	for b.Loop() {
		var peak uint64
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			var ms runtime.MemStats
			for {
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapInuse)
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		found, sum, err := drift.New(drift.Config{Reader: c}).Run(context.Background())
		close(stop)
		<-done
		if err != nil {
			b.Fatal(err)
		}
		if len(found) != len(seeded.Drifted) {
			b.Fatalf("found %d drifted, seeded %d", len(found), len(seeded.Drifted))
		}
		var total int64
		kinds := slices.Sorted(func(yield func(string) bool) {
			for k := range sum.Calls {
				if !yield(k) {
					return
				}
			}
		})
		for _, k := range kinds {
			total += sum.Calls[k]
			b.ReportMetric(float64(sum.Calls[k]), k+"_calls")
		}
		b.ReportMetric(float64(total), "calls")
		b.ReportMetric(sum.Elapsed.Seconds(), "scan_s")
		b.ReportMetric(float64(len(found)), "drifted")
		b.ReportMetric(float64(peak)/(1<<20), "heap_inuse_MiB(with_server)")
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// A hostile Graph: a next link to another host, and one that repeats for ever. Neither
// sends the token elsewhere nor holds the scan.
func TestScanHostilePaging(t *testing.T) {
	for name, link := range map[string]func(srv *graphtest.Server, r *http.Request) string{
		"elsewhere": func(*graphtest.Server, *http.Request) string { return "https://evil.example/v1.0/groups?$skiptoken=1" },
		"repeating": func(srv *graphtest.Server, r *http.Request) string { return srv.URL + r.URL.Path + "?$skiptoken=1" },
	} {
		t.Run(name, func(t *testing.T) {
			srv := tenant(t, graphtest.Options{StrictStore: true})
			srv.SetInterceptor(func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/members") {
					return false
				}
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(map[string]any{"value": []any{}, "@odata.nextLink": link(srv, r)})
				return true
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, _, err := drift.New(drift.Config{Reader: client(t, srv)}).Run(ctx)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("err %v (context %v): want the scan to stop with an error", err, ctx.Err())
			}
			for _, c := range srv.Calls() {
				if strings.Contains(c.Path, "evil") {
					t.Errorf("called %s", c.Path)
				}
			}
		})
	}
}

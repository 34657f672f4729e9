// Package drift finds the delivered access package assignments whose targets no longer
// hold what their package grants (DESIGN section 11): per package, the resource role
// scopes say what is expected; the groups' direct members and owners and the service
// principals' app role assignments say what is there. Memberships are read once per
// resource of a package and matched against that package's assignments, so the calls grow
// with packages, groups and pages, never with assignments × resources, and memory with one
// package at a time and the drifted set.
package drift

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/worker"
)

// Reader is what a scan reads: *graph.Client (v1.0).
type Reader interface {
	ListAccessPackages(ctx context.Context, catalogID, nextLink string) (graph.PackagePage, graph.Result, error)
	GetAccessPackage(ctx context.Context, id string) (graph.AccessPackage, graph.Result, error)
	ListAssignments(ctx context.Context, q graph.ListQuery) (graph.Page, graph.Result, error)
	ListGroupMembers(ctx context.Context, groupID string, owners bool, nextLink string) (graph.IDPage, graph.Result, error)
	ListAppRoleAssignedTo(ctx context.Context, spID, nextLink string) (graph.AppRolePage, graph.Result, error)
	GetAppRoles(ctx context.Context, spID string) ([]string, graph.Result, error)
}

// DefaultGrace is how recent an assignment's start may be for it to be skipped: Entra
// delivers over minutes.
const DefaultGrace = time.Hour

// DefaultConcurrency is how many packages are scanned at once.
const DefaultConcurrency = 16

// Config is one scan.
type Config struct {
	Reader      Reader
	Packages    []string // scan these access packages; none (and no Catalog): every package
	Catalog     string   // scan this catalog's packages
	Grace       time.Duration
	Now         func() time.Time
	Concurrency int // packages at once; default DefaultConcurrency
	// Entitlement and Directory are the two throttling budgets; nil: unpaced.
	Entitlement, Directory *Budget
	Backoff                worker.Backoff
	Attempts               int // calls per read before the scan fails; default 10
	// OnDrift, if set, receives each drifted assignment as it is found (from several
	// goroutines, one at a time).
	OnDrift func(Drifted)
}

// Kinds of resource role (Missing.Kind).
const (
	KindMember  = "member"
	KindOwner   = "owner"
	KindAppRole = "appRole"
)

// Missing is one resource role an assignment's target does not hold.
type Missing struct {
	Kind       string `json:"kind"`                // member, owner, appRole
	ResourceID string `json:"resourceId"`          // the group or service principal's object id
	AppRoleID  string `json:"appRoleId,omitempty"` // appRole: the role's id
	Name       string `json:"name,omitempty"`      // the scope's or role's display name
}

func (m Missing) String() string {
	switch m.Kind {
	case KindAppRole:
		return "appRole " + m.AppRoleID + " of " + m.ResourceID
	}
	return m.Kind + " of group " + m.ResourceID
}

// Drifted is an assignment whose target lacks some of its package's resource roles.
type Drifted struct {
	AssignmentID    string    `json:"assignmentId"`
	AccessPackageID string    `json:"accessPackageId"`
	AccessPackage   string    `json:"accessPackage,omitempty"`
	TargetObjectID  string    `json:"targetObjectId"`
	PrincipalName   string    `json:"principalName,omitempty"`
	Missing         []Missing `json:"missing"`
}

// Reason is the text sent as the request's reason when the assignment is enqueued.
func (d Drifted) Reason() string {
	parts := make([]string, len(d.Missing))
	for i, m := range d.Missing {
		parts[i] = m.String()
	}
	s := "drift: missing " + strings.Join(parts, ", ")
	if len(s) > 512 {
		s = s[:509] + "..."
	}
	return s
}

// Finding kinds: something unexpected, reported apart from drift.
const (
	FindingPackageNotFound  = "package_not_found"  // listed or named, then 404
	FindingResourceNotFound = "resource_not_found" // a group or service principal of the package no longer exists
	FindingAppRoleNotFound  = "app_role_not_found" // the app no longer defines the package's app role
	FindingUnsupportedRole  = "unsupported_role"   // a role whose originSystem or originId is not understood
)

// Finding is something unexpected about a package's resources. Its assignments are not
// counted as drifted for that resource.
type Finding struct {
	Kind            string `json:"kind"`
	AccessPackageID string `json:"accessPackageId"`
	ResourceID      string `json:"resourceId,omitempty"`
	Detail          string `json:"detail"`
}

// Summary is what a scan found.
type Summary struct {
	Packages       int              `json:"packages"`       // scanned
	Assignments    int64            `json:"assignments"`    // delivered assignments checked
	Drifted        int64            `json:"drifted"`        // of them, drifted
	Skipped        int64            `json:"skipped"`        // started within the grace period
	UncheckedRoles int64            `json:"uncheckedRoles"` // assignment × SharePoint role checks not made
	NoTarget       int64            `json:"noTarget"`       // assignments whose target has no object id
	Findings       []Finding        `json:"findings"`
	Calls          map[string]int64 `json:"calls"`
	Throttled      int64            `json:"throttled"` // 429 answers
	Elapsed        time.Duration    `json:"-"`
}

// Scan is one scan; its Progress may be read while Run works.
type Scan struct {
	cfg     Config
	call    *caller
	started time.Time

	packagesTotal, packagesDone atomic.Int64
	assignments, drifted        atomic.Int64
	skipped, unchecked, noTgt   atomic.Int64

	mu       sync.Mutex
	findings []Finding
	found    []Drifted
}

// New returns a scan that has not started.
func New(cfg Config) *Scan {
	cfg.Grace = cmp.Or(cfg.Grace, DefaultGrace)
	if cfg.Grace < 0 {
		cfg.Grace = 0
	}
	cfg.Concurrency = cmp.Or(max(cfg.Concurrency, 0), DefaultConcurrency)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Entitlement == nil {
		cfg.Entitlement = &Budget{}
	}
	if cfg.Directory == nil {
		cfg.Directory = &Budget{}
	}
	return &Scan{cfg: cfg, call: &caller{
		entitlement: cfg.Entitlement, directory: cfg.Directory,
		backoff: cfg.Backoff, attempts: cmp.Or(max(cfg.Attempts, 0), 10),
	}}
}

// Progress is a snapshot of a scan's counters.
type Progress struct {
	PackagesDone, PackagesTotal int64 // total is 0 until the packages are listed
	Assignments, Drifted        int64
	Calls                       int64
	Elapsed                     time.Duration
}

// Progress returns the counters now.
func (s *Scan) Progress() Progress {
	return Progress{
		PackagesDone: s.packagesDone.Load(), PackagesTotal: s.packagesTotal.Load(),
		Assignments: s.assignments.Load(), Drifted: s.drifted.Load(),
		Calls: s.call.total.Load(), Elapsed: time.Since(s.started),
	}
}

// Run scans, and returns the drifted assignments (ordered by package, then assignment) and
// the summary. An error means the scan could not finish: what it found so far is returned.
func (s *Scan) Run(ctx context.Context) ([]Drifted, Summary, error) {
	s.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ids := make(chan graph.AccessPackage)
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	for range s.cfg.Concurrency {
		wg.Go(func() {
			for p := range ids {
				if err := s.scanPackage(ctx, p.ID); err != nil {
					fail(fmt.Errorf("access package %s: %w", p.ID, err))
				}
				s.packagesDone.Add(1)
			}
		})
	}
	err := s.listPackages(ctx, func(p graph.AccessPackage) error {
		select {
		case ids <- p:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(ids)
	wg.Wait()
	if err != nil && firstErr == nil {
		firstErr = err
	}
	return s.results(), s.summary(), firstErr
}

func (s *Scan) results() []Drifted {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.found)
	slices.SortFunc(out, func(a, b Drifted) int {
		return cmp.Or(strings.Compare(a.AccessPackageID, b.AccessPackageID), strings.Compare(a.AssignmentID, b.AssignmentID))
	})
	return out
}

func (s *Scan) summary() Summary {
	s.mu.Lock()
	findings := slices.Clone(s.findings)
	s.mu.Unlock()
	return Summary{
		Packages: int(s.packagesDone.Load()), Assignments: s.assignments.Load(), Drifted: s.drifted.Load(),
		Skipped: s.skipped.Load(), UncheckedRoles: s.unchecked.Load(), NoTarget: s.noTgt.Load(),
		Findings: findings, Calls: s.call.Calls(), Throttled: s.call.throttled.Load(), Elapsed: time.Since(s.started),
	}
}

// listPackages hands each package in scope to fn: the named ones, a catalog's, or all.
func (s *Scan) listPackages(ctx context.Context, fn func(graph.AccessPackage) error) error {
	if len(s.cfg.Packages) > 0 {
		seen := map[string]bool{}
		var uniq []string
		for _, id := range s.cfg.Packages {
			if id = strings.ToLower(id); !seen[id] {
				seen[id] = true
				uniq = append(uniq, id)
			}
		}
		s.packagesTotal.Store(int64(len(uniq)))
		for _, id := range uniq {
			if err := fn(graph.AccessPackage{ID: id}); err != nil {
				return err
			}
		}
		return nil
	}
	// The packages are listed before they are scanned so that progress has a total; a
	// tenant has thousands of packages at most, and only their ids are kept.
	var all []graph.AccessPackage
	next := ""
	var pages pager
	for {
		var page graph.PackagePage
		err := s.call.do(ctx, graph.OpListAccessPackages, func() (graph.Result, error) {
			var res graph.Result
			var err error
			page, res, err = s.cfg.Reader.ListAccessPackages(ctx, s.cfg.Catalog, next)
			return res, err
		})
		if errors.Is(err, errNotFound) {
			return fmt.Errorf("catalog %s was not found", s.cfg.Catalog)
		}
		if err != nil {
			return fmt.Errorf("list access packages: %w", err)
		}
		for _, p := range page.Packages {
			all = append(all, graph.AccessPackage{ID: p.ID})
		}
		s.packagesTotal.Store(int64(len(all)))
		if page.NextLink == "" {
			break
		}
		if err := pages.next(page.NextLink, "access packages"); err != nil {
			return err
		}
		next = page.NextLink
	}
	for _, p := range all {
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

func (s *Scan) finding(f Finding) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.findings) < 10_000 {
		s.findings = append(s.findings, f)
	}
}

// expected is one resource role of a package that can be checked.
type expected struct {
	Missing
	held []bool // by assignment index
}

// holder is one of the package's delivered assignments being checked.
type holder struct {
	id, target, principal string
}

// scanPackage checks one package's delivered assignments against its resources.
func (s *Scan) scanPackage(ctx context.Context, id string) error {
	var pkg graph.AccessPackage
	err := s.call.do(ctx, graph.OpGetAccessPackage, func() (graph.Result, error) {
		var res graph.Result
		var err error
		pkg, res, err = s.cfg.Reader.GetAccessPackage(ctx, id)
		return res, err
	})
	if errors.Is(err, errNotFound) {
		s.finding(Finding{Kind: FindingPackageNotFound, AccessPackageID: id, Detail: "the access package does not exist"})
		return nil
	}
	if err != nil {
		return err
	}
	roles, sharePoint := s.expectedRoles(pkg)

	// The package's delivered assignments, with their targets.
	var holders []holder
	byTarget := map[string][]int{}
	now := s.cfg.Now()
	q := graph.ListQuery{AccessPackageID: id, State: worker.StateDelivered, ExpandTarget: true, Top: 999}
	var pages pager
	for {
		var page graph.Page
		err := s.call.do(ctx, graph.OpListAssignments, func() (graph.Result, error) {
			var res graph.Result
			var err error
			page, res, err = s.cfg.Reader.ListAssignments(ctx, q)
			return res, err
		})
		if errors.Is(err, errNotFound) {
			break // the package went away while being read
		}
		if err != nil {
			return err
		}
		for _, a := range page.Assignments {
			switch {
			case !graph.ValidID(a.ID) || a.State != worker.StateDelivered:
				continue
			case !a.StartDateTime.IsZero() && now.Sub(a.StartDateTime) < s.cfg.Grace:
				s.skipped.Add(1)
				continue
			case !graph.ValidID(a.Target.ObjectID):
				s.noTgt.Add(1)
				continue
			}
			byTarget[a.Target.ObjectID] = append(byTarget[a.Target.ObjectID], len(holders))
			holders = append(holders, holder{id: strings.ToLower(a.ID), target: a.Target.ObjectID, principal: truncate(a.Target.PrincipalName, 256)})
		}
		if page.NextLink == "" {
			break
		}
		if err := pages.next(page.NextLink, "assignments"); err != nil {
			return err
		}
		q = graph.ListQuery{NextLink: page.NextLink}
	}
	s.assignments.Add(int64(len(holders)))
	s.unchecked.Add(int64(len(holders) * sharePoint))
	if len(holders) == 0 || len(roles) == 0 {
		return nil
	}
	for i := range roles {
		roles[i].held = make([]bool, len(holders))
	}
	if err := s.readHolders(ctx, id, roles, byTarget); err != nil {
		return err
	}

	// Compare.
	for i, h := range holders {
		var missing []Missing
		for _, r := range roles {
			if r.held != nil && !r.held[i] {
				missing = append(missing, r.Missing)
			}
		}
		if len(missing) == 0 {
			continue
		}
		d := Drifted{AssignmentID: h.id, AccessPackageID: id, AccessPackage: truncate(pkg.DisplayName, 256),
			TargetObjectID: h.target, PrincipalName: h.principal, Missing: missing}
		s.drifted.Add(1)
		s.mu.Lock()
		s.found = append(s.found, d)
		if s.cfg.OnDrift != nil {
			s.cfg.OnDrift(d)
		}
		s.mu.Unlock()
	}
	return nil
}

// expectedRoles reads a package's resource role scopes into the roles that can be
// checked, reporting those that cannot be understood; it also returns how many SharePoint
// roles the package has (unchecked).
func (s *Scan) expectedRoles(pkg graph.AccessPackage) ([]expected, int) {
	var out []expected
	sharePoint := 0
	seen := map[Missing]bool{}
	for _, r := range pkg.Roles {
		var m Missing
		switch r.OriginSystem {
		case graph.OriginSharePoint:
			sharePoint++
			continue
		case graph.OriginGroup:
			kind, gid, ok := strings.Cut(r.OriginID, "_")
			switch {
			case !ok || !graph.ValidID(gid) || (kind != "Member" && kind != "Owner"):
				s.finding(Finding{Kind: FindingUnsupportedRole, AccessPackageID: pkg.ID, ResourceID: r.ScopeOriginID,
					Detail: fmt.Sprintf("group role originId %q is not Member_<group id> or Owner_<group id>", truncate(r.OriginID, 80))})
				continue
			case graph.ValidID(r.ScopeOriginID) && !strings.EqualFold(r.ScopeOriginID, gid):
				s.finding(Finding{Kind: FindingUnsupportedRole, AccessPackageID: pkg.ID, ResourceID: r.ScopeOriginID,
					Detail: fmt.Sprintf("group role %q is scoped to another group", truncate(r.OriginID, 80))})
				continue
			}
			m = Missing{Kind: KindMember, ResourceID: strings.ToLower(gid), Name: truncate(r.ScopeName, 256)}
			if kind == "Owner" {
				m.Kind = KindOwner
			}
		case graph.OriginApp:
			if !graph.ValidID(r.OriginID) || !graph.ValidID(r.ScopeOriginID) {
				s.finding(Finding{Kind: FindingUnsupportedRole, AccessPackageID: pkg.ID, ResourceID: r.ScopeOriginID,
					Detail: fmt.Sprintf("app role %q of %q: not an app role id and a service principal id", truncate(r.OriginID, 80), truncate(r.ScopeOriginID, 80))})
				continue
			}
			m = Missing{Kind: KindAppRole, ResourceID: strings.ToLower(r.ScopeOriginID), AppRoleID: strings.ToLower(r.OriginID), Name: truncate(r.DisplayName, 256)}
		default:
			s.finding(Finding{Kind: FindingUnsupportedRole, AccessPackageID: pkg.ID, ResourceID: r.ScopeOriginID,
				Detail: fmt.Sprintf("originSystem %q is not checked", truncate(r.OriginSystem, 80))})
			continue
		}
		key := Missing{Kind: m.Kind, ResourceID: m.ResourceID, AppRoleID: m.AppRoleID}
		if !seen[key] {
			seen[key] = true
			out = append(out, expected{Missing: m})
		}
	}
	return out, sharePoint
}

// readHolders reads each resource's holders once (a group's members, its owners, an
// application's app role assignments) and marks the package's targets that hold it.
func (s *Scan) readHolders(ctx context.Context, pkg string, roles []expected, byTarget map[string][]int) error {
	type listKey struct{ kind, id string }
	byList := map[listKey][]int{}
	var order []listKey
	for i, r := range roles {
		k := listKey{r.Kind, r.ResourceID}
		if r.Kind == KindAppRole {
			k.kind = "sp"
		}
		if _, ok := byList[k]; !ok {
			order = append(order, k)
		}
		byList[k] = append(byList[k], i)
	}
	mark := func(principal, appRole string, idx []int) {
		who, ok := byTarget[principal]
		if !ok {
			return
		}
		for _, ri := range idx {
			if roles[ri].held == nil || appRole != "" && roles[ri].AppRoleID != appRole {
				continue
			}
			for _, h := range who {
				roles[ri].held[h] = true
			}
		}
	}
	unavailable := func(idx []int, kind, id, detail string) {
		for _, ri := range idx {
			if kind == FindingAppRoleNotFound && roles[ri].AppRoleID != detail {
				continue
			}
			roles[ri].held = nil // not counted as drift
		}
		if kind == FindingAppRoleNotFound {
			detail = "the application no longer defines app role " + detail
		}
		s.finding(Finding{Kind: kind, AccessPackageID: pkg, ResourceID: id, Detail: detail})
	}
	for _, k := range order {
		idx := byList[k]
		next := ""
		var pages pager
		if k.kind == "sp" {
			var defined []string
			err := s.call.do(ctx, graph.OpGetServicePrincipal, func() (graph.Result, error) {
				var res graph.Result
				var err error
				defined, res, err = s.cfg.Reader.GetAppRoles(ctx, k.id)
				return res, err
			})
			if errors.Is(err, errNotFound) {
				unavailable(idx, FindingResourceNotFound, k.id, "the service principal does not exist")
				continue
			}
			if err != nil {
				return err
			}
			for _, ri := range idx {
				if r := roles[ri].AppRoleID; r != defaultAppRole && !slices.Contains(defined, r) {
					unavailable(idx, FindingAppRoleNotFound, k.id, r)
				}
			}
			for {
				var page graph.AppRolePage
				err := s.call.do(ctx, graph.OpListAppRoleAssignedTo, func() (graph.Result, error) {
					var res graph.Result
					var err error
					page, res, err = s.cfg.Reader.ListAppRoleAssignedTo(ctx, k.id, next)
					return res, err
				})
				if errors.Is(err, errNotFound) {
					unavailable(idx, FindingResourceNotFound, k.id, "the service principal does not exist")
					break
				}
				if err != nil {
					return err
				}
				for _, a := range page.Assignments {
					mark(a.PrincipalID, a.AppRoleID, idx)
				}
				if next = page.NextLink; next == "" {
					break
				}
				if err := pages.next(next, "app role assignments of "+k.id); err != nil {
					return err
				}
			}
			continue
		}
		owners := k.kind == KindOwner
		op := graph.OpListGroupMembers
		if owners {
			op = graph.OpListGroupOwners
		}
		for {
			var page graph.IDPage
			err := s.call.do(ctx, op, func() (graph.Result, error) {
				var res graph.Result
				var err error
				page, res, err = s.cfg.Reader.ListGroupMembers(ctx, k.id, owners, next)
				return res, err
			})
			if errors.Is(err, errNotFound) {
				unavailable(idx, FindingResourceNotFound, k.id, "the group does not exist")
				break
			}
			if err != nil {
				return err
			}
			for _, p := range page.IDs {
				mark(p, "", idx)
			}
			if next = page.NextLink; next == "" {
				break
			}
			if err := pages.next(next, op+" of "+k.id); err != nil {
				return err
			}
		}
	}
	return nil
}

// maxPages bounds the pages of one list: a group of ten million members is 10,010 pages
// of 999. A Graph that pages for ever, or answers the same next link again, ends the scan
// with an error instead of holding it.
const maxPages = 100_000

// pager follows the pages of one list.
type pager struct {
	n    int
	last string
}

func (p *pager) next(link, what string) error {
	p.n++
	switch {
	case link == p.last:
		return fmt.Errorf("list of %s: Graph answered the same @odata.nextLink twice", what)
	case p.n >= maxPages:
		return fmt.Errorf("list of %s: more than %d pages", what, maxPages)
	}
	p.last = link
	return nil
}

// defaultAppRole is the id of an application's default access, which it never lists among
// its appRoles.
const defaultAppRole = "00000000-0000-0000-0000-000000000000"

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

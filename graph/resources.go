package graph

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/reprocessor/reprocessor/worker"
)

// ResourceVerifier is the worker's ResourceChecker (DESIGN section 5): for a delivered
// assignment it reads the assignment's target and package, the package's resource role
// scopes (cached), and the target's direct group memberships, ownerships and app role
// assignments, and names the group and app role resource roles the target lacks.
// SharePoint roles cannot be read this way and are not checked. It calls v1.0.
type ResourceVerifier struct {
	c   *Client
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	roles map[string]cachedRoles // access package id -> its resource roles
}

type cachedRoles struct {
	roles []ResourceRole
	at    time.Time
}

// maxPrincipalHoldings bounds what is read of one principal's memberships or app roles.
const maxPrincipalHoldings = 1_000_000

// adaptOK is res as a 200 for the worker.
func adaptOK(res Result) worker.Response {
	resp, _ := adaptResult(res, nil)
	resp.Status = http.StatusOK
	return resp
}

// maxCachedPackages bounds the package cache; a tenant has thousands of packages at most.
const maxCachedPackages = 4096

// NewResourceVerifier returns a verifier calling c (a v1.0 client: Session.V1), keeping
// each package's roles for ttl (default 10 minutes).
func NewResourceVerifier(c *Client, ttl time.Duration) *ResourceVerifier {
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	return &ResourceVerifier{c: c, ttl: ttl, now: time.Now, roles: map[string]cachedRoles{}}
}

var _ worker.ResourceChecker = (*ResourceVerifier)(nil)

// CheckResources checks assignment id's target against its package's resource roles.
func (v *ResourceVerifier) CheckResources(ctx context.Context, id string, seen worker.Assignment) (worker.ResourceCheck, worker.Response, error) {
	a := Assignment{AccessPackageID: seen.AccessPackageID, Target: Target{ObjectID: seen.TargetID}}
	if seen.TargetIsSPN {
		a.Target.SubjectType = "servicePrincipal"
	}
	res := Result{Status: http.StatusOK}
	if !seen.Detailed {
		var err error
		if a, res, err = v.c.GetAssignmentDetail(ctx, id); err != nil || res.Status != http.StatusOK {
			resp, err := adaptResult(res, err)
			return worker.ResourceCheck{}, resp, err
		}
	}
	if !ValidID(a.AccessPackageID) || !ValidID(a.Target.ObjectID) {
		resp, _ := adaptResult(res, nil)
		return worker.ResourceCheck{Unchecked: true}, resp, nil
	}
	roles, res, err := v.packageRoles(ctx, a.AccessPackageID)
	if err != nil || res.Status != http.StatusOK {
		resp, err := adaptResult(res, err)
		return worker.ResourceCheck{}, resp, err
	}
	var wantMember, wantOwner, wantApp bool
	for _, r := range roles {
		switch {
		case r.OriginSystem == OriginGroup && strings.HasPrefix(r.OriginID, "Owner_"):
			wantOwner = true
		case r.OriginSystem == OriginGroup:
			wantMember = true
		case r.OriginSystem == OriginApp:
			wantApp = true
		}
	}
	sp := strings.EqualFold(a.Target.SubjectType, "servicePrincipal")
	var memberOf, owned map[string]bool
	var apps map[[2]string]bool
	if wantMember {
		if memberOf, res, err = v.ids(ctx, a.Target.ObjectID, sp, false); err != nil || res.Status != http.StatusOK {
			resp, err := adaptResult(res, err)
			return worker.ResourceCheck{}, resp, err
		}
	}
	if wantOwner {
		if owned, res, err = v.ids(ctx, a.Target.ObjectID, sp, true); err != nil || res.Status != http.StatusOK {
			resp, err := adaptResult(res, err)
			return worker.ResourceCheck{}, resp, err
		}
	}
	if wantApp {
		apps = map[[2]string]bool{}
		next := ""
		for {
			page, r, err := v.c.ListAppRoleAssignments(ctx, a.Target.ObjectID, sp, next)
			res = r
			if err != nil || res.Status != http.StatusOK {
				resp, err := adaptResult(res, err)
				return worker.ResourceCheck{}, resp, err
			}
			for _, x := range page.Assignments {
				apps[[2]string{x.ResourceID, x.AppRoleID}] = true
			}
			if page.NextLink != "" && page.NextLink == next || len(apps) > maxPrincipalHoldings {
				return worker.ResourceCheck{Unchecked: true}, adaptOK(res), nil // a Graph that pages for ever
			}
			if next = page.NextLink; next == "" {
				break
			}
		}
	}
	var missing []string
	for _, r := range roles {
		switch r.OriginSystem {
		case OriginGroup:
			kind, gid, _ := strings.Cut(r.OriginID, "_")
			gid = strings.ToLower(gid)
			switch {
			case kind == "Member" && !memberOf[gid]:
				missing = append(missing, "member of group "+gid)
			case kind == "Owner" && !owned[gid]:
				missing = append(missing, "owner of group "+gid)
			}
		case OriginApp:
			spID, role := strings.ToLower(r.ScopeOriginID), strings.ToLower(r.OriginID)
			if !apps[[2]string{spID, role}] {
				missing = append(missing, "appRole "+role+" of "+spID)
			}
		}
	}
	slices.Sort(missing)
	resp, _ := adaptResult(res, nil)
	resp.Status = http.StatusOK
	return worker.ResourceCheck{Restored: len(missing) == 0, Missing: slices.Compact(missing)}, resp, nil
}

// ids reads every page of the groups principal is a direct member (or owner) of.
func (v *ResourceVerifier) ids(ctx context.Context, principal string, sp, owned bool) (map[string]bool, Result, error) {
	out := map[string]bool{}
	next := ""
	for {
		page, res, err := v.c.ListMemberOf(ctx, principal, sp, owned, next)
		if err != nil || res.Status != http.StatusOK {
			return nil, res, err
		}
		for _, id := range page.IDs {
			out[id] = true
		}
		if page.NextLink != "" && page.NextLink == next || len(out) > maxPrincipalHoldings {
			return nil, res, fmt.Errorf("%w: %s of %s: the pages do not end", ErrDecode, "memberships", principal)
		}
		if next = page.NextLink; next == "" {
			return out, res, nil
		}
	}
}

// packageRoles returns a package's resource roles, from the cache while fresh.
func (v *ResourceVerifier) packageRoles(ctx context.Context, id string) ([]ResourceRole, Result, error) {
	v.mu.Lock()
	c, ok := v.roles[id]
	v.mu.Unlock()
	if ok && v.now().Sub(c.at) < v.ttl {
		return c.roles, Result{Status: http.StatusOK}, nil
	}
	p, res, err := v.c.GetAccessPackage(ctx, id)
	if err != nil || res.Status != http.StatusOK {
		return nil, res, err
	}
	v.mu.Lock()
	if len(v.roles) >= maxCachedPackages {
		clear(v.roles)
	}
	v.roles[id] = cachedRoles{roles: p.Roles, at: v.now()}
	v.mu.Unlock()
	return p.Roles, res, nil
}

package graphtest

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/reprocessor/reprocessor/graph"
)

// The simulated tenant: access packages with their resource role scopes, users, groups with
// members and owners, service principals with app roles and app role assignments, and the
// assignments' targets. Shapes follow Microsoft Graph v1.0's CSDL
// (microsoftgraph/msgraph-metadata, schemas/v1.0-Prod.csdl at f54f11b6, 2026-08-20) and
// the API reference: a group resource role's originSystem is "AadGroup" and its originId
// "Member_<group id>" or "Owner_<group id>", its scope's originId the group id; an
// application's is "AadApplication" with the app role id as the role's originId and the
// service principal's object id as the scope's; a SharePoint site's is "SharePointOnline".

// Operations of the tenant's directory and catalog reads, recorded in Call.Operation: the
// names the client gives them (graph.Op*).
const (
	OpListAccessPackages    = graph.OpListAccessPackages
	OpGetAccessPackage      = graph.OpGetAccessPackage
	OpListGroupMembers      = graph.OpListGroupMembers
	OpListGroupOwners       = graph.OpListGroupOwners
	OpListAppRoleAssignedTo = graph.OpListAppRoleAssignedTo
	OpGetServicePrincipal   = graph.OpGetServicePrincipal
	OpListMemberOf          = graph.OpListMemberOf
	OpListOwnedObjects      = graph.OpListOwnedObjects
	OpListAppRoleAssignment = graph.OpListAppRoleAssignments
)

// Resource role kinds (originSystem values, and the group role's two prefixes).
const (
	RoleMember     = "Member" // AadGroup, originId Member_<group id>
	RoleOwner      = "Owner"  // AadGroup, originId Owner_<group id>
	RoleApp        = "AadApplication"
	RoleSharePoint = "SharePointOnline"
)

// ResourceRole is one resource role scope of an access package.
type ResourceRole struct {
	Kind       string // RoleMember, RoleOwner, RoleApp or RoleSharePoint
	ResourceID string // the group id, the service principal's object id, or the site URL
	AppRoleID  string // RoleApp: the app role id (00000000-0000-0000-0000-000000000000: default access)
}

// AccessPackage is an access package and what it grants.
type AccessPackage struct {
	ID          string
	DisplayName string
	CatalogID   string
	Roles       []ResourceRole
}

type dirObject struct {
	id   string
	list []string        // in insertion order, for stable paging
	set  map[string]bool // membership
}

func newDirObject(id string) *dirObject { return &dirObject{id: id, set: map[string]bool{}} }

func (d *dirObject) add(p string) {
	if !d.set[p] {
		d.set[p] = true
		d.list = append(d.list, p)
	}
}

func (d *dirObject) remove(p string) bool {
	if !d.set[p] {
		return false
	}
	delete(d.set, p)
	d.list = slices.DeleteFunc(d.list, func(x string) bool { return x == p })
	return true
}

type servicePrincipal struct {
	id       string
	name     string
	appRoles []string // app role ids defined
	assigned []appRoleAssignment
}

type appRoleAssignment struct {
	id, principalID, appRoleID string
}

type group struct {
	name            string
	members, owners *dirObject
}

type tenant struct {
	mu         sync.Mutex
	packages   map[string]*AccessPackage
	pkgOrder   []string
	groups     map[string]*group
	sps        map[string]*servicePrincipal
	users      map[string]string // id -> userPrincipalName
	noRestore  map[string]bool   // resource ids reprocess cannot restore
	restores   []pendingRestore
	dirLimiter *rate.Limiter
}

type pendingRestore struct {
	due        time.Time
	assignment string
}

func (t *tenant) init() {
	if t.packages == nil {
		t.packages, t.groups, t.sps, t.users = map[string]*AccessPackage{}, map[string]*group{}, map[string]*servicePrincipal{}, map[string]string{}
		t.noRestore = map[string]bool{}
	}
}

// AddGroup adds an empty group (or keeps an existing one).
func (s *Server) AddGroup(id, displayName string) {
	id = strings.ToLower(id)
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	if _, ok := s.tenant.groups[id]; !ok {
		s.tenant.groups[id] = &group{name: displayName, members: newDirObject(id), owners: newDirObject(id)}
	}
}

// DeleteGroup removes a group: its reads answer 404 from now on.
func (s *Server) DeleteGroup(id string) {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	delete(s.tenant.groups, strings.ToLower(id))
}

// AddServicePrincipal adds an application's service principal defining appRoleIDs.
func (s *Server) AddServicePrincipal(id, displayName string, appRoleIDs ...string) {
	id = strings.ToLower(id)
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	roles := make([]string, len(appRoleIDs))
	for i, r := range appRoleIDs {
		roles[i] = strings.ToLower(r)
	}
	if sp, ok := s.tenant.sps[id]; ok {
		sp.appRoles = roles
		return
	}
	s.tenant.sps[id] = &servicePrincipal{id: id, name: displayName, appRoles: roles}
}

// RemoveAppRole deletes an app role from a service principal's definition (its assignments stay).
func (s *Server) RemoveAppRole(spID, appRoleID string) {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	if sp, ok := s.tenant.sps[strings.ToLower(spID)]; ok {
		sp.appRoles = slices.DeleteFunc(sp.appRoles, func(r string) bool { return r == strings.ToLower(appRoleID) })
	}
}

// AddUser adds a user.
func (s *Server) AddUser(id, userPrincipalName string) {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	s.tenant.users[strings.ToLower(id)] = userPrincipalName
}

// AddAccessPackage adds (or replaces) an access package; its groups and service principals
// must be added too for its grants to land.
func (s *Server) AddAccessPackage(p AccessPackage) {
	p.ID, p.CatalogID = strings.ToLower(p.ID), strings.ToLower(p.CatalogID)
	for i := range p.Roles {
		if p.Roles[i].Kind != RoleSharePoint {
			p.Roles[i].ResourceID = strings.ToLower(p.Roles[i].ResourceID)
		}
		p.Roles[i].AppRoleID = strings.ToLower(p.Roles[i].AppRoleID)
	}
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	if _, ok := s.tenant.packages[p.ID]; !ok {
		s.tenant.pkgOrder = append(s.tenant.pkgOrder, p.ID)
	}
	s.tenant.packages[p.ID] = &p
}

// Assign stores a delivered assignment of a package to a target and grants the target
// what the package holds (as Entra does on delivery). a.AccessPackageID and a.TargetID are
// required; StartDateTime defaults to a day ago.
func (s *Server) Assign(a Assignment) {
	if a.StartDateTime.IsZero() {
		a.StartDateTime = s.now().Add(-24 * time.Hour)
	}
	s.AddAssignments(a)
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	s.grant(strings.ToLower(a.AccessPackageID), strings.ToLower(a.TargetID), false)
}

// grant gives principal every role of package pkg; with restoring, not the resources
// marked unrestorable. The caller holds tenant.mu.
func (s *Server) grant(pkg, principal string, restoring bool) {
	p, ok := s.tenant.packages[pkg]
	if !ok || principal == "" {
		return
	}
	for _, r := range p.Roles {
		if restoring && s.tenant.noRestore[r.ResourceID] {
			continue
		}
		switch r.Kind {
		case RoleMember, RoleOwner:
			g, ok := s.tenant.groups[r.ResourceID]
			if !ok {
				continue
			}
			if r.Kind == RoleMember {
				g.members.add(principal)
			} else {
				g.owners.add(principal)
			}
		case RoleApp:
			sp, ok := s.tenant.sps[r.ResourceID]
			if !ok {
				continue
			}
			if !slices.ContainsFunc(sp.assigned, func(x appRoleAssignment) bool {
				return x.principalID == principal && x.appRoleID == r.AppRoleID
			}) {
				sp.assigned = append(sp.assigned, appRoleAssignment{id: newUUID(), principalID: principal, appRoleID: r.AppRoleID})
			}
		}
	}
}

// AddMember and AddOwner add a principal to a group directly.
func (s *Server) AddMember(groupID, principalID string) {
	s.editGroup(groupID, principalID, RoleMember, true)
}

// AddOwner adds an owner to a group.
func (s *Server) AddOwner(groupID, principalID string) {
	s.editGroup(groupID, principalID, RoleOwner, true)
}

// RemoveMember removes a member out of band (what reprocess exists to repair).
func (s *Server) RemoveMember(groupID, principalID string) bool {
	return s.editGroup(groupID, principalID, RoleMember, false)
}

// RemoveOwner removes an owner out of band.
func (s *Server) RemoveOwner(groupID, principalID string) bool {
	return s.editGroup(groupID, principalID, RoleOwner, false)
}

func (s *Server) editGroup(groupID, principalID, kind string, add bool) bool {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	g, ok := s.tenant.groups[strings.ToLower(groupID)]
	if !ok {
		return false
	}
	d := g.members
	if kind == RoleOwner {
		d = g.owners
	}
	if add {
		d.add(strings.ToLower(principalID))
		return true
	}
	return d.remove(strings.ToLower(principalID))
}

// RemoveAppRoleAssignment deletes a principal's assignment of an app role out of band.
func (s *Server) RemoveAppRoleAssignment(spID, principalID, appRoleID string) bool {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	sp, ok := s.tenant.sps[strings.ToLower(spID)]
	if !ok {
		return false
	}
	n := len(sp.assigned)
	sp.assigned = slices.DeleteFunc(sp.assigned, func(x appRoleAssignment) bool {
		return x.principalID == strings.ToLower(principalID) && x.appRoleID == strings.ToLower(appRoleID)
	})
	return len(sp.assigned) < n
}

// HasMember reports whether a principal is a direct member (or, with owner, an owner) of a group.
func (s *Server) HasMember(groupID, principalID string, owner bool) bool {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.applyRestores(s.now())
	g, ok := s.tenant.groups[strings.ToLower(groupID)]
	if !ok {
		return false
	}
	if owner {
		return g.owners.set[strings.ToLower(principalID)]
	}
	return g.members.set[strings.ToLower(principalID)]
}

// SetRestorable says whether reprocess re-adds what an assignment lost on that resource
// (a group or a service principal id); by default it does.
func (s *Server) SetRestorable(resourceID string, ok bool) {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	s.tenant.noRestore[strings.ToLower(resourceID)] = !ok
}

// SetDirectoryRateLimit admits r directory and catalog reads per second (bursts of burst),
// apart from the entitlement management calls' limit; r <= 0 removes it.
func (s *Server) SetDirectoryRateLimit(r float64, burst int) {
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.dirLimiter = nil
	if r > 0 {
		s.tenant.dirLimiter = rate.NewLimiter(rate.Limit(r), max(burst, 1))
	}
}

// restoreAfterReprocess schedules the re-grant of assignment id's package to its target,
// when its lifecycle delivers (at once without a lifecycle).
func (s *Server) restoreAfterReprocess(id string, at time.Time) {
	a, ok := s.Assignment(id)
	if !ok || a.TargetID == "" {
		return
	}
	due := at
	s.life.mu.RLock()
	if l, ok := s.lifecycleFor(id); ok {
		if l.Stuck || l.Deleted || (l.Final != "" && l.Final != "delivered") {
			s.life.mu.RUnlock()
			return
		}
		due = at.Add(l.Delivering)
	}
	s.life.mu.RUnlock()
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	s.tenant.restores = append(s.tenant.restores, pendingRestore{due: due, assignment: id})
}

// applyRestores grants what is due. The caller holds tenant.mu.
func (s *Server) applyRestores(now time.Time) {
	if len(s.tenant.restores) == 0 {
		return
	}
	keep := s.tenant.restores[:0]
	for _, r := range s.tenant.restores {
		if now.Before(r.due) {
			keep = append(keep, r)
			continue
		}
		if a, ok := s.Assignment(r.assignment); ok {
			s.grant(a.AccessPackageID, a.TargetID, true)
		}
	}
	s.tenant.restores = keep
}

// tenantRoute names the operation of a path under /v1.0/ the tenant serves, with the
// object id it is about.
func tenantRoute(method, p string) (op, id, sub string) {
	if method != http.MethodGet {
		return "", "", ""
	}
	const em = "/v1.0/identityGovernance/entitlementManagement/"
	if rest, ok := strings.CutPrefix(p, em); ok {
		parts := strings.Split(rest, "/")
		switch {
		case len(parts) == 1 && parts[0] == "accessPackages":
			return OpListAccessPackages, "", ""
		case len(parts) == 2 && parts[0] == "accessPackages":
			return OpGetAccessPackage, parts[1], ""
		case len(parts) == 3 && parts[0] == "catalogs" && parts[2] == "accessPackages":
			return OpListAccessPackages, parts[1], "catalog"
		}
		return "", "", ""
	}
	rest, ok := strings.CutPrefix(p, "/v1.0/")
	if !ok {
		return "", "", ""
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 3 && parts[0] == "groups" && parts[2] == "members":
		return OpListGroupMembers, parts[1], ""
	case len(parts) == 3 && parts[0] == "groups" && parts[2] == "owners":
		return OpListGroupOwners, parts[1], ""
	case len(parts) == 3 && parts[0] == "servicePrincipals" && parts[2] == "appRoleAssignedTo":
		return OpListAppRoleAssignedTo, parts[1], ""
	case len(parts) == 2 && parts[0] == "servicePrincipals":
		return OpGetServicePrincipal, parts[1], ""
	case len(parts) == 3 && (parts[0] == "users" || parts[0] == "servicePrincipals"):
		switch parts[2] {
		case "memberOf":
			return OpListMemberOf, parts[1], parts[0]
		case "ownedObjects":
			return OpListOwnedObjects, parts[1], parts[0]
		case "appRoleAssignments":
			return OpListAppRoleAssignment, parts[1], parts[0]
		}
	}
	return "", "", ""
}

// serveTenant answers a catalog or directory read.
func (s *Server) serveTenant(w http.ResponseWriter, r *http.Request, op, id, sub string) {
	call := Call{Time: time.Now(), Method: r.Method, Path: r.URL.Path, APIVersion: "v1.0", Operation: op,
		ClientRequestID: r.Header.Get("client-request-id"), RequestID: newUUID()}
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for was := s.peakInFlight.Load(); n > was && !s.peakInFlight.CompareAndSwap(was, n); was = s.peakInFlight.Load() {
	}
	s.delay(r)
	call.TokenValid = s.tokenValid(r)
	call.Status = s.answerTenant(w, r, &call, id, sub)
	s.record(call)
}

func (s *Server) answerTenant(w http.ResponseWriter, r *http.Request, c *Call, id, sub string) int {
	if status, done := s.commonFaults(w, r, c); done {
		return status
	}
	s.tenant.mu.Lock()
	lim := s.tenant.dirLimiter
	s.tenant.mu.Unlock()
	if lim != nil {
		now := time.Now()
		res := lim.ReserveN(now, 1)
		if d := res.DelayFrom(now); !res.OK() || d > 0 {
			res.CancelAt(now)
			w.Header().Set("Retry-After", strconv.FormatFloat(max(d.Seconds(), 0.001), 'f', 3, 64))
			return s.graphError(w, r, http.StatusTooManyRequests, "TooManyRequests", "Too many requests.", c.RequestID)
		}
	}
	if id != "" && !validID(id) {
		return s.graphError(w, r, http.StatusBadRequest, "Request_BadRequest", "Invalid object identifier '"+id+"'.", c.RequestID)
	}
	id = strings.ToLower(id)
	q := r.URL.Query()
	size, skip, ok := pageArgs(q, s.pageSize)
	if !ok {
		return s.graphError(w, r, http.StatusBadRequest, "BadRequest", "Invalid $top or $skiptoken.", c.RequestID)
	}
	s.tenant.mu.Lock()
	defer s.tenant.mu.Unlock()
	s.tenant.init()
	s.applyRestores(s.now())
	var items []map[string]any
	switch c.Operation {
	case OpListAccessPackages:
		if sub == "catalog" && !s.catalogExists(id) {
			return s.graphError(w, r, http.StatusNotFound, "ResourceNotFound", "The catalog was not found.", c.RequestID)
		}
		for _, pid := range s.tenant.pkgOrder {
			p := s.tenant.packages[pid]
			if sub == "catalog" && p.CatalogID != id {
				continue
			}
			items = append(items, map[string]any{"id": p.ID, "displayName": p.DisplayName, "isHidden": false})
		}
	case OpGetAccessPackage:
		p, ok := s.tenant.packages[id]
		if !ok {
			return s.graphError(w, r, http.StatusNotFound, "ResourceNotFound", "The access package was not found.", c.RequestID)
		}
		body := map[string]any{
			"@odata.context": s.URL + "/v1.0/$metadata#identityGovernance/entitlementManagement/accessPackages/$entity",
			"id":             p.ID, "displayName": p.DisplayName, "isHidden": false,
		}
		if strings.Contains(q.Get("$expand"), "resourceRoleScopes") {
			body["resourceRoleScopes"] = s.roleScopesJSON(p, strings.Contains(q.Get("$expand"), "role"))
		}
		writeJSON(w, http.StatusOK, body)
		return http.StatusOK
	case OpListGroupMembers, OpListGroupOwners:
		g, ok := s.tenant.groups[id]
		if !ok {
			return s.graphError(w, r, http.StatusNotFound, "Request_ResourceNotFound", "Resource '"+id+"' does not exist or one of its queried reference-property objects are not present.", c.RequestID)
		}
		d := g.members
		if c.Operation == OpListGroupOwners {
			d = g.owners
		}
		for _, m := range d.list[min(skip, len(d.list)):min(skip+size, len(d.list))] {
			items = append(items, s.directoryObjectJSON(m))
		}
		return s.writePage(w, r, items, skip, size, len(d.list))
	case OpListAppRoleAssignedTo:
		sp, ok := s.tenant.sps[id]
		if !ok {
			return s.graphError(w, r, http.StatusNotFound, "Request_ResourceNotFound", "Resource '"+id+"' does not exist or one of its queried reference-property objects are not present.", c.RequestID)
		}
		for _, a := range sp.assigned[min(skip, len(sp.assigned)):min(skip+size, len(sp.assigned))] {
			items = append(items, map[string]any{"id": a.id, "appRoleId": a.appRoleID, "principalId": a.principalID,
				"principalType": s.principalType(a.principalID), "resourceId": sp.id, "resourceDisplayName": sp.name})
		}
		return s.writePage(w, r, items, skip, size, len(sp.assigned))
	case OpGetServicePrincipal:
		sp, ok := s.tenant.sps[id]
		if !ok {
			return s.graphError(w, r, http.StatusNotFound, "Request_ResourceNotFound", "Resource '"+id+"' does not exist or one of its queried reference-property objects are not present.", c.RequestID)
		}
		roles := make([]map[string]any, len(sp.appRoles))
		for i, r := range sp.appRoles {
			roles[i] = map[string]any{"id": r, "isEnabled": true, "allowedMemberTypes": []string{"User"}, "displayName": "Role " + short(r), "value": "role." + short(r)}
		}
		writeJSON(w, http.StatusOK, map[string]any{"id": sp.id, "displayName": sp.name, "appRoles": roles})
		return http.StatusOK
	case OpListMemberOf, OpListOwnedObjects:
		var all []string
		for gid, g := range s.tenant.groups {
			if (c.Operation == OpListMemberOf && g.members.set[id]) || (c.Operation == OpListOwnedObjects && g.owners.set[id]) {
				all = append(all, gid)
			}
		}
		slices.Sort(all)
		for _, gid := range all[min(skip, len(all)):min(skip+size, len(all))] {
			items = append(items, map[string]any{"@odata.type": "#microsoft.graph.group", "id": gid})
		}
		return s.writePage(w, r, items, skip, size, len(all))
	case OpListAppRoleAssignment:
		var all []map[string]any
		ids := make([]string, 0, len(s.tenant.sps))
		for spID := range s.tenant.sps {
			ids = append(ids, spID)
		}
		slices.Sort(ids)
		for _, spID := range ids {
			for _, a := range s.tenant.sps[spID].assigned {
				if a.principalID == id {
					all = append(all, map[string]any{"id": a.id, "appRoleId": a.appRoleID, "principalId": id, "resourceId": spID})
				}
			}
		}
		return s.writePage(w, r, all[min(skip, len(all)):min(skip+size, len(all))], skip, size, len(all))
	}
	return s.writePage(w, r, items[min(skip, len(items)):min(skip+size, len(items))], skip, size, len(items))
}

func (s *Server) catalogExists(id string) bool {
	for _, p := range s.tenant.packages {
		if p.CatalogID == id {
			return true
		}
	}
	return false
}

func (s *Server) principalType(id string) string {
	if _, ok := s.tenant.sps[id]; ok {
		return "ServicePrincipal"
	}
	return "User"
}

func (s *Server) directoryObjectJSON(id string) map[string]any {
	if _, ok := s.tenant.sps[id]; ok {
		return map[string]any{"@odata.type": "#microsoft.graph.servicePrincipal", "id": id}
	}
	return map[string]any{"@odata.type": "#microsoft.graph.user", "id": id}
}

// roleScopesJSON is an access package's resourceRoleScopes, with role and scope expanded.
func (s *Server) roleScopesJSON(p *AccessPackage, expand bool) []map[string]any {
	out := make([]map[string]any, 0, len(p.Roles))
	for i, r := range p.Roles {
		rs := map[string]any{"id": stableID(p.ID, "scope", i), "createdDateTime": "2026-01-05T10:00:00Z"}
		if !expand {
			out = append(out, rs)
			continue
		}
		role := map[string]any{"id": stableID(p.ID, "role", i), "description": nil}
		scope := map[string]any{"id": stableID(p.ID, "rscope", i), "description": nil, "isRootScope": true}
		switch r.Kind {
		case RoleMember, RoleOwner:
			role["displayName"], role["originSystem"], role["originId"] = r.Kind, "AadGroup", r.Kind+"_"+r.ResourceID
			scope["displayName"], scope["originSystem"], scope["originId"] = "Root", "AadGroup", r.ResourceID
		case RoleApp:
			role["displayName"], role["originSystem"], role["originId"] = "Role "+short(r.AppRoleID), "AadApplication", r.AppRoleID
			scope["displayName"], scope["originSystem"], scope["originId"] = "Root", "AadApplication", r.ResourceID
		case RoleSharePoint:
			role["displayName"], role["originSystem"], role["originId"] = "Members", "SharePointOnline", "4"
			scope["displayName"], scope["originSystem"], scope["originId"] = "Root", "SharePointOnline", r.ResourceID
		}
		rs["role"], rs["scope"] = role, scope
		out = append(out, rs)
	}
	return out
}

// stableID derives a GUID from its parts, so that repeated reads agree.
func stableID(pkg, kind string, i int) string {
	return uuid.NewSHA1(uuid.NameSpaceOID, []byte(pkg+"/"+kind+"/"+strconv.Itoa(i))).String()
}

// short is the first eight characters of s, for display names.
func short(s string) string { return s[:min(8, len(s))] }

// pageArgs reads $top and $skiptoken.
func pageArgs(q url.Values, pageSize int) (size, skip int, ok bool) {
	size = pageSize
	if t := q.Get("$top"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 1 || n > 999 {
			return 0, 0, false
		}
		size = n
	}
	if t := q.Get("$skiptoken"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return 0, 0, false
		}
		skip = n
	}
	return size, skip, true
}

// writePage writes one page of a list of total items, with @odata.nextLink when more follow.
func (s *Server) writePage(w http.ResponseWriter, r *http.Request, items []map[string]any, skip, size, total int) int {
	if items == nil {
		items = []map[string]any{}
	}
	body := map[string]any{"value": items}
	if skip+size < total {
		next := url.Values{}
		for k, v := range r.URL.Query() {
			next[k] = slices.Clone(v)
		}
		next.Set("$skiptoken", strconv.Itoa(skip+size))
		body["@odata.nextLink"] = s.URL + r.URL.Path + "?" + strings.ReplaceAll(next.Encode(), "+", "%20")
	}
	writeJSON(w, http.StatusOK, body)
	return http.StatusOK
}

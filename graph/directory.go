package graph

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Operations of the catalog and directory reads (drift and resource verification), as
// passed to Config.Observe and named in metrics.
const (
	OpListAccessPackages     = "list_access_packages"
	OpGetAccessPackage       = "get_access_package"
	OpListGroupMembers       = "list_group_members"
	OpListGroupOwners        = "list_group_owners"
	OpListAppRoleAssignedTo  = "list_app_role_assigned_to"
	OpGetServicePrincipal    = "get_service_principal"
	OpListMemberOf           = "list_member_of"
	OpListOwnedObjects       = "list_owned_objects"
	OpListAppRoleAssignments = "list_app_role_assignments"
)

// DirectoryOps are the operations that read the directory (groups, service principals,
// users) rather than entitlement management: they have a throttling budget of their own.
var DirectoryOps = []string{OpListGroupMembers, OpListGroupOwners, OpListAppRoleAssignedTo,
	OpGetServicePrincipal, OpListMemberOf, OpListOwnedObjects, OpListAppRoleAssignments}

// Paths of the reads, relative to Graph's base URL; {id} is a validated GUID. They are
// checked against Graph's published description (testdata/graph-v1.0-extract.xml).
const (
	pathAccessPackages        = "/v1.0/identityGovernance/entitlementManagement/accessPackages"
	pathCatalogAccessPackages = "/v1.0/identityGovernance/entitlementManagement/catalogs/{id}/accessPackages"
	pathGroupMembers          = "/v1.0/groups/{id}/members"
	pathGroupOwners           = "/v1.0/groups/{id}/owners"
	pathAppRoleAssignedTo     = "/v1.0/servicePrincipals/{id}/appRoleAssignedTo"
	pathServicePrincipal      = "/v1.0/servicePrincipals/{id}"
)

// Resource role origin systems (accessPackageResourceRole.originSystem).
const (
	OriginGroup      = "AadGroup"
	OriginApp        = "AadApplication"
	OriginSharePoint = "SharePointOnline"
)

// AccessPackage is an access package with its resource role scopes.
type AccessPackage struct {
	ID          string
	DisplayName string
	Roles       []ResourceRole
}

// ResourceRole is one of a package's resource role scopes: the role (originSystem and
// originId: "Member_<group id>", "Owner_<group id>", an app role id) and its scope (whose
// originId is the group id, the service principal's object id, or the site).
type ResourceRole struct {
	ID            string // the resourceRoleScope's id
	DisplayName   string // the role's
	OriginSystem  string
	OriginID      string
	ScopeOriginID string
	ScopeName     string
}

// PackagePage is one page of access packages (without their roles).
type PackagePage struct {
	Packages []AccessPackage
	NextLink string
}

// IDPage is one page of directory object ids (members, owners, memberOf, ownedObjects).
type IDPage struct {
	IDs      []string // lower case
	NextLink string
}

// AppRoleAssignment is one appRoleAssignment.
type AppRoleAssignment struct {
	PrincipalID string // lower case
	AppRoleID   string // lower case
	ResourceID  string // the service principal's object id, lower case
}

// AppRolePage is one page of app role assignments.
type AppRolePage struct {
	Assignments []AppRoleAssignment
	NextLink    string
}

// Target is an assignment's target (accessPackageSubject), read with $expand=target.
type Target struct {
	ObjectID      string // lower case; empty when the subject has no directory object yet
	PrincipalName string
	DisplayName   string
	SubjectType   string // user, servicePrincipal, ...
}

func (c *Client) v1URL(template, id string) (string, error) {
	if id != "" || strings.Contains(template, "{id}") {
		if !ValidID(id) {
			return "", fmt.Errorf("%w: %q", ErrInvalidID, truncate(id, 64))
		}
		template = strings.Replace(template, "{id}", url.PathEscape(strings.ToLower(id)), 1)
	}
	return c.base.String() + template, nil
}

// getJSON makes a GET of op and decodes a 200 into v.
func (c *Client) getJSON(ctx context.Context, op, target string, v any) (Result, error) {
	body, res, err := c.do(ctx, op, http.MethodGet, target)
	if err != nil || res.Status != http.StatusOK {
		return res, err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return res, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return res, nil
}

// ListAccessPackages lists one page of access packages: all of them, or a catalog's when
// catalogID is set. Follow the page's NextLink with nextLink.
func (c *Client) ListAccessPackages(ctx context.Context, catalogID, nextLink string) (PackagePage, Result, error) {
	u, err := c.pageURL(nextLink, func() (string, error) {
		if catalogID != "" {
			return c.v1URL(pathCatalogAccessPackages, catalogID)
		}
		return c.v1URL(pathAccessPackages, "")
	}, "$select=id,displayName")
	if err != nil {
		return PackagePage{}, Result{}, fmt.Errorf("list access packages: %w", err)
	}
	var w struct {
		Value []struct {
			ID          string `json:"id"`
			DisplayName string `json:"displayName"`
		} `json:"value"`
		NextLink string `json:"@odata.nextLink"`
	}
	res, err := c.getJSON(ctx, OpListAccessPackages, u, &w)
	if err != nil {
		return PackagePage{}, res, fmt.Errorf("list access packages: %w", err)
	}
	p := PackagePage{NextLink: w.NextLink}
	for _, v := range w.Value {
		if ValidID(v.ID) {
			p.Packages = append(p.Packages, AccessPackage{ID: strings.ToLower(v.ID), DisplayName: v.DisplayName})
		}
	}
	return p, res, nil
}

// GetAccessPackage reads an access package with its resource role scopes, role and scope
// expanded.
func (c *Client) GetAccessPackage(ctx context.Context, id string) (AccessPackage, Result, error) {
	u, err := c.v1URL(pathAccessPackages+"/{id}", id)
	if err != nil {
		return AccessPackage{}, Result{}, fmt.Errorf("get access package: %w", err)
	}
	u += "?$expand=" + queryEscape("resourceRoleScopes($expand=role,scope)")
	var w struct {
		ID                 string `json:"id"`
		DisplayName        string `json:"displayName"`
		ResourceRoleScopes []struct {
			ID   string `json:"id"`
			Role *struct {
				DisplayName  string `json:"displayName"`
				OriginSystem string `json:"originSystem"`
				OriginID     string `json:"originId"`
			} `json:"role"`
			Scope *struct {
				DisplayName string `json:"displayName"`
				OriginID    string `json:"originId"`
			} `json:"scope"`
		} `json:"resourceRoleScopes"`
	}
	res, err := c.getJSON(ctx, OpGetAccessPackage, u, &w)
	if err != nil || res.Status != http.StatusOK {
		return AccessPackage{}, res, wrapErr("get access package", id, err)
	}
	if !strings.EqualFold(w.ID, id) {
		return AccessPackage{}, res, fmt.Errorf("get access package %s: %w: the answer is about %q", strings.ToLower(id), ErrDecode, truncate(w.ID, 64))
	}
	p := AccessPackage{ID: strings.ToLower(w.ID), DisplayName: w.DisplayName}
	for _, rs := range w.ResourceRoleScopes {
		r := ResourceRole{ID: rs.ID}
		if rs.Role != nil {
			r.DisplayName, r.OriginSystem, r.OriginID = rs.Role.DisplayName, rs.Role.OriginSystem, rs.Role.OriginID
		}
		if rs.Scope != nil {
			r.ScopeOriginID, r.ScopeName = rs.Scope.OriginID, rs.Scope.DisplayName
		}
		p.Roles = append(p.Roles, r)
	}
	return p, res, nil
}

func wrapErr(what, id string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s: %w", what, strings.ToLower(id), err)
}

// pageURL is nextLink when set (checked to point at Graph), else first() with query.
func (c *Client) pageURL(nextLink string, first func() (string, error), query string) (string, error) {
	if nextLink != "" {
		return c.checkNextLink(nextLink)
	}
	u, err := first()
	if err != nil {
		return "", err
	}
	if query != "" {
		u += "?" + query
	}
	return u, nil
}

// ListGroupMembers lists one page of a group's direct members (owners when owners is
// set): their ids.
func (c *Client) ListGroupMembers(ctx context.Context, groupID string, owners bool, nextLink string) (IDPage, Result, error) {
	op, tmpl := OpListGroupMembers, pathGroupMembers
	if owners {
		op, tmpl = OpListGroupOwners, pathGroupOwners
	}
	return c.listIDs(ctx, op, tmpl, groupID, nextLink)
}

// ListMemberOf lists one page of the groups a user (or, with servicePrincipal, a service
// principal) is a direct member of; with owned, the objects it owns.
func (c *Client) ListMemberOf(ctx context.Context, principalID string, servicePrincipal, owned bool, nextLink string) (IDPage, Result, error) {
	coll := "users"
	if servicePrincipal {
		coll = "servicePrincipals"
	}
	op, nav := OpListMemberOf, "memberOf"
	if owned {
		op, nav = OpListOwnedObjects, "ownedObjects"
	}
	return c.listIDs(ctx, op, "/v1.0/"+coll+"/{id}/"+nav, principalID, nextLink)
}

func (c *Client) listIDs(ctx context.Context, op, tmpl, id, nextLink string) (IDPage, Result, error) {
	u, err := c.pageURL(nextLink, func() (string, error) { return c.v1URL(tmpl, id) }, "$select=id&$top=999")
	if err != nil {
		return IDPage{}, Result{}, fmt.Errorf("%s: %w", op, err)
	}
	var w struct {
		Value []struct {
			ID string `json:"id"`
		} `json:"value"`
		NextLink string `json:"@odata.nextLink"`
	}
	res, err := c.getJSON(ctx, op, u, &w)
	if err != nil {
		return IDPage{}, res, fmt.Errorf("%s %s: %w", op, strings.ToLower(id), err)
	}
	p := IDPage{NextLink: w.NextLink, IDs: make([]string, 0, len(w.Value))}
	for _, v := range w.Value {
		p.IDs = append(p.IDs, strings.ToLower(v.ID))
	}
	return p, res, nil
}

// ListAppRoleAssignedTo lists one page of the app role assignments granted for a service
// principal (who holds which of its app roles).
func (c *Client) ListAppRoleAssignedTo(ctx context.Context, spID, nextLink string) (AppRolePage, Result, error) {
	return c.listAppRoles(ctx, OpListAppRoleAssignedTo, pathAppRoleAssignedTo, spID, nextLink, "$select=principalId,appRoleId,resourceId&$top=999")
}

// ListAppRoleAssignments lists one page of the app roles a user (or service principal)
// holds.
func (c *Client) ListAppRoleAssignments(ctx context.Context, principalID string, servicePrincipal bool, nextLink string) (AppRolePage, Result, error) {
	coll := "users"
	if servicePrincipal {
		coll = "servicePrincipals"
	}
	return c.listAppRoles(ctx, OpListAppRoleAssignments, "/v1.0/"+coll+"/{id}/appRoleAssignments", principalID, nextLink, "$select=principalId,appRoleId,resourceId")
}

func (c *Client) listAppRoles(ctx context.Context, op, tmpl, id, nextLink, query string) (AppRolePage, Result, error) {
	u, err := c.pageURL(nextLink, func() (string, error) { return c.v1URL(tmpl, id) }, query)
	if err != nil {
		return AppRolePage{}, Result{}, fmt.Errorf("%s: %w", op, err)
	}
	var w struct {
		Value []struct {
			PrincipalID string `json:"principalId"`
			AppRoleID   string `json:"appRoleId"`
			ResourceID  string `json:"resourceId"`
		} `json:"value"`
		NextLink string `json:"@odata.nextLink"`
	}
	res, err := c.getJSON(ctx, op, u, &w)
	if err != nil {
		return AppRolePage{}, res, fmt.Errorf("%s %s: %w", op, strings.ToLower(id), err)
	}
	p := AppRolePage{NextLink: w.NextLink, Assignments: make([]AppRoleAssignment, 0, len(w.Value))}
	for _, v := range w.Value {
		p.Assignments = append(p.Assignments, AppRoleAssignment{PrincipalID: strings.ToLower(v.PrincipalID),
			AppRoleID: strings.ToLower(v.AppRoleID), ResourceID: strings.ToLower(v.ResourceID)})
	}
	return p, res, nil
}

// GetAppRoles reads the ids of the app roles a service principal defines.
func (c *Client) GetAppRoles(ctx context.Context, spID string) ([]string, Result, error) {
	u, err := c.v1URL(pathServicePrincipal, spID)
	if err != nil {
		return nil, Result{}, fmt.Errorf("get service principal: %w", err)
	}
	u += "?$select=id,appRoles"
	var w struct {
		ID       string `json:"id"`
		AppRoles []struct {
			ID string `json:"id"`
		} `json:"appRoles"`
	}
	res, err := c.getJSON(ctx, OpGetServicePrincipal, u, &w)
	if err != nil || res.Status != http.StatusOK {
		return nil, res, wrapErr("get service principal", spID, err)
	}
	ids := make([]string, len(w.AppRoles))
	for i, r := range w.AppRoles {
		ids[i] = strings.ToLower(r.ID)
	}
	return ids, res, nil
}

// parseTime reads an OData DateTimeOffset; zero when absent or unreadable.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

package graphtest

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
)

// Shape is a tenant to seed: how many access packages, groups, applications and
// delivered assignments, and which fraction of the assignments has drifted.
type Shape struct {
	Packages    int
	Groups      int     // each package grants membership of two groups; every fourth also ownership of one
	Apps        int     // every third package grants an app role of one of them; 0: none
	SharePoint  bool    // every fifth package also has a SharePoint site role
	Assignments int     // spread evenly over the packages, one user each
	Drift       float64 // the fraction of assignments whose user lost one resource role out of band
	Seed        uint64  // for the choices; the same seed gives the same tenant
	Catalog     string  // the catalog id of every package; default a generated one
}

// Seeded is what Seed made.
type Seeded struct {
	Catalog  string
	Packages []string
	Drifted  map[string]string // assignment id -> what was removed, e.g. "member of group <id>"
	Groups   []string
	Apps     []string
}

// Seed fills the tenant with sh: packages, groups, service principals, users and
// delivered assignments, then removes one grant out of band from sh.Drift of them.
func (s *Server) Seed(sh Shape) Seeded {
	rnd := rand.New(rand.NewPCG(sh.Seed, 0x5eed))
	id := func() string {
		var b [16]byte
		for i := range b {
			b[i] = byte(rnd.UintN(256))
		}
		u, _ := uuid.FromBytes(b[:])
		u[6] = (u[6] & 0x0f) | 0x40
		u[8] = (u[8] & 0x3f) | 0x80
		return u.String()
	}
	out := Seeded{Catalog: sh.Catalog, Drifted: map[string]string{}}
	if out.Catalog == "" {
		out.Catalog = id()
	}
	for i := range max(sh.Groups, 1) {
		g := id()
		s.AddGroup(g, fmt.Sprintf("group %d", i))
		out.Groups = append(out.Groups, g)
	}
	appRoles := map[string]string{}
	for i := range sh.Apps {
		sp, role := id(), id()
		s.AddServicePrincipal(sp, fmt.Sprintf("app %d", i), role)
		out.Apps = append(out.Apps, sp)
		appRoles[sp] = role
	}
	var pkgRoles [][]ResourceRole
	for i := range sh.Packages {
		p := AccessPackage{ID: id(), DisplayName: fmt.Sprintf("package %d", i), CatalogID: out.Catalog}
		g := len(out.Groups)
		p.Roles = append(p.Roles,
			ResourceRole{Kind: RoleMember, ResourceID: out.Groups[(2*i)%g]},
			ResourceRole{Kind: RoleMember, ResourceID: out.Groups[(2*i+1)%g]})
		if i%4 == 0 {
			p.Roles = append(p.Roles, ResourceRole{Kind: RoleOwner, ResourceID: out.Groups[(2*i)%g]})
		}
		if len(out.Apps) > 0 && i%3 == 0 {
			sp := out.Apps[i%len(out.Apps)]
			p.Roles = append(p.Roles, ResourceRole{Kind: RoleApp, ResourceID: sp, AppRoleID: appRoles[sp]})
		}
		if sh.SharePoint && i%5 == 0 {
			p.Roles = append(p.Roles, ResourceRole{Kind: RoleSharePoint, ResourceID: "https://contoso.sharepoint.com/sites/site" + fmt.Sprint(i)})
		}
		s.AddAccessPackage(p)
		out.Packages = append(out.Packages, p.ID)
		pkgRoles = append(pkgRoles, p.Roles)
	}
	if sh.Packages == 0 {
		return out
	}
	start := s.now().Add(-48 * time.Hour)
	for n := range sh.Assignments {
		pi := n % sh.Packages
		user, a := id(), id()
		s.AddUser(user, fmt.Sprintf("user%d@contoso.example", n))
		s.Assign(Assignment{ID: a, AccessPackageID: out.Packages[pi], TargetID: user,
			PrincipalName: fmt.Sprintf("user%d@contoso.example", n), StartDateTime: start})
		if rnd.Float64() >= sh.Drift {
			continue
		}
		var checkable []ResourceRole
		for _, r := range pkgRoles[pi] {
			if r.Kind != RoleSharePoint {
				checkable = append(checkable, r)
			}
		}
		r := checkable[rnd.IntN(len(checkable))]
		switch r.Kind {
		case RoleMember:
			s.RemoveMember(r.ResourceID, user)
			out.Drifted[a] = "member of group " + r.ResourceID
		case RoleOwner:
			s.RemoveOwner(r.ResourceID, user)
			out.Drifted[a] = "owner of group " + r.ResourceID
		case RoleApp:
			s.RemoveAppRoleAssignment(r.ResourceID, user, r.AppRoleID)
			out.Drifted[a] = "appRole " + r.AppRoleID + " of " + r.ResourceID
		}
	}
	return out
}

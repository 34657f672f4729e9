package graph_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/reprocessor/reprocessor/graph"
	"github.com/reprocessor/reprocessor/worker"
)

// csdl is the part of Graph's CSDL the conformance test reads.
type csdl struct {
	Enums []struct {
		Name    string `xml:"Name,attr"`
		Members []struct {
			Name string `xml:"Name,attr"`
		} `xml:"Member"`
	} `xml:"EnumType"`
	Entities []csdlType `xml:"EntityType"`
	Complex  []csdlType `xml:"ComplexType"`
	Actions  []struct {
		Name   string `xml:"Name,attr"`
		Params []struct {
			Name string `xml:"Name,attr"`
			Type string `xml:"Type,attr"`
		} `xml:"Parameter"`
	} `xml:"Action"`
	Sets []struct {
		Name string `xml:"Name,attr"`
		Type string `xml:"EntityType,attr"`
	} `xml:"EntitySet"`
	Singletons []struct {
		Name string `xml:"Name,attr"`
		Type string `xml:"Type,attr"`
	} `xml:"Singleton"`
}

type csdlType struct {
	Name  string `xml:"Name,attr"`
	Base  string `xml:"BaseType,attr"`
	Props []struct {
		Name string `xml:"Name,attr"`
		Type string `xml:"Type,attr"`
	} `xml:"Property"`
	Navs []struct {
		Name string `xml:"Name,attr"`
		Type string `xml:"Type,attr"`
	} `xml:"NavigationProperty"`
}

type schema struct {
	types   map[string]csdlType
	roots   map[string]string // entity set or singleton -> type (Collection(...) for a set)
	actions map[string][]string
	enums   map[string][]string
}

func loadSchema(t *testing.T, path string) schema {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c csdl
	if err := xml.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	s := schema{types: map[string]csdlType{}, roots: map[string]string{}, actions: map[string][]string{}, enums: map[string][]string{}}
	for _, ty := range append(c.Entities, c.Complex...) {
		s.types[ty.Name] = ty
	}
	for _, set := range c.Sets {
		s.roots[set.Name] = "Collection(" + strings.TrimPrefix(set.Type, "microsoft.graph.") + ")"
	}
	for _, sg := range c.Singletons {
		s.roots[sg.Name] = strings.TrimPrefix(sg.Type, "microsoft.graph.")
	}
	for _, a := range c.Actions {
		for _, p := range a.Params {
			if p.Name == "bindingParameter" {
				s.actions[a.Name] = append(s.actions[a.Name], strings.TrimPrefix(p.Type, "graph."))
			}
		}
	}
	for _, e := range c.Enums {
		for _, m := range e.Members {
			s.enums[e.Name] = append(s.enums[e.Name], m.Name)
		}
	}
	return s
}

func bare(t string) (name string, collection bool) {
	if inner, ok := strings.CutPrefix(t, "Collection("); ok {
		return strings.TrimPrefix(strings.TrimSuffix(inner, ")"), "graph."), true
	}
	return strings.TrimPrefix(t, "graph."), false
}

// member finds a property or navigation property of a type (the extract keeps what is
// read of each type; entity and directoryObject contribute id).
func (s schema) member(typ, name string) (string, bool) {
	if name == "id" {
		return "Edm.String", true
	}
	ty, ok := s.types[typ]
	if !ok {
		return "", false
	}
	for _, p := range ty.Props {
		if p.Name == name {
			return p.Type, true
		}
	}
	for _, n := range ty.Navs {
		if n.Name == name {
			return n.Type, true
		}
	}
	return "", false
}

// resolve walks a path of segments from the service root, returning the type it names.
func (s schema) resolve(path string) (string, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	typ, ok := s.roots[segs[0]]
	if !ok {
		return "", errorf("no entity set or singleton %q", segs[0])
	}
	for _, seg := range segs[1:] {
		name, coll := bare(typ)
		switch {
		case coll && graph.ValidID(seg):
			typ = name // a key
		case coll:
			return "", errorf("%q follows a collection of %s without a key", seg, name)
		case slices.Contains(s.actions[seg], name):
			typ = "action"
		default:
			t, ok := s.member(name, seg)
			if !ok {
				return "", errorf("%s has no navigation property %q", name, seg)
			}
			typ = t
		}
	}
	return typ, nil
}

type confError string

func (e confError) Error() string { return string(e) }
func errorf(format string, args ...any) error {
	return confError(strings.TrimSpace(sprintf(format, args...)))
}

// urlRecorder answers every call 404 and records its URL.
type urlRecorder struct {
	mu   sync.Mutex
	urls []*url.URL
}

func (r *urlRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.urls = append(r.urls, req.URL)
	r.mu.Unlock()
	return &http.Response{StatusCode: 404, Body: http.NoBody, Header: http.Header{}, Request: req}, nil
}

const (
	aID  = "0b5f9a6d-2c36-4a59-b5a6-8d8f0a4c1e11"
	pkID = "1c6e0b7e-3d47-4b6a-86b7-9e901b5d2f22"
)

// Every URL the client builds is a path of Graph's published description, and every
// $expand, $select and $filter property it names exists on the type it is applied to.
func TestURLsConformToGraphsDescription(t *testing.T) {
	for _, tc := range []struct {
		version, extract string
	}{{graph.V1, "testdata/graph-v1.0-extract.xml"}, {graph.Beta, "testdata/graph-beta-extract.xml"}} {
		s := loadSchema(t, tc.extract)
		rec := &urlRecorder{}
		c, err := graph.New(graph.Config{APIVersion: tc.version, Tokens: staticTokensX{}, HTTPClient: &http.Client{Transport: rec}})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		_, _ = c.Reprocess(ctx, aID)
		_, _, _ = c.GetAssignment(ctx, aID)
		_, _, _ = c.ListAssignments(ctx, graph.ListQuery{State: worker.StateDelivered, AccessPackageID: pkID, Top: 999})
		if tc.version == graph.V1 {
			_, _, _ = c.ListAssignments(ctx, graph.ListQuery{State: worker.StateDelivered, AccessPackageID: pkID, ExpandTarget: true, Top: 999})
			_, _, _ = c.GetAssignmentDetail(ctx, aID)
			_, _, _ = c.ListAccessPackages(ctx, "", "")
			_, _, _ = c.ListAccessPackages(ctx, pkID, "")
			_, _, _ = c.GetAccessPackage(ctx, pkID)
			_, _, _ = c.ListGroupMembers(ctx, pkID, false, "")
			_, _, _ = c.ListGroupMembers(ctx, pkID, true, "")
			_, _, _ = c.ListAppRoleAssignedTo(ctx, pkID, "")
			_, _, _ = c.GetAppRoles(ctx, pkID)
			for _, sp := range []bool{false, true} {
				_, _, _ = c.ListMemberOf(ctx, pkID, sp, false, "")
				_, _, _ = c.ListMemberOf(ctx, pkID, sp, true, "")
				_, _, _ = c.ListAppRoleAssignments(ctx, pkID, sp, "")
			}
		}
		if want := map[string]int{graph.V1: 18, graph.Beta: 3}[tc.version]; len(rec.urls) != want {
			t.Errorf("%s: %d calls recorded, want %d", tc.version, len(rec.urls), want)
		}
		for _, u := range rec.urls {
			path, ok := strings.CutPrefix(u.Path, "/"+tc.version+"/")
			if !ok {
				t.Errorf("%s: %s is not under /%s/", tc.version, u, tc.version)
				continue
			}
			typ, err := s.resolve(path)
			if err != nil {
				t.Errorf("%s %s: %v", tc.version, u.Path, err)
				continue
			}
			elem, _ := bare(typ)
			q := u.Query()
			for _, sel := range strings.Split(q.Get("$select"), ",") {
				if sel != "" {
					if _, ok := s.member(elem, sel); !ok {
						t.Errorf("%s: $select=%s: %s has no such property", u.Path, sel, elem)
					}
				}
			}
			for _, exp := range splitTop(q.Get("$expand")) {
				s.checkExpand(t, u.Path, elem, exp)
			}
			if f := q.Get("$filter"); f != "" {
				for _, prop := range filterProps(f) {
					s.checkPath(t, u.Path, elem, prop)
				}
			}
		}
	}
}

type staticTokensX struct{}

func (staticTokensX) Token(context.Context) (string, error)           { return "t", nil }
func (staticTokensX) Refresh(context.Context, string) (string, error) { return "t", nil }

// checkExpand checks "nav" or "nav($expand=a,b)" or "nav($select=x)" on typ.
func (s schema) checkExpand(t *testing.T, where, typ, exp string) {
	t.Helper()
	name, opts, _ := strings.Cut(exp, "(")
	nt, ok := s.member(typ, name)
	if !ok {
		t.Errorf("%s: $expand=%s: %s has no navigation property %q", where, exp, typ, name)
		return
	}
	inner, _ := bare(nt)
	opts = strings.TrimSuffix(opts, ")")
	if sub, ok := strings.CutPrefix(opts, "$expand="); ok {
		for _, e := range splitTop(sub) {
			s.checkExpand(t, where, inner, e)
		}
	}
	if sub, ok := strings.CutPrefix(opts, "$select="); ok {
		for _, p := range strings.Split(sub, ",") {
			if _, ok := s.member(inner, p); !ok {
				t.Errorf("%s: $select=%s inside $expand: %s has no such property", where, p, inner)
			}
		}
	}
}

func (s schema) checkPath(t *testing.T, where, typ, path string) {
	t.Helper()
	for _, seg := range strings.Split(path, "/") {
		nt, ok := s.member(typ, seg)
		if !ok {
			t.Errorf("%s: $filter on %s: %s has no property %q", where, path, typ, seg)
			return
		}
		typ, _ = bare(nt)
	}
}

// splitTop splits on commas outside parentheses.
func splitTop(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, r := range s {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	if s != "" {
		out = append(out, s[start:])
	}
	return out
}

// filterProps returns the property paths of "(p eq 'v') and p2 eq 'v2'".
func filterProps(f string) []string {
	var out []string
	for _, clause := range strings.Split(f, " and ") {
		prop, _, _ := strings.Cut(strings.Trim(clause, "() "), " eq ")
		out = append(out, strings.TrimSpace(prop))
	}
	return out
}

// The assignment states the worker knows are Graph's enum, member for member; and the
// properties the decoders read exist where they read them.
func TestEnumsAndPropertiesConformToGraphsDescription(t *testing.T) {
	v1 := loadSchema(t, "testdata/graph-v1.0-extract.xml")
	want := v1.enums["accessPackageAssignmentState"]
	var known []string
	for _, st := range worker.KnownStates {
		if st != worker.StateNotFound {
			known = append(known, st)
		}
	}
	slices.Sort(want)
	slices.Sort(known)
	if !slices.Equal(want, known) {
		t.Errorf("accessPackageAssignmentState is %v in Graph's description; the worker knows %v", want, known)
	}
	reads := map[string][]string{
		"accessPackageAssignment":        {"state", "status", "schedule", "target", "accessPackage"},
		"entitlementManagementSchedule":  {"startDateTime"},
		"accessPackageSubject":           {"objectId", "principalName", "displayName", "subjectType"},
		"accessPackage":                  {"displayName", "resourceRoleScopes"},
		"accessPackageResourceRoleScope": {"role", "scope"},
		"accessPackageResourceRole":      {"displayName", "originSystem", "originId"},
		"accessPackageResourceScope":     {"displayName", "originId"},
		"appRoleAssignment":              {"principalId", "appRoleId", "resourceId"},
		"servicePrincipal":               {"appRoles"},
		"appRole":                        {"id"},
	}
	for typ, props := range reads {
		for _, p := range props {
			if _, ok := v1.member(typ, p); !ok {
				t.Errorf("v1.0 %s has no %q, which the client decodes", typ, p)
			}
		}
	}
	if subj := v1.enums["accessPackageSubjectType"]; !slices.Contains(subj, "servicePrincipal") || !slices.Contains(subj, "user") {
		t.Errorf("accessPackageSubjectType %v: the verifier tells servicePrincipal from user", subj)
	}
	beta := loadSchema(t, "testdata/graph-beta-extract.xml")
	for _, p := range []string{"assignmentState", "assignmentStatus"} {
		if _, ok := beta.member("accessPackageAssignment", p); !ok {
			t.Errorf("beta accessPackageAssignment has no %q, which the client decodes", p)
		}
	}
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

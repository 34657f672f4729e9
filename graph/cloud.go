package graph

import (
	"fmt"
	"strings"
)

// Cloud names a Microsoft cloud: where Graph is and where its authority is.
type Cloud struct {
	Name          string // "public", "usgov", "usgovdod" or "china"
	GraphURL      string // Graph's base URL, without a version
	AuthorityHost string // the Microsoft Entra authority, with a trailing slash
}

// clouds are the national clouds of DESIGN §1, in the order CloudByName lists them.
var clouds = [...]Cloud{
	{Name: "public", GraphURL: "https://graph.microsoft.com", AuthorityHost: "https://login.microsoftonline.com/"},
	{Name: "usgov", GraphURL: "https://graph.microsoft.us", AuthorityHost: "https://login.microsoftonline.us/"},
	{Name: "usgovdod", GraphURL: "https://dod-graph.microsoft.us", AuthorityHost: "https://login.microsoftonline.us/"},
	{Name: "china", GraphURL: "https://microsoftgraph.chinacloudapi.cn", AuthorityHost: "https://login.chinacloudapi.cn/"},
}

// CloudByName returns the cloud with that name; the empty name is "public". Names are
// matched case-insensitively.
func CloudByName(name string) (Cloud, error) {
	if name == "" {
		name = "public"
	}
	names := make([]string, 0, len(clouds))
	for _, c := range clouds {
		if strings.EqualFold(c.Name, name) {
			return c, nil
		}
		names = append(names, c.Name)
	}
	return Cloud{}, fmt.Errorf("unknown cloud %q: valid values are %s", name, strings.Join(names, ", "))
}

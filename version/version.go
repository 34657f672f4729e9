// Package version says which build this is: the version and revision stamped by the
// linker or recorded by go build, and Go's version.
package version

import (
	"cmp"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/reprocessor/reprocessor/metrics"
)

// version and revision are set at build time:
// go build -ldflags "-X github.com/reprocessor/reprocessor/version.version=v1.2.3
// -X github.com/reprocessor/reprocessor/version.revision=<commit>". An empty revision is
// read from the VCS stamp that go build records in a checkout (deploy/Dockerfile has no .git).
var (
	version  = "dev"
	revision = ""
)

// Info returns the version, the VCS revision the binary was built from, and Go's version.
func Info() metrics.BuildInfo {
	v, rev := version, revision
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && rev == "" {
				rev = s.Value
			}
		}
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return metrics.BuildInfo{Version: v, Revision: cmp.Or(rev, "unknown"), GoVersion: runtime.Version()}
}

// Line is the one line "reprocessor version" prints.
func Line() string {
	b := Info()
	return fmt.Sprintf("reprocessor %s (revision %s, %s)", b.Version, b.Revision, b.GoVersion)
}

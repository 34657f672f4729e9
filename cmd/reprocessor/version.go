package main

import (
	"cmp"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/reprocessor/reprocessor/metrics"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// buildInfo returns the version, the VCS revision the binary was built from, and Go's version.
func buildInfo() metrics.BuildInfo {
	v, revision := version, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return metrics.BuildInfo{Version: v, Revision: cmp.Or(revision, "unknown"), GoVersion: runtime.Version()}
}

func versionLine() string {
	b := buildInfo()
	return fmt.Sprintf("reprocessor %s (revision %s, %s)", b.Version, b.Revision, b.GoVersion)
}

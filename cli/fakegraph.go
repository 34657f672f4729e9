package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/reprocessor/reprocessor/graph/graphtest"
)

// cmdFakeGraph serves the simulated Graph until ctx ends and prints the settings that
// point a worker at it.
func cmdFakeGraph(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fake-graph", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "address to listen on (port 0: a free port)")
	caDir := fs.String("ca-dir", "", "directory to write the CA certificate to (default: a new temporary directory)")
	realistic := fs.Bool("realistic", false, "behave like the demo: latency 50-300ms, 2% unknown ids, occasional 429 and 503")
	latencyMin := fs.Duration("latency-min", 0, "smallest delay of a Graph answer")
	latencyMax := fs.Duration("latency-max", 0, "largest delay of a Graph answer")
	unknown := fs.Float64("unknown-rate", 0, "fraction of ids that do not exist (404)")
	throttle := fs.Float64("throttle-rate", 0, "fraction of calls answered 429 with Retry-After")
	unavailable := fs.Float64("unavailable-rate", 0, "fraction of calls answered 503 with Retry-After")
	rateLimit := fs.Float64("rate-limit", 0, "Graph calls per second admitted; the excess is answered 429 (0: no limit)")
	tokenLifetime := fs.Duration("token-lifetime", time.Hour, "expires_in of issued tokens")
	var shape graphtest.Shape
	fs.IntVar(&shape.Packages, "tenant-packages", 0, "seed a tenant with this many access packages (for reprocessor drift)")
	fs.IntVar(&shape.Groups, "tenant-groups", 10, "with --tenant-packages: groups among them")
	fs.IntVar(&shape.Apps, "tenant-apps", 2, "with --tenant-packages: applications among them")
	fs.IntVar(&shape.Assignments, "tenant-assignments", 1000, "with --tenant-packages: delivered assignments, one user each")
	fs.Float64Var(&shape.Drift, "tenant-drift", 0.02, "with --tenant-packages: fraction of assignments whose user lost one resource role")
	pageSize := fs.Int("page-size", 100, "the largest page a list answers (at most 999)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "reprocessor fake-graph: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	opts := graphtest.Options{}
	if *realistic {
		opts = graphtest.Realistic()
	}
	opts.Addr = *addr
	if *pageSize < 1 || *pageSize > 999 || shape.Packages < 0 || shape.Assignments < 0 || shape.Drift < 0 || shape.Drift > 1 {
		fmt.Fprintln(stderr, "reprocessor fake-graph: --page-size must be 1 to 999, the tenant's counts at least 0 and --tenant-drift from 0 to 1")
		return exitUsage
	}
	opts.PageSize = *pageSize
	opts.TokenLifetime = *tokenLifetime
	if *latencyMin > 0 || *latencyMax > 0 {
		opts.LatencyMin, opts.LatencyMax = *latencyMin, *latencyMax
	}
	if *unknown > 0 {
		opts.UnknownRate = *unknown
	}
	if *throttle > 0 || *unavailable > 0 {
		opts.ThrottleRate, opts.UnavailableRate = *throttle, *unavailable
	}
	srv, err := graphtest.Start(opts)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor fake-graph: %v\n", err)
		return exitFailed
	}
	defer srv.Close()
	if *rateLimit > 0 {
		srv.SetRateLimit(*rateLimit, max(1, int(*rateLimit)))
	}
	if shape.Packages > 0 {
		shape.SharePoint, shape.Seed = true, 1
		t := srv.Seed(shape)
		fmt.Fprintf(stdout, "seeded a tenant: %d access packages, %d groups, %d applications, %d assignments, %d drifted\n",
			len(t.Packages), len(t.Groups), len(t.Apps), shape.Assignments, len(t.Drifted))
	}
	dir := *caDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "reprocessor-fake-graph-"); err != nil {
			fmt.Fprintf(stderr, "reprocessor fake-graph: %v\n", err)
			return exitFailed
		}
		defer os.RemoveAll(dir)
	}
	caFile, err := srv.WriteCAFile(dir)
	if err != nil {
		fmt.Fprintf(stderr, "reprocessor fake-graph: %v\n", err)
		return exitFailed
	}
	env := srv.Env(caFile)
	fmt.Fprintf(stdout, "simulated Graph serving at %s\n", srv.URL)
	fmt.Fprintln(stdout, "# point a worker at it (these credentials are the simulator's own, not secrets):")
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(stdout, "export %s=%q\n", k, env[k])
	}
	fmt.Fprintln(stdout, "# then: reprocessor run    (Ctrl-C stops this server)")
	<-ctx.Done()
	fmt.Fprintf(stdout, "stopped after %d reprocess calls\n", srv.CallCount(graphtest.OpReprocess))
	return exitOK
}

package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"sigs.k8s.io/yaml"
)

func TestMain(m *testing.M) {
	// The cleanup replaces goleak's os.Exit: remove the shared binary, then exit.
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if built.dir != "" {
			_ = os.RemoveAll(built.dir)
		}
		os.Exit(code)
	}))
}

// requireTool returns the path of a command the test needs. A missing tool skips the test
// on a developer's machine and fails it in CI (CI=true), where .ci/run installs it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed; .ci/run installs it (Debian package %s)", name, debianPackage(name))
	}
	t.Skipf("%s is not installed (apt-get install %s); skipping", name, debianPackage(name))
	return ""
}

// repoRoot is the repository's root, the build context of deploy/Dockerfile.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// Build stamps used by the Dockerfile test and the binary the other tests run.
const (
	stampVersion  = "v0.0.0-deploytest"
	stampRevision = "0123456789abcdef0123456789abcdef01234567"
)

// dockerBuild is the Dockerfile's build stage as this machine can run it.
type dockerBuild struct {
	goVersion string // ARG GO_VERSION
	command   string // the RUN line with go build, as written
}

// readDockerfile finds the ARG GO_VERSION default and the RUN line that runs go build.
func readDockerfile(t *testing.T) dockerBuild {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b dockerBuild
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "ARG GO_VERSION="); ok {
			b.goVersion = v
		}
		if cmd, ok := strings.CutPrefix(line, "RUN "); ok && strings.Contains(cmd, "go build") {
			if b.command != "" {
				t.Fatal("Dockerfile: more than one RUN line runs go build")
			}
			if strings.HasSuffix(cmd, `\`) {
				t.Fatal("Dockerfile: keep the go build RUN line on one line")
			}
			b.command = cmd
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if b.command == "" || b.goVersion == "" {
		t.Fatalf("Dockerfile: no RUN go build line (%q) or no ARG GO_VERSION= (%q)", b.command, b.goVersion)
	}
	return b
}

// built is the worker binary built with the Dockerfile's command, once per test binary:
// the Dockerfile test checks it and the Prometheus and Kubernetes tests run it.
var built = struct {
	once sync.Once
	dir  string
	path string
	out  []byte
	err  error
}{}

// buildWorker runs the Dockerfile's go build command, with the build arguments
// VERSION=stampVersion and REVISION=stampRevision, in the repository root (the image's
// WORKDIR /src holds a copy of it) and returns the binary.
func buildWorker(t *testing.T) string {
	t.Helper()
	b := readDockerfile(t)
	requireTool(t, "sh")
	root := repoRoot(t)
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "reprocessor-deploy-test-")
		if built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "reprocessor")
		cmd := strings.ReplaceAll(b.command, "/out/reprocessor", built.path)
		c := exec.Command("sh", "-c", cmd)
		c.Dir = root
		c.Env = append(os.Environ(), "VERSION="+stampVersion, "REVISION="+stampRevision)
		built.out, built.err = c.CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("Dockerfile build command: %v\n%s", built.err, built.out)
	}
	return built.path
}

func TestDockerfileBuildsStampedStaticBinary(t *testing.T) {
	b := readDockerfile(t)
	for _, want := range []string{"CGO_ENABLED=0", "go build", "-trimpath", "-X github.com/reprocessor/reprocessor/version.version=${VERSION}", "-X github.com/reprocessor/reprocessor/version.revision=${REVISION}", "./cmd/reprocessor"} {
		if !strings.Contains(b.command, want) {
			t.Errorf("Dockerfile go build line lacks %q: %s", want, b.command)
		}
	}
	// The image is built with the Go of go.mod.
	gomod, err := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod); m == nil || string(m[1]) != b.goVersion {
		t.Errorf("Dockerfile ARG GO_VERSION=%s, go.mod says %q", b.goVersion, m)
	}
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// The runtime stage, the last one, is distroless, non-root.
	stages := regexp.MustCompile(`(?m)^FROM .*$`).FindAll(df, -1)
	if last := string(stages[len(stages)-1]); !strings.HasPrefix(last, "FROM gcr.io/distroless/static") || !strings.Contains(last, "nonroot") {
		t.Errorf("Dockerfile: the last stage is %q, want a distroless static nonroot image", last)
	}
	if tail := df[bytes.LastIndex(df, []byte("\nFROM ")):]; !bytes.Contains(tail, []byte("\nUSER 65532:65532\n")) {
		t.Error("Dockerfile: the runtime stage does not run as USER 65532:65532")
	}

	if testing.Short() {
		t.Skip("the rest builds the binary: CI runs it, -short does not")
	}
	bin := buildWorker(t)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("reprocessor version: %v\n%s", err, out)
	}
	want := "reprocessor " + stampVersion + " (revision " + stampRevision + ", " + runtime.Version() + ")"
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("reprocessor version printed %q, want %q", got, want)
	}

	// Static: no interpreter, no shared libraries, as distroless/static requires.
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a dynamic interpreter: it would not run on distroless/static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
}

// composeFile holds the fields of compose.yaml this kit uses; decoding it strictly catches
// a misspelt or misplaced key.
type composeFile struct {
	Name     string                    `json:"name"`
	Services map[string]composeService `json:"services"`
	Volumes  map[string]*struct{}      `json:"volumes"`
}

type composeService struct {
	Image string `json:"image"`
	Build *struct {
		Context    string            `json:"context"`
		Dockerfile string            `json:"dockerfile"`
		Target     string            `json:"target"`
		Args       map[string]string `json:"args"`
	} `json:"build"`
	DependsOn   []string          `json:"depends_on"`
	Entrypoint  []string          `json:"entrypoint"`
	Command     []string          `json:"command"`
	Environment map[string]string `json:"environment"`
	Ports       []string          `json:"ports"`
	Volumes     []string          `json:"volumes"`
}

func TestComposeFile(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, want := range []string{"nats", "worker", "producer", "prometheus", "grafana"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("compose.yaml: no service %s", want)
		}
	}
	pinned := regexp.MustCompile(`^[a-z0-9./_-]+:[A-Za-z0-9][A-Za-z0-9._-]*$`)
	for name, s := range c.Services {
		if s.Image == "" {
			t.Errorf("service %s: no image", name)
		} else if !pinned.MatchString(s.Image) || strings.HasSuffix(s.Image, ":latest") {
			t.Errorf("service %s: image %q is not pinned by tag", name, s.Image)
		}
		for _, d := range s.DependsOn {
			if _, ok := c.Services[d]; !ok {
				t.Errorf("service %s depends on unknown service %s", name, d)
			}
		}
		if s.Build != nil {
			ctx := filepath.Join(".", s.Build.Context)
			if _, err := os.Stat(filepath.Join(ctx, s.Build.Dockerfile)); err != nil {
				t.Errorf("service %s: build: %v", name, err)
			}
			df, _ := os.ReadFile(filepath.Join(ctx, s.Build.Dockerfile))
			if s.Build.Target != "" && !bytes.Contains(df, []byte(" AS "+s.Build.Target+"\n")) {
				t.Errorf("service %s: the Dockerfile has no stage %s", name, s.Build.Target)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
				if _, ok := c.Volumes[src]; !ok {
					t.Errorf("service %s mounts undeclared volume %s", name, src)
				}
				continue
			}
			if _, err := os.Stat(src); err != nil {
				t.Errorf("service %s mounts a missing file: %v", name, err)
			}
		}
	}
	// Prometheus loads the rules from where the compose file mounts them.
	prom, err := os.ReadFile("compose/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var pc struct {
		RuleFiles []string `json:"rule_files"`
	}
	if err := yaml.Unmarshal(prom, &pc); err != nil {
		t.Fatal(err)
	}
	mounts := strings.Join(c.Services["prometheus"].Volumes, "\n")
	for _, rf := range pc.RuleFiles {
		if !strings.Contains(mounts, "./prometheus/alerts.yml:"+rf+":ro") {
			t.Errorf("compose/prometheus.yml loads %s, which compose.yaml does not mount from prometheus/alerts.yml", rf)
		}
	}
	// The worker's settings are settings the worker knows.
	known := knownSettings(t)
	for k := range c.Services["worker"].Environment {
		if !known[k] {
			t.Errorf("compose.yaml: worker setting %s is not one of `reprocessor help`", k)
		}
	}
}

// knownSettings returns the environment variables that `reprocessor help` lists.
func knownSettings(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(buildWorker(t), "help").CombinedOutput()
	if err != nil {
		t.Fatalf("reprocessor help: %v\n%s", err, out)
	}
	known := make(map[string]bool)
	for _, m := range regexp.MustCompile(`(?m)^\S.*?\s((?:NATS|AZURE|REPROCESSOR)_[A-Z_]+)\s`).FindAllSubmatch(out, -1) {
		known[string(m[1])] = true
	}
	if !known["REPROCESSOR_CONCURRENCY"] || !known["NATS_URL"] {
		t.Fatalf("could not read the settings from reprocessor help:\n%s", out)
	}
	return known
}

// freePort returns a loopback address with a port free at the time of the call.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProcess starts cmd and kills it at the end of the test; its output goes to a file
// in the test's temporary directory, shown if the test fails.
func startProcess(t *testing.T, name string, cmd *exec.Cmd) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		err := cmd.Wait()
		logFile.Close()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Errorf("%s: %v", name, err)
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			if len(out) > 4000 {
				out = out[len(out)-4000:]
			}
			t.Logf("%s output (tail):\n%s", name, out)
		}
	})
}

// poll calls f until it returns nil or ctx ends, and returns f's last error.
func poll(ctx context.Context, every time.Duration, f func() error) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}

func debianPackage(tool string) string {
	if tool == "promtool" {
		return "prometheus"
	}
	return tool
}

// TestImageBuildsAndStarts builds the OCI image with buildah, without a daemon and without
// pulling anything, unpacks it with umoci and runs /reprocessor version inside it as user
// 65532 (deploy/image-check.sh): the image that ships is one that was built and started.
func TestImageBuildsAndStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image: CI runs it, -short does not")
	}
	requireTool(t, "buildah")
	requireTool(t, "umoci")
	if os.Geteuid() != 0 {
		t.Skip("buildah from scratch and chroot need root here")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "image-check.sh", out)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("image-check.sh: %v\n%s", err, b)
	}
	if !strings.Contains(string(b), "as 65532 in the unpacked image: reprocessor ") {
		t.Errorf("image-check.sh did not run the binary:\n%s", b)
	}
	// Its configuration: user 65532, entrypoint /reprocessor, command run, port 9464.
	cfg, err := os.ReadFile(filepath.Join(out, "bundle", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Process struct {
			User struct {
				UID, GID int
			} `json:"user"`
			Args []string `json:"args"`
		} `json:"process"`
	}
	if err := json.Unmarshal(cfg, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Process.User.UID != 65532 || spec.Process.User.GID != 65532 || strings.Join(spec.Process.Args, " ") != "/reprocessor run" {
		t.Errorf("the image runs %v as %d:%d, want /reprocessor run as 65532:65532", spec.Process.Args, spec.Process.User.UID, spec.Process.User.GID)
	}
}

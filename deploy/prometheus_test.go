package deploy_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/reprocessor/reprocessor/metrics"
)

var update = flag.Bool("update", false, "rewrite kubernetes/base/prometheusrule.yaml from prometheus/alerts.yml")

// externalMetrics come from other exporters than the worker. Everything else the dashboard
// and the rules use must be exported by the worker, and every dashboard query must return
// data from a running demo.
var externalMetrics = map[string]string{
	"up": "Prometheus itself, one series per scrape target",
}

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	data, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(data, &rf); err != nil {
		t.Fatalf("prometheus/alerts.yml: %v", err)
	}
	return rf
}

func TestPromtoolCheckRules(t *testing.T) {
	t.Parallel()
	promtool := requireTool(t, "promtool")
	out, err := exec.Command(promtool, "check", "rules", "prometheus/alerts.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

func TestPromtoolTestRules(t *testing.T) {
	t.Parallel()
	promtool := requireTool(t, "promtool")
	out, err := exec.Command(promtool, "test", "rules", "prometheus/alerts_test.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	// Each alert has a case where it fires and one where it stays quiet.
	data, err := os.ReadFile("prometheus/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string            `json:"alertname"`
				ExpAlerts []json.RawMessage `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(data, &tf); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && (!fires[r.Alert] || !quiet[r.Alert]) {
				t.Errorf("alerts_test.yml: %s needs a firing case (%v) and a quiet case (%v)", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
			if r.Alert != "" && (r.Annotations["summary"] == "" || r.Annotations["runbook"] == "" || r.Labels["severity"] == "") {
				t.Errorf("alert %s needs a severity label and summary and runbook annotations", r.Alert)
			}
		}
	}
}

// prometheusRuleHeader precedes the groups in kubernetes/base/prometheusrule.yaml.
const prometheusRuleHeader = `# The alert rules of deploy/prometheus/alerts.yml for the Prometheus Operator. Keep the two
# equal: TestPrometheusRuleMatchesAlerts in deploy/prometheus_test.go compares them, and
# ` + "`go test ./deploy -run TestPrometheusRuleMatchesAlerts -update`" + ` rewrites this file.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: reprocessor
spec:
`

func TestPrometheusRuleMatchesAlerts(t *testing.T) {
	const path = "kubernetes/base/prometheusrule.yaml"
	if *update {
		src, err := os.ReadFile("prometheus/alerts.yml")
		if err != nil {
			t.Fatal(err)
		}
		_, groups, ok := strings.Cut(string(src), "\ngroups:")
		if !ok {
			t.Fatal("prometheus/alerts.yml: no groups")
		}
		var b strings.Builder
		b.WriteString(prometheusRuleHeader)
		for _, line := range strings.Split("groups:"+strings.TrimRight(groups, "\n"), "\n") {
			if line != "" {
				b.WriteString("  ")
			}
			b.WriteString(line + "\n")
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		Spec ruleFile `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &pr); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if want := readRules(t); !reflect.DeepEqual(pr.Spec, want) {
		t.Errorf("%s differs from prometheus/alerts.yml; run go test ./deploy -run TestPrometheusRuleMatchesAlerts -update", path)
	}
}

// dashboard is the part of the Grafana dashboard the tests read.
type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title   string  `json:"title"`
	Type    string  `json:"type"`
	Panels  []panel `json:"panels"` // a collapsed row's
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

// query is one PromQL expression of the dashboard or the rules.
type query struct {
	name string // "panel title/refId", "variable instance" or "alert Name"
	expr string
}

func readDashboard(t *testing.T) (queries []query, variables map[string]string) {
	t.Helper()
	data, err := os.ReadFile("grafana/reprocessor.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("grafana/reprocessor.json: %v", err)
	}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
				}
				queries = append(queries, query{p.Title + "/" + tg.RefID, tg.Expr})
			}
		}
	}
	walk(d.Panels)
	variables = make(map[string]string)
	for _, v := range d.Templating.List {
		variables[v.Name] = v.Type
		if v.Type == "query" {
			// label_values(metric, label) queries a metric too.
			if m := regexp.MustCompile(`^label_values\(([^,]+),`).FindStringSubmatch(v.Definition); m != nil {
				queries = append(queries, query{"variable " + v.Name, m[1]})
			} else {
				t.Errorf("variable %s: unexpected definition %q", v.Name, v.Definition)
			}
		}
	}
	if len(queries) < 20 {
		t.Fatalf("the dashboard has only %d queries", len(queries))
	}
	return queries, variables
}

func alertQueries(t *testing.T) []query {
	var qs []query
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			qs = append(qs, query{"alert " + r.Alert + r.Record, r.Expr})
		}
	}
	return qs
}

// substitute replaces the Grafana variables of a dashboard query by the values an operator
// would see with every instance selected.
func substitute(t *testing.T, expr string) string {
	t.Helper()
	r := strings.NewReplacer(
		"$__rate_interval", "10s",
		"${instance}", ".+", "$instance", ".+", "${job}", ".+", "$job", ".+",
	)
	out := r.Replace(expr)
	if strings.Contains(out, "$") {
		t.Errorf("query %q uses a variable the test does not know", expr)
	}
	return out
}

var (
	// PromQL pieces that hold no metric name.
	promqlStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promqlMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promqlRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promqlModifiers = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promqlKeywords  = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"inf": true, "nan": true, "Inf": true, "NaN": true}
)

// metricNames returns the metric names a PromQL expression selects.
func metricNames(expr string) []string {
	s := promqlStrings.ReplaceAllString(expr, `""`)
	s = promqlMatchers.ReplaceAllString(s, " ")
	s = promqlRanges.ReplaceAllString(s, " ")
	s = promqlModifiers.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promqlIdent.FindAllStringIndex(s, -1) {
		if loc[0] > 0 && strings.ContainsRune("0123456789.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:", rune(s[loc[0]-1])) {
			continue // inside a number such as 1e3 or a duration such as 5m
		}
		tok := s[loc[0]:loc[1]]
		if strings.HasPrefix(strings.TrimSpace(s[loc[1]:]), "(") || promqlKeywords[tok] {
			continue // a function or aggregation, or a keyword
		}
		names = append(names, tok)
	}
	return names
}

func TestMetricNamesParser(t *testing.T) {
	t.Parallel()
	got := metricNames(`histogram_quantile(0.9, sum by (le, operation) (rate(a_bucket{x=~"$i", y="by (z)"}[5m]))) > 0 and on (job) max without (i) (b + c_total offset 5m) or vector(0)`)
	if want := []string{"a_bucket", "b", "c_total"}; !slices.Equal(got, want) {
		t.Errorf("metricNames = %q, want %q", got, want)
	}
}

// exportedNames returns every sample name the worker's metrics can expose, histograms with
// their _bucket, _sum and _count series, whether or not a series exists yet.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	rec := &recordingRegisterer{Registerer: prometheus.NewRegistry()}
	metrics.New(rec, metrics.BuildInfo{})
	metrics.NewDrift(rec) // the drift scanner's (reprocessor drift --every)
	if err := metrics.RegisterReadiness(rec, nil); err != nil {
		t.Fatal(err)
	}
	names := make(map[string]bool)
	descName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for _, c := range rec.collectors {
		descs := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(descs); close(descs) }()
		for d := range descs {
			m := descName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			// The project exports no summaries; a plain Summary would also match
			// prometheus.Histogram (both only Observe), so none is told apart here.
			switch c.(type) {
			case *prometheus.HistogramVec, prometheus.Histogram:
				names[m[1]+"_bucket"], names[m[1]+"_sum"], names[m[1]+"_count"] = true, true, true
			default:
				names[m[1]] = true
			}
		}
	}
	if !names["reprocessor_build_info"] || !names["reprocessor_graph_request_duration_seconds_bucket"] || !names["reprocessor_ready"] {
		t.Fatalf("exported names look wrong: %v", names)
	}
	return names
}

// recordingRegisterer records the collectors registered through it.
type recordingRegisterer struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registerer.Register(c)
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func TestEveryMetricNameIsExported(t *testing.T) {
	t.Parallel()
	exported := exportedNames(t)
	queries, _ := readDashboard(t)
	queries = append(queries, alertQueries(t)...)
	used := make(map[string]bool)
	for _, q := range queries {
		names := metricNames(q.expr)
		if len(names) == 0 && !strings.Contains(q.expr, "vector(") {
			t.Errorf("%s: no metric name found in %q", q.name, q.expr)
		}
		for _, n := range names {
			used[n] = true
			switch {
			case exported[n]:
			case externalMetrics[n] != "":
			default:
				t.Errorf("%s uses %s, which the worker does not export (nor is it listed as external)", q.name, n)
			}
		}
	}
	for n := range externalMetrics {
		if !used[n] {
			t.Errorf("externalMetrics lists %s, which nothing uses", n)
		}
	}
}

// promClient queries a Prometheus server's HTTP API.
type promClient struct {
	base string
	http *http.Client
}

type promResponse struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	} `json:"data"`
}

// query evaluates expr at the current time and returns its result.
func (p promClient) query(ctx context.Context, expr string) (promResponse, error) {
	var r promResponse
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/api/v1/query?"+url.Values{"query": {expr}}.Encode(), nil)
	if err != nil {
		return r, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
	}
	if r.Status != "success" {
		return r, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	return r, nil
}

// scalar evaluates expr and returns the value of its only sample.
func (p promClient) scalar(ctx context.Context, expr string) (float64, error) {
	r, err := p.query(ctx, expr)
	if err != nil {
		return 0, err
	}
	if len(r.Data.Result) != 1 {
		return 0, fmt.Errorf("%s: %d samples", expr, len(r.Data.Result))
	}
	var s struct {
		Value [2]any `json:"value"`
	}
	if err := json.Unmarshal(r.Data.Result[0], &s); err != nil {
		return 0, err
	}
	var v float64
	_, err = fmt.Sscan(fmt.Sprint(s.Value[1]), &v)
	return v, err
}

// TestDashboardAndAlertsOnLiveWorker runs the worker's demo, scrapes it with a real
// Prometheus that loads the alert rules, and evaluates every dashboard query and alert
// expression through the HTTP API.
func TestDashboardAndAlertsOnLiveWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker and Prometheus's rule tests: CI runs it, -short does not")
	}
	t.Parallel()
	promBin := requireTool(t, "prometheus")
	worker := buildWorker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}

	// The worker: demo traffic, embedded NATS, simulated Graph, metrics on loopback.
	workerAddr := freePort(t)
	w := exec.Command(worker, "demo", "--per-second", "50")
	w.Env = append(os.Environ(), "REPROCESSOR_HTTP_ADDR="+workerAddr, "TMPDIR="+t.TempDir())
	startProcess(t, "reprocessor demo", w)
	err := poll(ctx, 100*time.Millisecond, func() error {
		resp, err := client.Get("http://" + workerAddr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET /metrics: %s", resp.Status)
		}
		return err
	})
	if err != nil {
		t.Fatalf("the worker's metrics did not come up: %v", err)
	}

	// Prometheus, scraping every second and evaluating the rules.
	dir := t.TempDir()
	rules, err := filepath.Abs("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: reprocessor
    static_configs:
      - targets: [%q]
`, rules, workerAddr)
	configPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := freePort(t)
	startProcess(t, "prometheus", exec.Command(promBin,
		"--config.file="+configPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn",
	))
	prom := promClient{base: "http://" + promAddr, http: client}

	// Enough scrapes for a 10s rate and for the rules to have been evaluated.
	err = poll(ctx, 250*time.Millisecond, func() error {
		n, err := prom.scalar(ctx, `count_over_time(up{job="reprocessor"}[1m])`)
		if err != nil {
			return err
		}
		if n < 8 {
			return fmt.Errorf("%v scrapes so far", n)
		}
		if up, err := prom.scalar(ctx, `min_over_time(up{job="reprocessor"}[1m])`); err != nil || up != 1 {
			return fmt.Errorf("the worker is not up in every scrape (%v, %v)", up, err)
		}
		if ready, err := prom.scalar(ctx, `reprocessor_ready{job="reprocessor"}`); err != nil || ready != 1 {
			return fmt.Errorf("the worker is not ready (%v, %v)", ready, err)
		}
		completed, err := prom.scalar(ctx, `sum(increase(reprocessor_messages_completed_total{outcome="accepted"}[10s]))`)
		if err == nil && completed == 0 {
			err = fmt.Errorf("nothing accepted yet")
		}
		return err
	})
	if err != nil {
		t.Fatalf("Prometheus did not scrape the worker: %v", err)
	}

	queries, _ := readDashboard(t)
	for _, q := range queries {
		r, err := prom.query(ctx, substitute(t, q.expr))
		if err != nil {
			t.Errorf("dashboard %s: %q: %v", q.name, q.expr, err)
			continue
		}
		if len(r.Data.Result) == 0 && !strings.Contains(q.expr, "reprocessor_drift_") {
			// The drift row shows the scheduled scanner, which the demo does not run.
			t.Errorf("dashboard %s: %q returned no data from a running demo", q.name, q.expr)
		}
	}
	for _, q := range alertQueries(t) {
		if _, err := prom.query(ctx, q.expr); err != nil {
			t.Errorf("%s: %q: %v", q.name, q.expr, err)
		}
	}

	// Prometheus loaded every rule and evaluated each without error.
	var rulesResp struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	resp, err := client.Get(prom.base + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&rulesResp); err != nil {
		t.Fatal(err)
	}
	loaded := 0
	for _, g := range rulesResp.Data.Groups {
		for _, r := range g.Rules {
			loaded++
			if r.Health == "err" {
				t.Errorf("rule %s: %s", r.Name, r.LastError)
			}
		}
	}
	if want := len(alertQueries(t)); loaded != want {
		t.Errorf("Prometheus loaded %d rules, want %d", loaded, want)
	}
}

// TestDashboardLinterRules holds the dashboard to the rules of Grafana's dashboard linter
// (grafana/dashboard-linter): a datasource variable, job and instance variables that are
// Prometheus label_values queries with "All" meaning ".+", every target selecting
// job=~"$job" and instance=~"$instance", and rates over $__rate_interval.
func TestDashboardLinterRules(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("grafana/reprocessor.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Query      any    `json:"query"`
				Definition string `json:"definition"`
				Datasource struct {
					UID string `json:"uid"`
				} `json:"datasource"`
				Multi      bool   `json:"multi"`
				IncludeAll bool   `json:"includeAll"`
				AllValue   string `json:"allValue"`
				Refresh    int    `json:"refresh"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, v := range d.Templating.List {
		seen[v.Name] = true
		switch v.Name {
		case "datasource":
			if v.Type != "datasource" {
				t.Errorf("variable datasource is of type %q, want datasource", v.Type)
			}
		case "job", "instance":
			switch {
			case v.Type != "query" || v.Datasource.UID != "${datasource}":
				t.Errorf("variable %s: want a query on ${datasource}", v.Name)
			case !strings.HasPrefix(v.Definition, "label_values(") || !strings.HasSuffix(v.Definition, ", "+v.Name+")"):
				t.Errorf("variable %s: definition %q is not label_values(..., %s)", v.Name, v.Definition, v.Name)
			case !v.Multi || !v.IncludeAll || v.AllValue != ".+":
				t.Errorf("variable %s: want multi, includeAll and allValue \".+\" (got %v %v %q)", v.Name, v.Multi, v.IncludeAll, v.AllValue)
			case v.Refresh != 2:
				t.Errorf("variable %s: refresh %d, want 2 (on time range change)", v.Name, v.Refresh)
			}
		}
	}
	for _, name := range []string{"datasource", "job", "instance"} {
		if !seen[name] {
			t.Errorf("the dashboard has no %s variable", name)
		}
	}
	queries, _ := readDashboard(t)
	selector := regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?`)
	for _, q := range queries {
		if strings.HasPrefix(q.name, "variable ") {
			continue
		}
		for _, name := range metricNames(q.expr) {
			for _, m := range selector.FindAllStringSubmatch(q.expr, -1) {
				if m[1] != name {
					continue
				}
				if !strings.Contains(m[2], `job=~"$job"`) || !strings.Contains(m[2], `instance=~"$instance"`) {
					t.Errorf("%s: %s%s lacks job=~\"$job\" or instance=~\"$instance\"", q.name, m[1], m[2])
				}
			}
		}
		if regexp.MustCompile(`\b(rate|increase|irate|deriv)\([^)]*\[[0-9]`).MatchString(q.expr) {
			t.Errorf("%s: a range of fixed length; use $__rate_interval", q.name)
		}
	}
}

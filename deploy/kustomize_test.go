package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// The custom resources have no light Go module (the Prometheus Operator's API module needs
// controller-runtime; KEDA's is not served), so these are minimal strict structs of the
// fields this kit uses, named as in the CRDs (monitoring.coreos.com/v1, keda.sh/v1alpha1).

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path,omitempty"`
			Interval string `json:"interval,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// podMonitor is the part of a monitoring.coreos.com/v1 PodMonitor the kit uses.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port     string `json:"port"`
			Interval string `json:"interval,omitempty"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ruleFile `json:"spec"`
}

type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion,omitempty"`
			Kind       string `json:"kind,omitempty"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
		PollingInterval *int32 `json:"pollingInterval,omitempty"`
		CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig *struct {
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
			} `json:"horizontalPodAutoscalerConfig,omitempty"`
		} `json:"advanced,omitempty"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// manifests is one kustomize build, each object decoded into its API type.
type manifests struct {
	namespaces      []corev1.Namespace
	serviceAccounts []corev1.ServiceAccount
	configMaps      []corev1.ConfigMap
	services        []corev1.Service
	deployments     []appsv1.Deployment
	pdbs            []policyv1.PodDisruptionBudget
	netpols         []networkingv1.NetworkPolicy
	serviceMonitors []serviceMonitor
	podMonitors     []podMonitor
	prometheusRules []prometheusRule
	scaledObjects   []scaledObject
}

// decodeStrict decodes JSON into v, failing on a field v does not have.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func add[T any](t *testing.T, list *[]T, data []byte, id string) {
	t.Helper()
	var v T
	if err := decodeStrict(data, &v); err != nil {
		t.Errorf("%s does not decode strictly: %v", id, err)
		return
	}
	*list = append(*list, v)
}

func build(t *testing.T, dir string) manifests {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var m manifests
	for _, r := range rm.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		id := r.GetGvk().String() + " " + r.GetName()
		switch gvk := r.GetGvk(); gvk.ApiVersion() + "/" + gvk.Kind {
		case "v1/Namespace":
			add(t, &m.namespaces, data, id)
		case "v1/ServiceAccount":
			add(t, &m.serviceAccounts, data, id)
		case "v1/ConfigMap":
			add(t, &m.configMaps, data, id)
		case "v1/Service":
			add(t, &m.services, data, id)
		case "apps/v1/Deployment":
			add(t, &m.deployments, data, id)
		case "networking.k8s.io/v1/NetworkPolicy":
			add(t, &m.netpols, data, id)
		case "policy/v1/PodDisruptionBudget":
			add(t, &m.pdbs, data, id)
		case "monitoring.coreos.com/v1/ServiceMonitor":
			add(t, &m.serviceMonitors, data, id)
		case "monitoring.coreos.com/v1/PodMonitor":
			add(t, &m.podMonitors, data, id)
		case "monitoring.coreos.com/v1/PrometheusRule":
			add(t, &m.prometheusRules, data, id)
		case "keda.sh/v1alpha1/ScaledObject":
			add(t, &m.scaledObjects, data, id)
		default:
			t.Errorf("%s: no API type to check it against", id)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	workers := 0
	for _, d := range m.deployments {
		if d.Name != "reprocessor-drift" {
			workers++
		}
	}
	if workers != 1 || len(m.configMaps) != 1 || len(m.services) != 1 || len(m.pdbs) != 1 ||
		len(m.serviceMonitors) != 1 || len(m.prometheusRules) != 1 || len(m.serviceAccounts) != 1 {
		t.Fatalf("%s: want one each of Deployment, ConfigMap, Service, PodDisruptionBudget, ServiceMonitor, PrometheusRule, ServiceAccount", dir)
	}
	return m
}

// checkBase checks what every variant must keep from the base.
func checkBase(t *testing.T, m manifests) {
	t.Helper()
	d := m.deployments[0]
	pod := d.Spec.Template
	if sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector); err != nil || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("the Deployment's selector does not match its pods (%v)", err)
	}
	if pod.Spec.ServiceAccountName != m.serviceAccounts[0].Name {
		t.Errorf("pods run as %q, the ServiceAccount is %q", pod.Spec.ServiceAccountName, m.serviceAccounts[0].Name)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Error("the liveness probe must GET /healthz")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("the readiness probe must GET /readyz")
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("the container must be non-root, with a read-only root filesystem and no privilege escalation")
	}
	if psc := pod.Spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("the pod must run as non-root")
	}

	// The configuration is one the worker accepts, and the grace period outlasts its shutdown.
	cm := m.configMaps[0]
	var fromConfigMap bool
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil && ef.ConfigMapRef.Name == cm.Name {
			fromConfigMap = true
		}
	}
	if !fromConfigMap {
		t.Errorf("the container does not read the ConfigMap %s", cm.Name)
	}
	known := knownSettings(t)
	env := []string{"PATH=/usr/bin:/bin"}
	for k, v := range cm.Data {
		if !known[k] {
			t.Errorf("ConfigMap key %s is not a setting of `reprocessor help`", k)
		}
		if strings.Contains(k, "SECRET") || strings.Contains(k, "PASSWORD") || strings.Contains(k, "TOKEN") {
			t.Errorf("ConfigMap key %s belongs in a Secret", k)
		}
		env = append(env, k+"="+v)
	}
	cmd := exec.Command(buildWorker(t), "check-config")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("reprocessor check-config rejects the ConfigMap: %v\n%s", err, out)
	}
	shutdown, err := time.ParseDuration(cm.Data["REPROCESSOR_SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Errorf("REPROCESSOR_SHUTDOWN_TIMEOUT: %v", err)
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= shutdown {
		t.Errorf("terminationGracePeriodSeconds %v must be above REPROCESSOR_SHUTDOWN_TIMEOUT %v", g, shutdown)
	}

	// The PDB, the Service and the ServiceMonitor find the pods.
	if sel, err := metav1.LabelSelectorAsSelector(m.pdbs[0].Spec.Selector); err != nil || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("the PodDisruptionBudget's selector does not match the pods (%v)", err)
	}
	svc := m.services[0]
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
		t.Error("the Service's selector does not match the pods")
	}
	sm := m.serviceMonitors[0]
	if sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector); err != nil || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("the ServiceMonitor's selector does not match the Service (%v)", err)
	}
	for _, ep := range sm.Spec.Endpoints {
		found := false
		for _, p := range svc.Spec.Ports {
			found = found || p.Name == ep.Port
		}
		if !found {
			t.Errorf("the ServiceMonitor scrapes port %q, which the Service does not name", ep.Port)
		}
	}
	checkNetworkPolicy(t, m, pod.Labels)
	for _, d := range m.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			if _, ok := c.Resources.Requests["ephemeral-storage"]; !ok {
				t.Errorf("%s/%s: no ephemeral-storage request", d.Name, c.Name)
			}
			if _, ok := c.Resources.Limits["ephemeral-storage"]; !ok {
				t.Errorf("%s/%s: no ephemeral-storage limit", d.Name, c.Name)
			}
		}
	}
	if !reflect.DeepEqual(m.prometheusRules[0].Spec, readRules(t)) {
		t.Error("the PrometheusRule differs from prometheus/alerts.yml")
	}
}

func TestKustomizeBase(t *testing.T) {
	t.Parallel()
	m := build(t, "kubernetes/base")
	checkBase(t, m)
	d := m.deployments[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
	}
	var secret bool
	for _, ef := range d.Spec.Template.Spec.Containers[0].EnvFrom {
		secret = secret || ef.SecretRef != nil
	}
	if !secret {
		t.Error("the base must read the credentials from a Secret")
	}
}

func TestKustomizeWorkloadIdentity(t *testing.T) {
	t.Parallel()
	m := build(t, "kubernetes/overlays/workload-identity")
	checkBase(t, m)
	pod := m.deployments[0].Spec.Template
	if pod.Labels["azure.workload.identity/use"] != "true" {
		t.Error(`pods need the label azure.workload.identity/use: "true"`)
	}
	if m.serviceAccounts[0].Annotations["azure.workload.identity/client-id"] == "" {
		t.Error("the ServiceAccount needs the annotation azure.workload.identity/client-id")
	}
	for _, ef := range pod.Spec.Containers[0].EnvFrom {
		if ef.SecretRef != nil {
			t.Errorf("workload identity needs no Secret, the container reads %s", ef.SecretRef.Name)
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil {
			t.Errorf("workload identity needs no Secret, volume %s mounts one", v.Name)
		}
	}
}

func TestKustomizeKEDA(t *testing.T) {
	t.Parallel()
	m := build(t, "kubernetes/overlays/keda")
	checkBase(t, m)
	d := m.deployments[0]
	if d.Spec.Replicas != nil {
		t.Error("with KEDA the Deployment must leave replicas to the autoscaler")
	}
	if len(m.scaledObjects) != 1 {
		t.Fatalf("want one ScaledObject, got %d", len(m.scaledObjects))
	}
	so := m.scaledObjects[0].Spec
	if so.ScaleTargetRef.Name != d.Name || so.ScaleTargetRef.Kind != "Deployment" {
		t.Errorf("the ScaledObject scales %s %s, not the Deployment %s", so.ScaleTargetRef.Kind, so.ScaleTargetRef.Name, d.Name)
	}
	if so.MinReplicaCount == nil || so.MaxReplicaCount == nil || *so.MinReplicaCount < 2 || *so.MaxReplicaCount < *so.MinReplicaCount {
		t.Errorf("replica bounds %v..%v: keep at least two, the PodDisruptionBudget's minAvailable plus one", so.MinReplicaCount, so.MaxReplicaCount)
	}
	if len(so.Triggers) != 1 || so.Triggers[0].Type != "nats-jetstream" {
		t.Fatalf("want one nats-jetstream trigger, got %+v", so.Triggers)
	}
	md := so.Triggers[0].Metadata
	// The stream and the consumer of DESIGN section 2.
	if md["stream"] != "REPROCESS_REQUESTS" || md["consumer"] != "reprocessor" || md["natsServerMonitoringEndpoint"] == "" || md["lagThreshold"] == "" {
		t.Errorf("nats-jetstream trigger metadata %v", md)
	}
}

func TestKustomizeDriftScanner(t *testing.T) {
	t.Parallel()
	m := build(t, "kubernetes/overlays/drift-scanner")
	var scanner *appsv1.Deployment
	for i := range m.deployments {
		if m.deployments[i].Name == "reprocessor-drift" {
			scanner = &m.deployments[i]
		}
	}
	if scanner == nil {
		t.Fatalf("no Deployment reprocessor-drift among %d", len(m.deployments))
	}
	if scanner.Spec.Replicas == nil || *scanner.Spec.Replicas != 1 || scanner.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("the scanner must run one replica, recreated: replicas %v, strategy %s", scanner.Spec.Replicas, scanner.Spec.Strategy.Type)
	}
	args := strings.Join(scanner.Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.HasPrefix(args, "drift --every ") {
		t.Errorf("scanner args %q: want drift --every", args)
	}
	cmd := exec.Command(buildWorker(t), "drift", "--help")
	if out, _ := cmd.CombinedOutput(); !strings.Contains(string(out), "-every") {
		t.Errorf("reprocessor drift --help does not name --every:\n%s", out)
	}
	sel := labels.Set(scanner.Spec.Template.Labels)
	checkNetworkPolicy(t, m, scanner.Spec.Template.Labels)
	if len(m.podMonitors) != 1 {
		t.Fatalf("want a PodMonitor for the scanner, got %d", len(m.podMonitors))
	}
	if ps, err := metav1.LabelSelectorAsSelector(&m.podMonitors[0].Spec.Selector); err != nil || !ps.Matches(sel) {
		t.Errorf("the PodMonitor does not select the scanner's pods (%v)", err)
	}
	for _, d := range m.deployments {
		if d.Name != scanner.Name && labels.SelectorFromSet(d.Spec.Selector.MatchLabels).Matches(sel) {
			t.Errorf("Deployment %s's selector matches the scanner's pods", d.Name)
		}
	}
}

// checkNetworkPolicy: the worker's pods are selected; ingress reaches the metrics port
// only; egress reaches NATS (4222), HTTPS (443: Graph and the authority) and DNS.
func checkNetworkPolicy(t *testing.T, m manifests, pod map[string]string) {
	t.Helper()
	var np *networkingv1.NetworkPolicySpec
	for i := range m.netpols {
		if sel, err := metav1.LabelSelectorAsSelector(&m.netpols[i].Spec.PodSelector); err == nil && sel.Matches(labels.Set(pod)) {
			np = &m.netpols[i].Spec
		}
	}
	if np == nil {
		t.Fatalf("no NetworkPolicy selects the pods %v", pod)
	}
	if len(np.Ingress) != 1 || len(np.Ingress[0].Ports) != 1 || np.Ingress[0].Ports[0].Port.String() != "metrics" {
		t.Errorf("ingress %+v: want the metrics port alone", np.Ingress)
	}
	egress := map[string]bool{}
	for _, r := range np.Egress {
		for _, p := range r.Ports {
			egress[p.Port.String()+"/"+string(*p.Protocol)] = true
		}
	}
	for _, want := range []string{"4222/TCP", "443/TCP", "53/UDP", "53/TCP"} {
		if !egress[want] {
			t.Errorf("egress lacks %s (have %v)", want, egress)
		}
	}
}

// TestOverlaysMatchSchemas validates the output of every overlay against the Kubernetes,
// KEDA and prometheus-operator schemas, offline: the JSON schemas the npm packages
// kubernetes-models, @kubernetes-models/keda and @kubernetes-models/prometheus-operator
// carry (deploy/validate; .ci/run installs them with npm ci).
func TestOverlaysMatchSchemas(t *testing.T) {
	if testing.Short() {
		t.Skip("runs node: CI runs it, -short does not")
	}
	node := requireTool(t, "node")
	if _, err := os.Stat(filepath.Join("validate", "node_modules", "kubernetes-models")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("deploy/validate/node_modules is missing; .ci/run installs it (npm ci)")
		}
		t.Skip("deploy/validate/node_modules is missing: (cd deploy/validate && npm ci)")
	}
	for _, dir := range []string{"kubernetes/base", "kubernetes/overlays/workload-identity", "kubernetes/overlays/keda", "kubernetes/overlays/drift-scanner"} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
			rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
			if err != nil {
				t.Fatalf("kustomize build %s: %v", dir, err)
			}
			var objs []json.RawMessage
			for _, r := range rm.Resources() {
				data, err := r.MarshalJSON()
				if err != nil {
					t.Fatal(err)
				}
				objs = append(objs, data)
			}
			all, _ := json.Marshal(objs)
			file := filepath.Join(t.TempDir(), "objects.json")
			if err := os.WriteFile(file, all, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(node, "validate.mjs", file)
			cmd.Dir = "validate"
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("%s does not match the schemas: %v\n%s", dir, err, out)
			}
			if n := strings.Count(string(out), "valid: "); n != len(objs) {
				t.Errorf("%d of %d objects validated:\n%s", n, len(objs), out)
			}
		})
	}
}

// kubeScore is kube-score, built once from the module proxy.
var kubeScore struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// TestKubeScore runs kube-score on every overlay's output and fails on any critical or
// warning finding. Two checks are set aside, for these reasons: container-image-pull-policy
// (the image is a pinned tag, so IfNotPresent pulls nothing stale and a node restart does
// not depend on the registry) and deployment-has-host-podantiaffinity (the worker spreads
// over hosts with topologySpreadConstraints, which kube-score does not count). It is built
// from the module proxy, so it runs offline wherever go test can download modules.
func TestKubeScore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kube-score: CI runs it, -short does not")
	}
	kubeScore.once.Do(func() {
		dir, err := os.MkdirTemp("", "kube-score-")
		if err != nil {
			kubeScore.err = err
			return
		}
		cmd := exec.Command("go", "install", "github.com/zegl/kube-score/cmd/kube-score@v1.20.0")
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
		kubeScore.out, kubeScore.err = cmd.CombinedOutput()
		kubeScore.path = filepath.Join(dir, "kube-score")
	})
	if kubeScore.err != nil {
		t.Fatalf("go install kube-score: %v\n%s", kubeScore.err, kubeScore.out)
	}
	for _, dir := range []string{"kubernetes/base", "kubernetes/overlays/workload-identity", "kubernetes/overlays/keda", "kubernetes/overlays/drift-scanner"} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
			rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
			if err != nil {
				t.Fatal(err)
			}
			y, err := rm.AsYaml()
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "manifests.yaml")
			if err := os.WriteFile(file, y, 0o644); err != nil {
				t.Fatal(err)
			}
			args := []string{"score", "--output-format", "ci", "--exit-one-on-warning",
				"--ignore-test", "container-image-pull-policy", "--ignore-test", "deployment-has-host-podantiaffinity"}
			if strings.HasSuffix(dir, "keda") {
				// KEDA's HPA (minReplicaCount 2) owns the replica count; kube-score sees no HPA
				// in the manifests, only the Deployment without replicas.
				args = append(args, "--ignore-test", "deployment-replicas")
			}
			cmd := exec.Command(kubeScore.path, append(args, file)...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				var findings []string
				for _, l := range strings.Split(string(out), "\n") {
					if strings.HasPrefix(l, "[CRITICAL]") || strings.HasPrefix(l, "[WARNING]") {
						findings = append(findings, l)
					}
				}
				t.Errorf("kube-score on %s: %v\n%s", dir, err, strings.Join(findings, "\n"))
			}
		})
	}
}

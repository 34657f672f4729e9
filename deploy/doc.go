// Package deploy holds the operations kit of the reprocessor: the container image
// (Dockerfile), the Kubernetes manifests (kubernetes/), the Grafana dashboard (grafana/),
// the Prometheus alert rules (prometheus/) and a compose file for a local look. It has no
// Go code of its own: its tests check each part with the real tools (promtool, Prometheus
// scraping a running worker, kustomize, go build) and against the worker's metrics.
package deploy

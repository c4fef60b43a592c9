package manifest_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/koffeeshop/koffeeshop/local/manifest"
)

// The repository's root and its config/, the manifests these tests check:
// `go test` runs in this package's directory.
const (
	repoRoot  = "../.."
	configDir = repoRoot + "/config"
)

// TestShippedManifests loads config/ exactly as the local runner and
// `ko apply -f config/` see it, and requires Knative's own validation to pass.
func TestShippedManifests(t *testing.T) {
	set, err := manifest.LoadDir(context.Background(), configDir)
	if err != nil {
		t.Fatalf("config/ does not validate: %v", err)
	}
	if len(set.Brokers) != 1 || set.Brokers[0].Name != "default" {
		t.Fatalf("want one Broker named default, got %d", len(set.Brokers))
	}
	functions := []string{"take-order", "prepare-beverage", "notify"}
	for _, fn := range functions {
		svc := set.Service(manifest.DefaultNamespace, fn)
		if svc == nil {
			t.Fatalf("no Service %q", fn)
		}
		img := svc.Spec.Template.Spec.Containers[0].Image
		if want := "ko://github.com/koffeeshop/koffeeshop/functions/" + fn; img != want {
			t.Errorf("Service %s image = %q, want %q", fn, img, want)
		}
	}
	if len(set.Triggers) != len(functions) {
		t.Fatalf("want %d Triggers, got %d", len(functions), len(set.Triggers))
	}
	for _, tr := range set.Triggers {
		ref := tr.Spec.Subscriber.Ref
		if ref == nil || set.Service(tr.Namespace, ref.Name) == nil {
			t.Errorf("Trigger %s does not subscribe a Service in config", tr.Name)
		}
	}
}

// TestShippedDeadLetterSink: a refused event must not vanish after the
// Broker's 202. The Broker's delivery sends it to notify's /dead-letter
// path, and no shipped Trigger opts out with a delivery of its own that
// lacks a sink (a Trigger's delivery replaces the Broker's as a whole).
func TestShippedDeadLetterSink(t *testing.T) {
	set, err := manifest.LoadDir(context.Background(), configDir)
	if err != nil {
		t.Fatalf("config/ does not validate: %v", err)
	}
	b := set.Broker(manifest.DefaultNamespace, "default")
	if b == nil || b.Spec.Delivery == nil || b.Spec.Delivery.DeadLetterSink == nil {
		t.Fatal("the Broker default has no spec.delivery.deadLetterSink")
	}
	dls := b.Spec.Delivery.DeadLetterSink
	if ref := dls.Ref; ref == nil || ref.APIVersion != "serving.knative.dev/v1" || ref.Kind != "Service" || ref.Name != "notify" {
		t.Errorf("deadLetterSink.ref = %+v, want the notify Service", dls.Ref)
	}
	if dls.URI == nil || dls.URI.String() != "/dead-letter" || dls.URI.URL().IsAbs() {
		t.Errorf("deadLetterSink.uri = %v, want the relative /dead-letter", dls.URI)
	}
	for _, tr := range set.Triggers {
		if d := tr.Spec.Delivery; d != nil && d.DeadLetterSink == nil {
			t.Errorf("Trigger %s has a delivery without a deadLetterSink: it does not inherit the Broker's", tr.Name)
		}
	}
}

func TestValidationErrors(t *testing.T) {
	const broker = `
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  annotations:
    eventing.knative.dev/broker.class: MTChannelBasedBroker
`
	// A valid Deployment, which the cases below break.
	const deployment = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {app: x}}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
        - name: c
          image: ko://example.com/c
          ports: [{name: health, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: health}}`
	if _, err := manifest.Parse(context.Background(), strings.NewReader(deployment), "deployment"); err != nil {
		t.Fatalf("the base Deployment does not validate: %v", err)
	}
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown kind", `
apiVersion: batch/v1
kind: CronJob
metadata: {name: x}
`, "unsupported kind"},
		{"unknown field in a Deployment", deployment + `
      serviceAcountName: x
`, "unknown field \"serviceAcountName\""},
		{"a Deployment whose selector misses its pods", strings.Replace(deployment, "labels: {app: x}", "labels: {app: y}", 1), "`selector` does not match template `labels`"},
		{"a probe on a port the container does not have", strings.Replace(deployment, "port: health", "port: helth", 1), "readinessProbe.httpGet.port: Not found: \"helth\""},
		{"a mount of a volume the pod does not have", deployment + `
          volumeMounts: [{name: ghost, mountPath: /x}]
`, "volumeMounts[0].name: Not found: \"ghost\""},
		{"an env var with two sources", deployment + `
          env:
            - name: X
              valueFrom:
                fieldRef: {fieldPath: metadata.namespace}
                configMapKeyRef: {name: c, key: k}
`, "must have exactly one source"},
		{"a namespace on a ClusterRole", `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: r, namespace: default}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
`, "metadata.namespace: Forbidden"},
		{"a rule without verbs", `
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: r}
rules: [{apiGroups: [""], resources: [pods]}]
`, "rules[0].verbs: Required"},
		{"a ClusterRoleBinding to a Role", `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}
subjects: [{kind: ServiceAccount, name: s, namespace: default}]
`, "roleRef.kind: Unsupported value: \"Role\""},
		{"a cluster-wide ServiceAccount subject without a namespace", `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}
subjects: [{kind: ServiceAccount, name: s}]
`, "subjects[0].namespace: Required"},
		{"a Service name that is no DNS-1035 label", `
apiVersion: v1
kind: Service
metadata: {name: 1nats}
spec: {ports: [{port: 80}]}
`, "metadata.name: Invalid value"},
		{"a Service port out of range", `
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: [{port: 80000}]}
`, "spec.ports[0].port: Invalid value"},
		{"a ConfigMap key that is not one", `
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {"max age": 1h}
`, "a valid config key"},
		{"duplicate ServiceAccount", `
apiVersion: v1
kind: ServiceAccount
metadata: {name: s}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: s, namespace: default}
`, "ServiceAccount default/s is defined twice"},
		{"unknown field is rejected", broker + `
spec:
  delivery:
    retries: 3
`, "unknown field"},
		{"broker without class", `
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
`, "broker.class"},
		{"trigger to missing broker", broker + `---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: elsewhere
  subscriber: {uri: "http://127.0.0.1:1/"}
`, `broker "elsewhere" is not defined`},
		{"trigger to missing service", broker + `---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: ghost}
`, "Service default/ghost is not defined"},
		{"bad cesql", broker + `---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: default
  filters:
    - cesql: "type = = 'x'"
  subscriber: {uri: "http://127.0.0.1:1/"}
`, "cesql"},
		{"bad backoff delay", broker + `---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: default
  delivery: {backoffDelay: "soon"}
  subscriber: {uri: "http://127.0.0.1:1/"}
`, "backoffDelay"},
		{"service without image", `
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: s}
spec:
  template:
    spec:
      containers: [{}]
`, "image"},
		{"dead-letter sink with a ref and an absolute uri", broker + `
spec:
  delivery:
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: notify}
      uri: http://example.com/dead-letter
`, "Absolute URI is not allowed"},
		{"dead-letter sink to a missing service", broker + `
spec:
  delivery:
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: ghost}
      uri: /dead-letter
`, "deadLetterSink: Service default/ghost is not defined"},
		{"duplicate trigger", broker + `---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec: {broker: default, subscriber: {uri: "http://127.0.0.1:1/"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec: {broker: default, subscriber: {uri: "http://127.0.0.1:1/"}}
`, "defined twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := manifest.Parse(context.Background(), strings.NewReader(tc.yaml), tc.name)
			if err == nil {
				t.Fatalf("want an error containing %q, got none", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestValidSetDefaultsNamespace(t *testing.T) {
	set, err := manifest.Parse(context.Background(), strings.NewReader(`
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: b
  annotations: {eventing.knative.dev/broker.class: MTChannelBasedBroker}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: b
  subscriber: {uri: "http://127.0.0.1:1/"}
`), "inline")
	if err != nil {
		t.Fatal(err)
	}
	if got := set.Triggers[0].Namespace; got != manifest.DefaultNamespace {
		t.Fatalf("namespace = %q, want %q", got, manifest.DefaultNamespace)
	}
	if set.Broker(manifest.DefaultNamespace, "b") == nil {
		t.Fatal("broker b not found")
	}
}

// TestShippedSinkBinding: every function's K_SINK is the Broker, through
// a SinkBinding as Knative sets it on a cluster (notify's order.failed and
// prepare-beverage's progress events go there), and a binding to a Broker
// that is not in config is refused.
func TestShippedSinkBinding(t *testing.T) {
	set, err := manifest.LoadDir(context.Background(), configDir)
	if err != nil {
		t.Fatalf("config/ does not validate: %v", err)
	}
	for _, svc := range set.Services {
		ns, name, ok := set.SinkFor(svc)
		if !ok || ns != manifest.DefaultNamespace || name != "default" {
			t.Errorf("Service %s: K_SINK is bound to %q/%q (%v), want the Broker default/default", svc.Name, ns, name, ok)
		}
	}
	bad := strings.Replace(mustRead(t, "sinkbinding.yaml"), "name: default", "name: nowhere", 1)
	dir := t.TempDir()
	for _, f := range []string{"broker.yaml", "notify.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(mustRead(t, f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "sinkbinding.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := manifest.LoadDir(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "nowhere") {
		t.Fatalf("a SinkBinding to a missing Broker: %v", err)
	}
}

func mustRead(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(configDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

package config_test

import (
	"context"
	"strings"
	"testing"

	"github.com/koffeeshop/koffeeshop/config"
)

// TestShippedManifests loads config/ exactly as the local runner and
// `ko apply -f config/` see it, and requires Knative's own validation to pass.
func TestShippedManifests(t *testing.T) {
	set, err := config.LoadDir(context.Background(), ".")
	if err != nil {
		t.Fatalf("config/ does not validate: %v", err)
	}
	if len(set.Brokers) != 1 || set.Brokers[0].Name != "default" {
		t.Fatalf("want one Broker named default, got %d", len(set.Brokers))
	}
	functions := []string{"take-order", "prepare-beverage", "notify"}
	for _, fn := range functions {
		svc := set.Service(config.DefaultNamespace, fn)
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

func TestValidationErrors(t *testing.T) {
	const broker = `
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  annotations:
    eventing.knative.dev/broker.class: MTChannelBasedBroker
`
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown kind", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
`, "unsupported kind"},
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
			_, err := config.Parse(context.Background(), strings.NewReader(tc.yaml), tc.name)
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
	set, err := config.Parse(context.Background(), strings.NewReader(`
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
	if got := set.Triggers[0].Namespace; got != config.DefaultNamespace {
		t.Fatalf("namespace = %q, want %q", got, config.DefaultNamespace)
	}
	if set.Broker(config.DefaultNamespace, "b") == nil {
		t.Fatal("broker b not found")
	}
}

package runner

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/koffeeshop/koffeeshop/local/manifest"
	"github.com/koffeeshop/koffeeshop/local/supervisor"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// TestDestinationsResolve: a subscriber or dead-letter sink is a Service in
// config (its supervisor) or a URI; the delivery concurrency follows the
// Service's containerConcurrency × max-scale unless the Trigger says.
func TestDestinationsResolve(t *testing.T) {
	set, err := manifest.Parse(context.Background(), strings.NewReader(`
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, annotations: {eventing.knative.dev/broker.class: MTChannelBasedBroker}}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn}
spec:
  template:
    metadata: {annotations: {autoscaling.knative.dev/max-scale: "3"}}
    spec: {containerConcurrency: 7, containers: [{image: ko://example.com/fn}]}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-service}
spec:
  broker: default
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}}
  delivery:
    deadLetterSink: {uri: "http://127.0.0.1:9/dead"}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-uri, annotations: {koffeeshop.dev/delivery-concurrency: "5"}}
spec:
  broker: default
  subscriber: {uri: "http://127.0.0.1:9/events"}
  delivery:
    deadLetterSink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}}
`), "inline")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan(set, Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	pool := supervisor.NewPool(supervisor.Spec{Name: "fn"}, supervisor.Scaling{}, supervisor.Options{}, slog.New(slog.DiscardHandler), nil, nil)
	r := &Runner{plan: plan, log: slog.New(slog.DiscardHandler), pools: map[types.NamespacedName]*supervisor.Pool{{Namespace: "default", Name: "fn"}: pool}}

	toSvc, toURI := plan.Triggers[0], plan.Triggers[1]
	if ep := r.endpoint(toSvc.Subscriber); ep != triggers.Endpoint(pool) {
		t.Fatalf("ref subscriber resolved to %v, want the Service's supervisor", ep)
	}
	ep := r.endpoint(*toSvc.DeadLetter)
	if u, ok := ep.(triggers.URL); !ok || u.U.String() != "http://127.0.0.1:9/dead" {
		t.Fatalf("uri dead-letter sink resolved to %v", ep)
	}
	if ep := r.endpoint(*toURI.DeadLetter); ep != triggers.Endpoint(pool) {
		t.Fatalf("ref dead-letter sink resolved to %v", ep)
	}
	if got := toSvc.Concurrency; got != 21 {
		t.Errorf("concurrency to a Service with containerConcurrency 7 and max-scale 3 = %d, want 21", got)
	}
	if got := toURI.Concurrency; got != 5 {
		t.Errorf("concurrency from the annotation = %d, want 5", got)
	}
}

package runner

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/koffeeshop/koffeeshop/local/manifest"
)

// digest is a plan in short lines, one a Broker, Service or Trigger.
type digest struct {
	board    string
	brokers  []string
	services []string
	triggers []string
}

func digestOf(p *Plan) digest {
	var d digest
	if p.Board != nil {
		d.board = p.Board.String()
	}
	for _, b := range p.Brokers {
		s := b.Stream
		d.brokers = append(d.brokers, fmt.Sprintf("%s replicas=%d storage=%s maxAge=%s dup=%s", b.Ref, s.Replicas, s.Storage, s.MaxAge, s.DuplicateWindow))
	}
	for _, s := range p.Services {
		line := fmt.Sprintf("%s bin=%s tag=%q sink=%s cc=%d drain=%s ready=%s scale=%d..%d target=%.3g tick=%s env=%v overrides=%v",
			s.Key, s.Spec.Binary, s.Spec.InstanceTag, s.Sink, s.Spec.ContainerConcurrency, s.Spec.DrainTimeout, s.Spec.ReadinessPath,
			s.Scaling.MinScale, s.Scaling.MaxScale, s.Scaling.Target, s.Scaling.Tick, s.Spec.Env, s.Overrides)
		if s.DeadLetterOnly {
			line += " dead-letter-only"
		}
		d.services = append(d.services, line)
	}
	dest := func(x Destination) string {
		if x.Service.Name == "" {
			return x.URL.String()
		}
		if x.Path != nil {
			return x.Service.String() + " at " + x.Path.String()
		}
		return x.Service.String()
	}
	for _, t := range p.Triggers {
		line := fmt.Sprintf("%s/%s on %s to %s", t.Trigger.Namespace, t.Trigger.Name, t.Broker, dest(t.Subscriber))
		if t.DeadLetter != nil {
			line += " dead-letter " + dest(*t.DeadLetter)
		}
		if t.Delivery != nil && t.Delivery.Retry != nil {
			line += fmt.Sprintf(" retry=%d", *t.Delivery.Retry)
		}
		line += fmt.Sprintf(" concurrency=%d ackWait=%s", t.Concurrency, t.AckWait)
		d.triggers = append(d.triggers, line)
	}
	return d
}

func (d digest) diff(want digest) string {
	var b strings.Builder
	if d.board != want.board {
		fmt.Fprintf(&b, "board = %q, want %q\n", d.board, want.board)
	}
	for _, part := range []struct {
		name      string
		got, want []string
	}{{"brokers", d.brokers, want.brokers}, {"services", d.services, want.services}, {"triggers", d.triggers, want.triggers}} {
		if !slices.Equal(part.got, part.want) {
			fmt.Fprintf(&b, "%s =\n\t%s\nwant\n\t%s\n", part.name, strings.Join(part.got, "\n\t"), strings.Join(part.want, "\n\t"))
		}
	}
	return b.String()
}

// TestPlanOfConfig plans the shop of config/ as make run and the runner
// tests run it.
func TestPlanOfConfig(t *testing.T) {
	set, err := manifest.LoadDir(context.Background(), filepath.Join("..", "..", "config"))
	if err != nil {
		t.Fatal(err)
	}
	const (
		stream   = "default/default replicas=1 storage=File maxAge=24h0m0s dup=2m0s"
		notify   = "default/notify bin=bin/notify tag=\"\" sink=default/default cc=100 drain=30s ready=/health/readiness scale=0..3 target=49 tick=0s env=[GOMAXPROCS=1] overrides=[]"
		prepare  = "default/prepare-beverage bin=bin/prepare-beverage tag=\"\" sink=default/default cc=10 drain=30s ready=/health/readiness scale=0..5 target=4.9 tick=0s env=[BREW_TIME=1s GOMAXPROCS=1] overrides=[]"
		take     = "default/take-order bin=bin/take-order tag=\"\" sink=default/default cc=100 drain=30s ready=/health/readiness scale=0..3 target=49 tick=0s env=[GOMAXPROCS=1] overrides=[]"
		toNotify = "default/notify on default/default to default/notify dead-letter default/notify at /dead-letter retry=5 concurrency=300 ackWait=0s"
		toPrep   = "default/prepare-beverage on default/default to default/prepare-beverage dead-letter default/notify at /dead-letter retry=5 concurrency=50 ackWait=0s"
		toTake   = "default/take-order on default/default to default/take-order dead-letter default/notify at /dead-letter retry=5 concurrency=300 ackWait=0s"
	)
	for _, tc := range []struct {
		name string
		opts Options
		want digest
	}{
		{"everything", Options{Functions: FunctionOptions{BinDir: "bin"}}, digest{
			board:    "default/default",
			brokers:  []string{stream},
			services: []string{notify, prepare, take},
			triggers: []string{toNotify, toPrep, toTake},
		}},
		{"only prepare-beverage, with its dead-letter sink", Options{Only: []string{"prepare-beverage"}, Functions: FunctionOptions{BinDir: "bin"}}, digest{
			brokers:  []string{stream},
			services: []string{notify + " dead-letter-only", prepare},
			triggers: []string{toPrep},
		}},
		{"tuned", Options{
			Name:      "b",
			NATS:      NATSOptions{Replicas: 3},
			Functions: FunctionOptions{BinDir: "/opt/bin", Env: map[string][]string{"take-order": {"GOMAXPROCS=2"}}, ScaleTick: 50 * time.Millisecond},
			Only:      []string{"take-order"},
		}, digest{
			brokers:  []string{"default/default replicas=3 storage=File maxAge=24h0m0s dup=2m0s"},
			services: []string{"default/notify bin=/opt/bin/notify tag=\"b\" sink=default/default cc=100 drain=30s ready=/health/readiness scale=0..3 target=49 tick=50ms env=[GOMAXPROCS=1] overrides=[] dead-letter-only", "default/take-order bin=/opt/bin/take-order tag=\"b\" sink=default/default cc=100 drain=30s ready=/health/readiness scale=0..3 target=49 tick=50ms env=[GOMAXPROCS=1] overrides=[GOMAXPROCS=2]"},
			triggers: []string{toTake},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPlan(set, tc.opts, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			if d := digestOf(p).diff(tc.want); d != "" {
				t.Error(d)
			}
		})
	}
}

// TestPlanInline plans small shops that config/ does not show.
func TestPlanInline(t *testing.T) {
	const brokers = `
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders, namespace: shop, annotations: {eventing.knative.dev/broker.class: KoffeeshopJetStream}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: cafe, annotations: {eventing.knative.dev/broker.class: KoffeeshopJetStream}}
`
	const fn = `
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn, namespace: %s}
spec:
  template:
    spec: {containers: [{image: %q, env: [{name: A, value: "1"}, {name: FROM, valueFrom: {configMapKeyRef: {name: settings, key: from}}}]}]}
`
	for _, tc := range []struct {
		name     string
		manifest string
		want     digest
		err      string
	}{
		{"a Broker without config, a uri subscriber, a bad annotation", brokers + fmt.Sprintf(fn, "shop", "ko://example.com/fn") + `
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: out, namespace: shop, annotations: {koffeeshop.dev/delivery-concurrency: "many", koffeeshop.dev/ack-wait: 45s}}
spec:
  broker: orders
  subscriber: {uri: "http://127.0.0.1:9/events"}
`, digest{
			board: "shop/orders",
			brokers: []string{
				"shop/orders replicas=1 storage=File maxAge=24h0m0s dup=2m0s",
				"cafe/default replicas=1 storage=File maxAge=24h0m0s dup=2m0s",
			},
			// No SinkBinding and no "default" Broker in shop: the first.
			services: []string{`shop/fn bin=fn tag="" sink=shop/orders cc=0 drain=5m0s ready= scale=0..0 target=70 tick=0s env=[A=1] overrides=[]`},
			triggers: []string{"shop/out on shop/orders to http://127.0.0.1:9/events concurrency=100 ackWait=45s"},
		}, ""},
		{"K_SINK to the namespace's default Broker", brokers + fmt.Sprintf(fn, "cafe", "ko://example.com/fn"), digest{
			board: "shop/orders",
			brokers: []string{
				"shop/orders replicas=1 storage=File maxAge=24h0m0s dup=2m0s",
				"cafe/default replicas=1 storage=File maxAge=24h0m0s dup=2m0s",
			},
			services: []string{`cafe/fn bin=fn tag="" sink=cafe/default cc=0 drain=5m0s ready= scale=0..0 target=70 tick=0s env=[A=1] overrides=[]`},
		}, ""},
		{"an image that is no ko://", brokers + fmt.Sprintf(fn, "shop", "ghcr.io/example/fn:1"), digest{}, `Service shop/fn: image "ghcr.io/example/fn:1": the local runner runs ko:// images only`},
		{"a Broker whose ConfigMap is not there", `
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders, namespace: shop, annotations: {eventing.knative.dev/broker.class: KoffeeshopJetStream}}
spec:
  config: {apiVersion: v1, kind: ConfigMap, name: stream}
`, digest{}, "Broker shop/orders: spec.config names ConfigMap shop/stream, which is not in config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := manifest.Parse(context.Background(), strings.NewReader(tc.manifest), "inline")
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewPlan(set, Options{}, slog.New(slog.DiscardHandler))
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("NewPlan = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := digestOf(p).diff(tc.want); d != "" {
				t.Error(d)
			}
		})
	}
}

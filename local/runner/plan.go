package runner

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/local/manifest"
	"github.com/koffeeshop/koffeeshop/local/supervisor"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// Plan is what a runner runs, read from the manifests and Options alone:
// the Brokers' streams, the function Services with their scaling, the
// Triggers with their subscribers and delivery. Making it touches no NATS,
// starts no process and binds no port, so that it can be checked on its
// own; New carries it out.
type Plan struct {
	// Brokers, Services and Triggers are in the manifests' order.
	Brokers  []BrokerPlan
	Services []ServicePlan
	Triggers []TriggerPlan
	// Board is the Broker the web board follows; nil without a board
	// (with Options.Only, when another runner has it).
	Board *broker.Ref
}

// BrokerPlan is a Broker and its stream: the settings of the ConfigMap
// its spec.config names, else the defaults, as the Broker class makes it
// on a cluster; Options.NATS.Replicas, when set, wins.
type BrokerPlan struct {
	Ref    broker.Ref
	Stream broker.StreamOptions
}

// ServicePlan is how a Service's instances run and scale.
type ServicePlan struct {
	Key types.NamespacedName
	// Image is the container's ko:// image, Spec.Binary the executable
	// built from it (not checked: it may not be built yet).
	Image string
	// Spec is the instances' process. Its Env is the container's own: the
	// runner adds K_SINK, its token and tracing, then Overrides.
	Spec    supervisor.Spec
	Scaling supervisor.Scaling
	// Sink is the Broker the Service's K_SINK points at, as Knative's
	// SinkBinding sets it: where it sends events that are not replies.
	Sink broker.Ref
	// Overrides is Options.Functions.Env for the Service, last in its
	// environment so that it wins.
	Overrides []string
	// DeadLetterOnly says the runner runs the Service only because a
	// Trigger it runs dead-letters to it (with Options.Only: a dead letter
	// can only go to an instance of this runner). Without a Trigger of its
	// own it stays at zero until a dead letter comes.
	DeadLetterOnly bool
}

// TriggerPlan is a Trigger's dispatcher.
type TriggerPlan struct {
	Trigger *eventingv1.Trigger
	Broker  broker.Ref
	// Delivery is the Trigger's DeliverySpec, else its Broker's (nil: no
	// retries, no dead-letter sink).
	Delivery   *eventingduckv1.DeliverySpec
	Subscriber Destination
	DeadLetter *Destination // nil: none
	// Concurrency is how many events it delivers at once.
	Concurrency int
	// AckWait is its triggers.AckWaitAnnotation (0: the dispatcher's
	// default).
	AckWait time.Duration
}

// Destination is a Knative Destination resolved against the plan: a
// Service of the plan, reached at Path relative to its instances'
// address when Path is set, or else URL.
type Destination struct {
	Service types.NamespacedName // zero for a URL
	Path    *url.URL
	URL     *url.URL
}

// NewPlan plans set for a runner with the options o. An invalid Trigger
// annotation is logged to log and ignored, as the controller does.
func NewPlan(set *manifest.Set, o Options, log *slog.Logger) (*Plan, error) {
	if len(set.Brokers) == 0 {
		return nil, errors.New("config: no Broker defined")
	}
	p := &Plan{}
	for _, b := range set.Brokers {
		bp, err := planBroker(set, b, o.NATS.Replicas)
		if err != nil {
			return nil, err
		}
		p.Brokers = append(p.Brokers, bp)
	}
	if len(o.Only) == 0 {
		p.Board = &p.Brokers[0].Ref
	}
	sinks := deadLetterServices(set, o.Only)
	for _, svc := range set.Services {
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		if !runs(o.Only, svc.Name) && !sinks[key] {
			continue
		}
		sp, err := planService(set, svc, o)
		if err != nil {
			return nil, fmt.Errorf("Service %s: %w", key, err)
		}
		sp.DeadLetterOnly = sinks[key]
		p.Services = append(p.Services, sp)
	}
	for _, t := range set.Triggers {
		if ref := t.Spec.Subscriber.Ref; len(o.Only) > 0 && (ref == nil || !runs(o.Only, ref.Name)) {
			continue
		}
		tp, err := p.planTrigger(set, t, log)
		if err != nil {
			return nil, err
		}
		p.Triggers = append(p.Triggers, tp)
	}
	return p, nil
}

func planBroker(set *manifest.Set, b *eventingv1.Broker, replicas int) (BrokerPlan, error) {
	bp := BrokerPlan{Ref: broker.Ref{Namespace: b.Namespace, Name: b.Name}, Stream: broker.DefaultStreamOptions()}
	if c := b.Spec.Config; c != nil {
		ns := c.Namespace
		if ns == "" {
			ns = b.Namespace
		}
		cm := set.ConfigMap(ns, c.Name)
		if cm == nil {
			return bp, fmt.Errorf("Broker %s: spec.config names ConfigMap %s/%s, which is not in config", bp.Ref, ns, c.Name)
		}
		var err error
		if bp.Stream, err = broker.ParseStreamOptions(cm.Data); err != nil {
			return bp, fmt.Errorf("Broker %s: ConfigMap %s/%s: %w", bp.Ref, ns, c.Name, err)
		}
	}
	if replicas > 0 {
		bp.Stream.Replicas = replicas
	}
	return bp, nil
}

// runs reports whether a runner limited to only runs the Service.
func runs(only []string, service string) bool {
	return len(only) == 0 || slices.Contains(only, service)
}

// deadLetterServices are the Services a runner limited to only runs
// because a Trigger it runs dead-letters to them.
func deadLetterServices(set *manifest.Set, only []string) map[types.NamespacedName]bool {
	out := map[types.NamespacedName]bool{}
	if len(only) == 0 {
		return out
	}
	for _, t := range set.Triggers {
		if ref := t.Spec.Subscriber.Ref; ref == nil || !runs(only, ref.Name) {
			continue
		}
		d := triggers.EffectiveDelivery(t, set.Broker(t.Namespace, manifest.TriggerBroker(t)))
		if d == nil || d.DeadLetterSink == nil || d.DeadLetterSink.Ref == nil {
			continue
		}
		if ref := d.DeadLetterSink.Ref; !runs(only, ref.Name) {
			out[refKey(ref, t.Namespace)] = true
		}
	}
	return out
}

// refKey is the object a ref names; a ref without a namespace is in ns.
func refKey(ref *duckv1.KReference, ns string) types.NamespacedName {
	if ref.Namespace != "" {
		ns = ref.Namespace
	}
	return types.NamespacedName{Namespace: ns, Name: ref.Name}
}

func planService(set *manifest.Set, svc *servingv1.Service, o Options) (ServicePlan, error) {
	tmpl := svc.Spec.Template
	c := tmpl.Spec.Containers[0]
	bin, err := binaryFor(o.Functions.BinDir, c.Image)
	if err != nil {
		return ServicePlan{}, err
	}
	sp := ServicePlan{
		Key:   types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name},
		Image: c.Image,
		Spec: supervisor.Spec{
			Namespace:   svc.Namespace,
			Name:        svc.Name,
			InstanceTag: o.Name,
			Binary:      bin,
		},
		Sink:      sinkBroker(set, svc),
		Overrides: o.Functions.Env[svc.Name],
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			sp.Spec.Env = append(sp.Spec.Env, e.Name+"="+e.Value)
		}
	}
	if cc := tmpl.Spec.ContainerConcurrency; cc != nil {
		sp.Spec.ContainerConcurrency = int(*cc)
	}
	if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "" {
		sp.Spec.ReadinessPath = p.HTTPGet.Path
	}
	if ts := tmpl.Spec.TimeoutSeconds; ts != nil {
		sp.Spec.DrainTimeout = time.Duration(*ts) * time.Second
	}
	if sp.Scaling, err = scalingFor(svc); err != nil {
		return ServicePlan{}, err
	}
	if o.Functions.ScaleTick > 0 {
		sp.Scaling.Tick = o.Functions.ScaleTick
	}
	return sp, nil
}

// binaryFor maps a ko:// image to the executable built from it.
func binaryFor(binDir, image string) (string, error) {
	const ko = "ko://"
	if !strings.HasPrefix(image, ko) {
		return "", fmt.Errorf("image %q: the local runner runs ko:// images only", image)
	}
	return filepath.Join(binDir, filepath.Base(strings.TrimPrefix(image, ko))), nil
}

// sinkBroker is the Broker a SinkBinding of set points svc's K_SINK at;
// without one, "default" in svc's namespace when there is one, else the
// first Broker.
func sinkBroker(set *manifest.Set, svc *servingv1.Service) broker.Ref {
	if ns, name, ok := set.SinkFor(svc); ok {
		return broker.Ref{Namespace: ns, Name: name}
	}
	b := set.Broker(svc.Namespace, "default")
	if b == nil {
		b = set.Brokers[0]
	}
	return broker.Ref{Namespace: b.Namespace, Name: b.Name}
}

func (p *Plan) planTrigger(set *manifest.Set, t *eventingv1.Trigger, log *slog.Logger) (TriggerPlan, error) {
	name := types.NamespacedName{Namespace: t.Namespace, Name: t.Name}
	b := set.Broker(t.Namespace, manifest.TriggerBroker(t))
	tp := TriggerPlan{
		Trigger:  t,
		Broker:   broker.Ref{Namespace: b.Namespace, Name: b.Name},
		Delivery: triggers.EffectiveDelivery(t, b),
	}
	var err error
	if tp.Subscriber, err = p.destination(t.Namespace, t.Spec.Subscriber); err != nil {
		return tp, fmt.Errorf("Trigger %s: subscriber: %w", name, err)
	}
	if d := tp.Delivery; d != nil && d.DeadLetterSink != nil {
		dls, err := p.destination(t.Namespace, *d.DeadLetterSink)
		if err != nil {
			return tp, fmt.Errorf("Trigger %s: deadLetterSink: %w", name, err)
		}
		tp.DeadLetter = &dls
	}
	tp.Concurrency = serviceConcurrency(set, t)
	if n, ok, err := triggers.AnnotatedConcurrency(t); err != nil {
		log.Warn("ignoring an invalid annotation", "trigger", t.Name, "err", err)
	} else if ok {
		tp.Concurrency = n
	}
	if tp.AckWait, _, err = triggers.AnnotatedAckWait(t); err != nil {
		log.Warn("ignoring an invalid annotation", "trigger", t.Name, "err", err)
	}
	return tp, nil
}

// destination resolves d, of an object in ns: a Service of the plan, or a
// URI.
func (p *Plan) destination(ns string, d duckv1.Destination) (Destination, error) {
	if d.Ref != nil {
		key := refKey(d.Ref, ns)
		if p.Service(key) == nil {
			return Destination{}, fmt.Errorf("Service %s is not in config", key)
		}
		dst := Destination{Service: key}
		if d.URI != nil {
			// Knative resolves a ref with a (relative) uri to the uri
			// resolved against the ref's address, e.g. notify +
			// /dead-letter.
			dst.Path = d.URI.URL()
		}
		return dst, nil
	}
	if d.URI == nil {
		return Destination{}, errors.New("neither ref nor uri is set")
	}
	return Destination{URL: d.URI.URL()}, nil
}

// Service returns the plan of the Service key, or nil.
func (p *Plan) Service(key types.NamespacedName) *ServicePlan {
	for i := range p.Services {
		if p.Services[i].Key == key {
			return &p.Services[i]
		}
	}
	return nil
}

// serviceConcurrency is how many events a Trigger without the
// triggers.ConcurrencyAnnotation delivers at once: what its Service can
// take (containerConcurrency times max-scale, at most 1000), else 100.
func serviceConcurrency(set *manifest.Set, t *eventingv1.Trigger) int {
	ref := t.Spec.Subscriber.Ref
	if ref == nil {
		return 100
	}
	svc := set.Service(t.Namespace, ref.Name)
	if svc == nil {
		return 100
	}
	cc := 100
	if c := svc.Spec.Template.Spec.ContainerConcurrency; c != nil && *c > 0 {
		cc = int(*c)
	}
	maxScale := 1
	if _, v, ok := autoscaling.MaxScaleAnnotation.Get(svc.Spec.Template.Annotations); ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			maxScale = n
		}
	}
	return min(cc*maxScale, 1000)
}

// Package fleet runs the Trigger dispatchers of a cluster: one
// triggers.Dispatcher loop for each Ready Trigger on a Broker of the
// KoffeeshopJetStream class, bound to the durable consumer the controller
// made. Loops start, restart with a new configuration and stop as the
// Triggers and their Brokers change, learned from informers on the API
// server, without a process restart. Several processes may run a fleet:
// they share each consumer, which JetStream balances between them.
package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventinglisters "knative.dev/eventing/pkg/client/listers/eventing/v1"
	"knative.dev/pkg/apis"

	"github.com/koffeeshop/koffeeshop/broker"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/triggers"
	triggerreconciler "github.com/koffeeshop/koffeeshop/triggers/reconciler"
)

// Fleet keeps one dispatcher loop per Trigger that should have one. Each
// loop has an owner goroutine, the only one that starts and stops its
// dispatchers, so a change that arrives while the previous one is still
// draining waits for it instead of racing it.
type Fleet struct {
	triggers eventinglisters.TriggerLister
	brokers  eventinglisters.BrokerLister
	js       jetstream.JetStream
	pub      broker.Publisher
	client   *http.Client
	coll     *triggers.Collector
	log      *slog.Logger
	drain    time.Duration
	tracer   trace.TracerProvider // nil: none

	// ctx ends every loop; the Fleet lives as long as it.
	ctx context.Context

	mu     sync.Mutex
	loops  map[types.NamespacedName]*loop // by Trigger
	closed bool                           // no loop starts any more
	owners sync.WaitGroup

	// observe, when set (by tests), hears of each loop's dispatchers
	// starting, stopping and stopped.
	observe func(key string, e event)
}

type event string

const (
	started  event = "started"
	stopping event = "stopping"
	stopped  event = "stopped"
	failed   event = "failed" // Run returned by itself
)

// loop is the state of one Trigger's loop, guarded by Fleet.mu except for
// kick.
type loop struct {
	key  types.NamespacedName
	want *spec // nil: stop
	kick chan struct{}
}

// spec is what a Trigger's dispatcher is made from; when it changes, the
// dispatcher is replaced.
type spec struct {
	trigger     *eventingv1.Trigger // a copy: filters and names
	broker      broker.Ref
	subscriber  *apis.URL
	deadLetter  *apis.URL // nil: none
	delivery    *eventingduckv1.DeliverySpec
	concurrency int
	ackWait     time.Duration
}

func (s *spec) equal(o *spec) bool {
	return s.trigger.UID == o.trigger.UID &&
		s.broker == o.broker &&
		s.subscriber.String() == o.subscriber.String() &&
		s.deadLetter.String() == o.deadLetter.String() &&
		s.concurrency == o.concurrency &&
		s.ackWait == o.ackWait &&
		equality.Semantic.DeepEqual(s.delivery, o.delivery) &&
		equality.Semantic.DeepEqual(s.trigger.Spec.Filter, o.trigger.Spec.Filter) &&
		equality.Semantic.DeepEqual(s.trigger.Spec.Filters, o.trigger.Spec.Filters)
}

func (s *spec) config(drain time.Duration) triggers.Config {
	cfg := triggers.Config{
		Trigger:      s.trigger,
		Broker:       s.broker,
		Delivery:     s.delivery,
		Subscriber:   triggers.URL{U: s.subscriber.URL()},
		Concurrency:  s.concurrency,
		AckWait:      s.ackWait,
		DrainTimeout: drain,
		// The controller owns the consumer: replicas never fight over
		// its config.
		Bind: true,
	}
	if s.deadLetter != nil {
		cfg.DeadLetter = triggers.URL{U: s.deadLetter.URL()}
	}
	return cfg
}

// newFleet returns a Fleet whose loops run until ctx is done. drain bounds
// how long a stopping dispatcher lets its deliveries in flight finish (0:
// the triggers package's default).
func newFleet(ctx context.Context, tl eventinglisters.TriggerLister, bl eventinglisters.BrokerLister, js jetstream.JetStream,
	pub broker.Publisher, client *http.Client, coll *triggers.Collector, drain time.Duration, log *slog.Logger) *Fleet {
	return &Fleet{
		triggers: tl, brokers: bl, js: js, pub: pub, client: client, coll: coll, drain: drain, log: log,
		ctx: ctx, loops: map[types.NamespacedName]*loop{},
	}
}

// handlers are the informer handlers that keep the fleet in step: a
// Trigger that changes is synced; a Broker that changes syncs its
// Triggers (its class, and the delivery they inherit).
func (f *Fleet) handlers() (triggerHandler, brokerHandler cache.ResourceEventHandler) {
	syncTrigger := func(obj any) {
		if name, err := cache.DeletionHandlingObjectToName(obj); err == nil {
			f.sync(name.AsNamespacedName())
		}
	}
	syncBroker := func(obj any) {
		name, err := cache.DeletionHandlingObjectToName(obj)
		if err != nil {
			return
		}
		ts, err := f.triggers.List(labels.Everything())
		if err != nil {
			f.log.Warn("Listing Triggers failed", "error", err)
			return
		}
		for _, t := range ts {
			if triggerreconciler.BrokerRef(t) == broker.Ref(name.AsNamespacedName()) {
				f.sync(types.NamespacedName{Namespace: t.Namespace, Name: t.Name})
			}
		}
	}
	return cache.ResourceEventHandlerFuncs{
			AddFunc:    syncTrigger,
			UpdateFunc: func(_, obj any) { syncTrigger(obj) },
			DeleteFunc: syncTrigger,
		}, cache.ResourceEventHandlerFuncs{
			AddFunc:    syncBroker,
			UpdateFunc: func(_, obj any) { syncBroker(obj) },
			DeleteFunc: syncBroker,
		}
}

// sync brings the loop of the Trigger key in line with what the listers
// say now. It reads them under f.mu, so that of two syncs of one key the
// later one sees the newer state, and never blocks on a dispatcher: the
// loop's owner does the starting and stopping.
func (f *Fleet) sync(key types.NamespacedName) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	want, keep := f.desired(key)
	if keep {
		return
	}
	l := f.loops[key]
	if l == nil {
		if want == nil {
			return
		}
		l = &loop{key: key, kick: make(chan struct{}, 1)}
		f.loops[key] = l
		f.owners.Add(1)
		go f.own(l)
	}
	l.want = want
	select {
	case l.kick <- struct{}{}:
	default: // the owner has a kick pending and will read want
	}
}

// desired is the spec the Trigger key's loop should run, nil for none;
// keep is true when the current loop, whatever it is, should be left as
// it is for now.
func (f *Fleet) desired(key types.NamespacedName) (want *spec, keep bool) {
	t, err := f.triggers.Triggers(key.Namespace).Get(key.Name)
	if err != nil || t.DeletionTimestamp != nil {
		// Gone, or going: the controller deletes its consumer.
		return nil, false
	}
	if t.Status.ObservedGeneration != t.Generation {
		// The controller has not looked at this edit yet: the status
		// (the subscriber's URI, Ready) still describes the spec before
		// it. Wait for the status that goes with the spec.
		return nil, true
	}
	if c := t.Status.GetCondition(apis.ConditionReady); c == nil || !c.IsTrue() {
		return nil, false
	}
	ref := triggerreconciler.BrokerRef(t)
	b, err := f.brokers.Brokers(ref.Namespace).Get(ref.Name)
	if err != nil || b.Annotations[brokerreconciler.ClassAnnotationKey] != brokerreconciler.ClassName {
		return nil, false
	}
	if t.Status.SubscriberURI == nil {
		return nil, false
	}
	s := &spec{
		trigger:     t.DeepCopy(),
		broker:      ref,
		subscriber:  t.Status.SubscriberURI.DeepCopy(),
		deadLetter:  t.Status.DeliveryStatus.DeadLetterSinkURI.DeepCopy(),
		delivery:    triggers.EffectiveDelivery(t, b).DeepCopy(),
		concurrency: triggerreconciler.DefaultConcurrency,
	}
	if n, ok, err := triggers.AnnotatedConcurrency(t); err != nil {
		f.log.Warn("Ignoring an invalid annotation", "trigger", key.String(), "error", err)
	} else if ok {
		s.concurrency = n
	}
	if d, _, err := triggers.AnnotatedAckWait(t); err != nil {
		f.log.Warn("Ignoring an invalid annotation", "trigger", key.String(), "error", err)
	} else {
		s.ackWait = d
	}
	return s, false
}

// running is a dispatcher under way.
type running struct {
	spec   *spec
	d      *triggers.Dispatcher
	cancel context.CancelFunc
	done   chan error
}

// Bounds of the wait before a dispatcher that failed to start, or whose
// consumer went away, is started again.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// own is the owner goroutine of l: it replaces l's dispatcher when its
// spec changes, stopping the old one (which lets its deliveries in flight
// finish) before it starts the new one, restarts one that failed, and
// retires the loop once it should run nothing.
func (f *Fleet) own(l *loop) {
	defer f.owners.Done()
	log := f.log.With("trigger", l.key.String())
	var (
		cur     *running
		retry   <-chan time.Time
		backoff time.Duration
	)
	retryLater := func(err error) {
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		log.Error("Dispatcher failed, retrying", "error", err, "in", backoff)
		retry = time.After(backoff)
	}
	for {
		var ended <-chan error
		if cur != nil {
			ended = cur.done
		}
		select {
		case <-f.ctx.Done():
			f.stop(l.key, cur)
			return
		case <-l.kick:
		case <-retry:
			retry = nil
		case err := <-ended:
			f.coll.Remove(cur.d)
			cur = nil
			if f.ctx.Err() != nil {
				// The fleet is stopping: Run drained and returned.
				f.note(l.key, stopped)
				return
			}
			// Run returned by itself: its consumer went away, or the
			// connection closed.
			f.note(l.key, failed)
			retryLater(err)
			continue
		}

		f.mu.Lock()
		want := l.want
		f.mu.Unlock()
		if want == nil {
			if cur != nil {
				log.Info("Stopping dispatcher")
			}
			f.stop(l.key, cur)
			cur = nil
			f.mu.Lock()
			if l.want == nil {
				delete(f.loops, l.key)
				f.mu.Unlock()
				return
			}
			f.mu.Unlock()
			continue // a new spec came meanwhile; its kick is pending
		}
		if cur != nil && cur.spec.equal(want) {
			continue
		}
		if cur != nil {
			log.Info("Trigger changed: replacing its dispatcher")
			f.stop(l.key, cur)
			cur = nil
		}
		var err error
		if cur, err = f.start(l.key, want); err != nil {
			retryLater(err)
			continue
		}
		backoff, retry = 0, nil
		log.Info("Dispatching", "subscriber", want.subscriber.String(), "deadLetterSink", want.deadLetter.String(),
			"concurrency", want.concurrency)
	}
}

// natsCallTimeout bounds the JetStream calls that make a dispatcher.
const natsCallTimeout = 30 * time.Second

func (f *Fleet) start(key types.NamespacedName, s *spec) (*running, error) {
	ctx, cancel := context.WithTimeout(f.ctx, natsCallTimeout)
	cfg := s.config(f.drain)
	cfg.Tracer = f.tracer
	d, err := triggers.New(ctx, f.js, f.pub, f.client, cfg, f.log.With("component", "dispatcher"))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("start dispatcher: %w", err)
	}
	runCtx, stop := context.WithCancel(f.ctx)
	r := &running{spec: s, d: d, cancel: stop, done: make(chan error, 1)}
	f.coll.Add(d)
	go func() { r.done <- d.Run(runCtx) }()
	f.note(key, started)
	return r, nil
}

// stop stops r and waits until its deliveries in flight are done (or its
// drain timeout handed them back to JetStream).
func (f *Fleet) stop(key types.NamespacedName, r *running) {
	if r == nil {
		return
	}
	r.cancel()
	f.note(key, stopping)
	if err := <-r.done; err != nil {
		f.log.Warn("Dispatcher stopped with an error", "trigger", key.String(), "error", err)
	}
	f.coll.Remove(r.d)
	f.note(key, stopped)
}

func (f *Fleet) note(key types.NamespacedName, e event) {
	if f.observe != nil {
		f.observe(key.String(), e)
	}
}

// close starts no loop any more and waits until every loop has stopped,
// which happens once ctx is done.
func (f *Fleet) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.owners.Wait()
}

// Package triggers delivers a Broker's events to its Triggers' subscribers
// with Knative Trigger semantics, over one durable JetStream consumer per
// Trigger.
package triggers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/apimachinery/pkg/types"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// Config describes one Trigger to dispatch.
type Config struct {
	Trigger *eventingv1.Trigger
	// Broker is the Broker the Trigger subscribes to.
	Broker broker.Ref
	// Delivery is the effective DeliverySpec: the Trigger's when it has one,
	// else the Broker's (nil: no retries, no dead-letter sink).
	Delivery *eventingduckv1.DeliverySpec
	// Subscriber receives the events that pass the filter.
	Subscriber Endpoint
	// DeadLetter receives events whose delivery failed for good; nil for none.
	DeadLetter Endpoint
	// Concurrency is how many events are delivered at once (default 1).
	Concurrency int
	// DefaultTimeout bounds an attempt when the DeliverySpec sets no timeout.
	DefaultTimeout time.Duration
	// AcquireTimeout bounds the wait for a subscriber instance (a cold start).
	AcquireTimeout time.Duration
	// DrainTimeout bounds how long in-flight deliveries may finish on stop.
	DrainTimeout time.Duration
	// AckWait is how long JetStream waits for an ack or an in-progress
	// signal before it redelivers (default: the attempt timeout + 30s).
	AckWait time.Duration
	// Bind uses the Trigger's consumer as someone else made it (the Broker
	// class's controller, on a cluster) instead of creating or updating
	// it, so dispatcher replicas never fight over its config.
	Bind bool
	// Tracer traces each delivery attempt; nil traces nothing (the trace
	// context still goes on to the subscriber).
	Tracer trace.TracerProvider
}

// Dispatcher runs one Trigger.
type Dispatcher struct {
	cfg    Config
	name   string
	cons   jetstream.Consumer
	pub    broker.Publisher
	client *http.Client
	filter eventfilter.Filter
	// reads names what the filter reads when partial is set; else the
	// filter gets the whole event.
	reads   []string
	partial bool
	policy  Policy
	dead    *deadLetters // nil without a dead-letter sink
	deliver handler      // the steps of a delivery (pipeline)
	// deliveries holds *delivery values for reuse.
	deliveries sync.Pool
	log        *slog.Logger
	stats      *Stats
	tracer     trace.Tracer
}

// ConsumerName is the durable JetStream consumer of a Trigger.
func ConsumerName(t *eventingv1.Trigger) string {
	return broker.ConsumerName(triggerName(t))
}

// triggerName is the Trigger's namespace and name.
func triggerName(t *eventingv1.Trigger) types.NamespacedName {
	return types.NamespacedName{Namespace: t.Namespace, Name: t.Name}
}

// New creates (or updates) the Trigger's durable consumer on the Broker's
// stream and returns a Dispatcher ready to Run. Events published after the
// consumer first exists are delivered to it, as with a Knative Trigger.
func New(ctx context.Context, js jetstream.JetStream, pub broker.Publisher, client *http.Client, cfg Config, log *slog.Logger) (*Dispatcher, error) {
	t, name := cfg.Trigger, triggerName(cfg.Trigger)
	cfg, policy, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var cons jetstream.Consumer
	if cfg.Bind {
		if cons, err = js.Consumer(ctx, cfg.Broker.StreamName(), ConsumerName(t)); err != nil {
			return nil, fmt.Errorf("trigger %s: bind to consumer %s: %w", name, ConsumerName(t), err)
		}
	} else if cons, err = EnsureConsumer(ctx, js, cfg); err != nil {
		return nil, err
	}
	filter, err := NewFilter(t)
	if err != nil {
		return nil, fmt.Errorf("trigger %s: filters: %w", name, err)
	}
	reads, partial := filterReads(t)
	var dead *deadLetters
	if cfg.DeadLetter != nil {
		// The state of an event lives as long as the event can.
		st, err := js.Stream(ctx, cfg.Broker.StreamName())
		if err != nil {
			return nil, fmt.Errorf("trigger %s: stream: %w", name, err)
		}
		if dead, err = openDeadLetters(ctx, js, cfg.Broker, st.CachedInfo().Config); err != nil {
			return nil, fmt.Errorf("trigger %s: %w", name, err)
		}
	}
	d := &Dispatcher{
		cfg:     cfg,
		name:    name.String(),
		cons:    cons,
		pub:     pub,
		client:  client,
		filter:  filter,
		reads:   reads,
		partial: partial,
		policy:  policy,
		dead:    dead,
		log:     log.With("trigger", name.String()),
		stats:   &Stats{},
		tracer:  cfg.Tracer.Tracer(tracing.Scope),
	}
	d.deliver = d.pipeline()
	return d, nil
}

// Stats returns the Dispatcher's counters.
func (d *Dispatcher) Stats() *Stats { return d.stats }

// Name is the Trigger's namespace/name.
func (d *Dispatcher) Name() string { return d.name }

// Consumer returns the Trigger's JetStream consumer.
func (d *Dispatcher) Consumer() jetstream.Consumer { return d.cons }

// Run delivers events until ctx is done, then stops pulling, lets in-flight
// deliveries finish (up to DrainTimeout) and hands buffered events back to
// JetStream for redelivery.
func (d *Dispatcher) Run(ctx context.Context) error {
	// A short pull expiry and heartbeat: when the consumer's leader moves
	// (a cluster node died) and our connection survives, a lost pull is
	// noticed in seconds, not after the default 30 s.
	// Missing heartbeats are reported, so that a consumer deleted while no
	// pull was waiting is noticed (below).
	it, err := d.cons.Messages(jetstream.PullMaxMessages(d.cfg.Concurrency),
		jetstream.PullExpiry(10*time.Second), jetstream.PullHeartbeat(2*time.Second),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return fmt.Errorf("trigger %s: consume: %w", d.name, err)
	}
	// In-flight work outlives ctx by at most DrainTimeout.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			it.Drain()
			t := time.AfterFunc(d.cfg.DrainTimeout, cancelWork)
			<-stopped
			t.Stop()
		case <-stopped:
		}
	}()

	pool := newWorkers(d.cfg.Concurrency, workerIdle, func(msg jetstream.Msg) { d.handle(work, msg) })
	defer func() {
		pool.wait()
		close(stopped)
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				// The iterator ended without being asked to (its consumer
				// was deleted, the connection closed): say so instead of
				// leaving the Trigger silently undelivered.
				return fmt.Errorf("trigger %s: consumer stopped: %w", d.name, err)
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) && d.consumerGone(ctx) {
				// JetStream tells a pull that is waiting when its consumer
				// is deleted (the iterator then closes, above), but a pull
				// made after the deletion only meets no responder, again
				// and again: the heartbeats stop, and the consumer is
				// looked up.
				it.Stop()
				return fmt.Errorf("trigger %s: consumer stopped: %w", d.name, jetstream.ErrConsumerNotFound)
			}
			d.log.Warn("pull failed", "err", err)
			continue
		}
		if ctx.Err() != nil {
			// Stopping: give buffered events straight back.
			if err := msg.Nak(); err != nil {
				d.log.Warn("could not hand a buffered event back; JetStream will redeliver it after AckWait",
					append(broker.StoredIdentity(msg.Headers()), "err", err)...)
			}
			continue
		}
		pool.submit(msg)
	}
}

// consumerGone reports whether JetStream says the Trigger's consumer does
// not exist; any other answer (NATS restarting, a leader being elected)
// leaves the pulls going.
func (d *Dispatcher) consumerGone(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := d.cons.Info(ctx)
	return errors.Is(err, jetstream.ErrConsumerNotFound)
}

// EffectiveDelivery is the DeliverySpec a Trigger's deliveries follow: the
// Trigger's own when it sets one, else its Broker's.
func EffectiveDelivery(t *eventingv1.Trigger, b *eventingv1.Broker) *eventingduckv1.DeliverySpec {
	if t.Spec.Delivery != nil {
		return t.Spec.Delivery
	}
	if b != nil {
		return b.Spec.Delivery
	}
	return nil
}

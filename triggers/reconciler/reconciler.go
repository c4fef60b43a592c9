// Package reconciler is the control plane of the Triggers on Brokers of
// the KoffeeshopJetStream class: for each it resolves the subscriber and
// the dead-letter sink, keeps the Trigger's durable JetStream consumer on
// its Broker's stream, and deletes the consumer when the Trigger goes.
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	triggerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/trigger"
	eventinglisters "knative.dev/eventing/pkg/client/listers/eventing/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/logging"
	pkgreconciler "knative.dev/pkg/reconciler"
	"knative.dev/pkg/resolver"

	"github.com/koffeeshop/koffeeshop/broker"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// DefaultConcurrency applies without triggers.ConcurrencyAnnotation.
const DefaultConcurrency = 100

// FinalizerName keeps a Trigger until its consumer is deleted. It is our
// own: the generated reconciler's default (triggers.eventing.knative.dev)
// is shared by every Trigger controller.
const FinalizerName = "koffeeshop.dev/trigger-consumer"

// Reasons of the conditions this reconciler sets.
const (
	ReasonBrokerDoesNotExist          = "BrokerDoesNotExist"
	ReasonBrokerGetFailed             = "BrokerGetFailed"
	ReasonBrokerNotReady              = "BrokerNotReady"
	ReasonSubscriberResolveFailed     = "SubscriberResolveFailed"
	ReasonDeadLetterSinkResolveFailed = "DeadLetterSinkResolveFailed"
	ReasonInvalidDelivery             = "InvalidDelivery"
	ReasonInvalidFilter               = "InvalidFilter"
	ReasonNATSUnavailable             = "NATSUnavailable"
	ReasonConsumerFailed              = "ConsumerFailed"
)

// Consumers creates, updates and deletes JetStream consumers.
// jetstream.JetStream is one.
type Consumers interface {
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	DeleteConsumer(ctx context.Context, stream, consumer string) error
}

// Options of the Trigger reconciler.
type Options struct {
	// NATSTimeout bounds each JetStream API call (default 10s).
	NATSTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.NATSTimeout <= 0 {
		o.NATSTimeout = brokerreconciler.DefaultNATSTimeout
	}
	return o
}

// Reconciler reconciles the Triggers on Brokers of the KoffeeshopJetStream
// class. It implements the generated reconciler's Interface and Finalizer.
type Reconciler struct {
	brokers   eventinglisters.BrokerLister
	consumers Consumers
	resolver  *resolver.URIResolver
	opts      Options
}

var (
	_ triggerreconciler.Interface = (*Reconciler)(nil)
	_ triggerreconciler.Finalizer = (*Reconciler)(nil)
)

// New returns a Reconciler that finds Brokers with brokers, resolves
// subscribers and sinks with res, and manages consumers with consumers.
func New(brokers eventinglisters.BrokerLister, consumers Consumers, res *resolver.URIResolver, o Options) *Reconciler {
	return &Reconciler{brokers: brokers, consumers: consumers, resolver: res, opts: o.withDefaults()}
}

// ReconcileKind propagates the Broker's readiness, resolves the subscriber
// and the dead-letter sink, and creates or updates the consumer once all
// three are there. Unresolvable references are False conditions and
// Warning events, and wait for the user (the resolver's tracker
// reconciles the Trigger again when they change); a NATS failure is a
// False condition and an error, retried with backoff.
func (r *Reconciler) ReconcileKind(ctx context.Context, t *eventingv1.Trigger) pkgreconciler.Event {
	// The generated reconciler initializes every condition to Unknown.
	// These two have nothing to wait for, and must be marked, or Ready
	// never becomes True: this class makes no OIDC identity (it does not
	// implement authentication-oidc), and honours no dependency
	// annotation (knative.dev/dependency).
	t.Status.MarkOIDCIdentityCreatedNotSupported()
	t.Status.MarkDependencySucceeded()

	ref := BrokerRef(t)
	b, err := r.brokers.Brokers(ref.Namespace).Get(ref.Name)
	if apierrs.IsNotFound(err) {
		// When it appears, the Broker informer requeues this Trigger.
		t.Status.MarkBrokerFailed(ReasonBrokerDoesNotExist, "Broker %q does not exist", ref.Name)
		return nil
	}
	if err != nil {
		t.Status.MarkBrokerFailed(ReasonBrokerGetFailed, "Broker %q: %v", ref.Name, err)
		return fmt.Errorf("trigger %s/%s: get broker %s: %w", t.Namespace, t.Name, ref, err)
	}
	if b.Annotations[brokerreconciler.ClassAnnotationKey] != brokerreconciler.ClassName {
		// The informers filter these out; this one had our finalizer
		// and its Broker was replaced by one of another class.
		logging.FromContext(ctx).Infow("Broker is of another class", zap.String("broker", ref.String()))
		return nil
	}
	t.Status.PropagateBrokerCondition(b.Status.GetTopLevelCondition())

	subscriberEvent := r.resolveSubscriber(ctx, t)
	sinkEvent := r.resolveDeadLetterSink(ctx, t, b)
	if subscriberEvent != nil {
		return subscriberEvent
	}
	if sinkEvent != nil {
		// Without its sink a failed event would be dropped instead of
		// dead-lettered: do not start consuming.
		return sinkEvent
	}
	if !b.IsReady() {
		// The stream may not exist yet. The Broker informer requeues
		// this Trigger when the Broker changes.
		t.Status.MarkSubscribedUnknown(ReasonBrokerNotReady, "Broker %q is not ready", ref.Name)
		return nil
	}
	return r.reconcileConsumer(ctx, t, b)
}

// FinalizeKind deletes the Trigger's consumer. A consumer or stream that
// is already gone (the Broker was deleted first) is success; while NATS
// cannot be reached the finalizer stays and the deletion is retried.
func (r *Reconciler) FinalizeKind(ctx context.Context, t *eventingv1.Trigger) pkgreconciler.Event {
	ref := BrokerRef(t)
	name := triggers.ConsumerName(t)
	ctx, cancel := context.WithTimeout(ctx, r.opts.NATSTimeout)
	defer cancel()
	err := r.consumers.DeleteConsumer(ctx, ref.StreamName(), name)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("trigger %s/%s: delete consumer %s: %w", t.Namespace, t.Name, name, err)
	}
	return nil
}

func (r *Reconciler) reconcileConsumer(ctx context.Context, t *eventingv1.Trigger, b *eventingv1.Broker) pkgreconciler.Event {
	ref := BrokerRef(t)
	if _, err := triggers.NewFilter(t); err != nil {
		// Without Knative's webhook (or past it), a filter the dispatcher
		// cannot build: say so, and make no consumer for it.
		t.Status.MarkNotSubscribed(ReasonInvalidFilter, "%v", err)
		return pkgreconciler.NewEvent(corev1.EventTypeWarning, ReasonInvalidFilter, "%v", err)
	}
	cc, err := triggers.ConsumerConfig(triggers.Config{
		Trigger:     t,
		Broker:      ref,
		Delivery:    triggers.EffectiveDelivery(t, b),
		Concurrency: concurrency(ctx, t),
		AckWait:     ackWait(ctx, t),
	})
	if err != nil {
		// The webhook validates the DeliverySpec; this is what it let
		// through and the dispatcher cannot use.
		t.Status.MarkNotSubscribed(ReasonInvalidDelivery, "%v", err)
		return pkgreconciler.NewEvent(corev1.EventTypeWarning, ReasonInvalidDelivery, "%v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, r.opts.NATSTimeout)
	defer cancel()
	if _, err := r.consumers.CreateOrUpdateConsumer(cctx, ref.StreamName(), cc); err != nil {
		t.Status.MarkNotSubscribed(failureReason(err), "consumer %s on stream %s: %v", cc.Durable, ref.StreamName(), err)
		return fmt.Errorf("trigger %s/%s: create or update consumer %s: %w", t.Namespace, t.Name, cc.Durable, err)
	}
	t.GetConditionSet().Manage(&t.Status).MarkTrue(eventingv1.TriggerConditionSubscribed)
	return nil
}

// resolveSubscriber sets status.subscriberUri and SubscriberResolved.
func (r *Reconciler) resolveSubscriber(ctx context.Context, t *eventingv1.Trigger) pkgreconciler.Event {
	addr, err := r.resolve(ctx, t.Spec.Subscriber, t.Namespace, t)
	if err != nil {
		t.Status.SubscriberURI = nil
		t.Status.SubscriberCACerts = nil
		t.Status.SubscriberAudience = nil
		t.Status.MarkSubscriberResolvedFailed(ReasonSubscriberResolveFailed, "%v", err)
		return pkgreconciler.NewEvent(corev1.EventTypeWarning, ReasonSubscriberResolveFailed, "subscriber: %v", err)
	}
	t.Status.SubscriberURI = addr.URL
	t.Status.SubscriberCACerts = addr.CACerts
	t.Status.SubscriberAudience = addr.Audience
	t.Status.MarkSubscriberResolvedSucceeded()
	return nil
}

// resolveDeadLetterSink sets status.deadLetterSinkUri and
// DeadLetterSinkResolved from the Trigger's delivery, else the Broker's.
func (r *Reconciler) resolveDeadLetterSink(ctx context.Context, t *eventingv1.Trigger, b *eventingv1.Broker) pkgreconciler.Event {
	var (
		dest *duckv1.Destination
		ns   string
	)
	switch {
	case t.Spec.Delivery != nil && t.Spec.Delivery.DeadLetterSink != nil:
		dest, ns = t.Spec.Delivery.DeadLetterSink, t.Namespace
	case b.Spec.Delivery != nil && b.Spec.Delivery.DeadLetterSink != nil:
		dest, ns = b.Spec.Delivery.DeadLetterSink, b.Namespace
	default:
		t.Status.DeliveryStatus = eventingduckv1.DeliveryStatus{}
		t.Status.MarkDeadLetterSinkNotConfigured()
		return nil
	}
	addr, err := r.resolve(ctx, *dest, ns, t)
	if err != nil {
		t.Status.DeliveryStatus = eventingduckv1.DeliveryStatus{}
		t.Status.MarkDeadLetterSinkResolvedFailed(ReasonDeadLetterSinkResolveFailed, "%v", err)
		return pkgreconciler.NewEvent(corev1.EventTypeWarning, ReasonDeadLetterSinkResolveFailed, "dead-letter sink: %v", err)
	}
	t.Status.DeliveryStatus = eventingduckv1.NewDeliveryStatusFromAddressable(addr)
	t.Status.MarkDeadLetterSinkResolvedSucceeded()
	return nil
}

// resolve resolves dest, whose ref defaults to namespace ns, tracking it
// for t. It never writes to dest, which is in the informer's copy.
func (r *Reconciler) resolve(ctx context.Context, dest duckv1.Destination, ns string, t *eventingv1.Trigger) (*duckv1.Addressable, error) {
	d := dest.DeepCopy()
	if d.Ref != nil && d.Ref.Namespace == "" {
		d.Ref.Namespace = ns
	}
	return r.resolver.AddressableFromDestinationV1(ctx, *d, t)
}

// BrokerRef is the Broker a Trigger subscribes to: spec.brokerRef when set
// (Knative's cross-namespace event links), else spec.broker in the
// Trigger's namespace.
func BrokerRef(t *eventingv1.Trigger) broker.Ref {
	if br := t.Spec.BrokerRef; br != nil && br.Name != "" {
		ns := br.Namespace
		if ns == "" {
			ns = t.Namespace
		}
		return broker.Ref{Namespace: ns, Name: br.Name}
	}
	return broker.Ref{Namespace: t.Namespace, Name: t.Spec.Broker}
}

// concurrency reads triggers.ConcurrencyAnnotation. An invalid value is
// logged and ignored, as the local runner ignores it.
func concurrency(ctx context.Context, t *eventingv1.Trigger) int {
	n, ok, err := triggers.AnnotatedConcurrency(t)
	if err != nil {
		logging.FromContext(ctx).Warnw("Ignoring an invalid annotation", zap.Error(err))
	}
	if !ok || err != nil {
		return DefaultConcurrency
	}
	return n
}

// ackWait reads triggers.AckWaitAnnotation; 0 leaves the consumer's
// default.
func ackWait(ctx context.Context, t *eventingv1.Trigger) time.Duration {
	d, _, err := triggers.AnnotatedAckWait(t)
	if err != nil {
		logging.FromContext(ctx).Warnw("Ignoring an invalid annotation", zap.Error(err))
	}
	return d
}

// failureReason tells a JetStream that answered and refused from a NATS
// that could not be reached.
func failureReason(err error) string {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return ReasonConsumerFailed
	}
	return ReasonNATSUnavailable
}

// Package reconciler is the control plane of the KoffeeshopJetStream Broker
// class: for each Broker of the class it keeps a JetStream stream as the
// Broker's ConfigMap describes it, publishes the Broker's address at the
// shared ingress, resolves its dead-letter sink, and deletes the stream
// when the Broker goes.
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
	corev1listers "k8s.io/client-go/listers/core/v1"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	brokerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/broker"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/logging"
	"knative.dev/pkg/network"
	pkgreconciler "knative.dev/pkg/reconciler"
	"knative.dev/pkg/resolver"
	"knative.dev/pkg/tracker"

	"github.com/koffeeshop/koffeeshop/broker"
)

// Streams creates, updates and deletes JetStream streams.
// jetstream.JetStream is one.
type Streams interface {
	CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
	DeleteStream(ctx context.Context, name string) error
}

// Options of the Broker reconciler.
type Options struct {
	// IngressName and IngressNamespace name the Kubernetes Service of the
	// shared Broker ingress, which every Broker's address points at.
	IngressName      string
	IngressNamespace string
	// NATSTimeout bounds each JetStream API call, so that a NATS that
	// does not answer fails a reconcile (which is retried) instead of
	// holding a worker.
	NATSTimeout time.Duration
}

// Defaults of Options.
const (
	DefaultIngressName      = "koffeeshop-broker-ingress"
	DefaultIngressNamespace = "koffeeshop-system"
	DefaultNATSTimeout      = 10 * time.Second
)

func (o Options) withDefaults() Options {
	if o.IngressName == "" {
		o.IngressName = DefaultIngressName
	}
	if o.IngressNamespace == "" {
		o.IngressNamespace = DefaultIngressNamespace
	}
	if o.NATSTimeout <= 0 {
		o.NATSTimeout = DefaultNATSTimeout
	}
	return o
}

// Reconciler reconciles the Brokers of ClassName. It implements the
// generated reconciler's Interface and Finalizer.
type Reconciler struct {
	streams    Streams
	configMaps corev1listers.ConfigMapLister
	resolver   *resolver.URIResolver
	tracker    tracker.Interface
	opts       Options
}

var (
	_ brokerreconciler.Interface = (*Reconciler)(nil)
	_ brokerreconciler.Finalizer = (*Reconciler)(nil)
)

// New returns a Reconciler. The tracker is told which ConfigMap each Broker
// reads, so that a change to it reconciles the Broker again; the resolver
// resolves dead-letter sinks.
func New(streams Streams, configMaps corev1listers.ConfigMapLister, res *resolver.URIResolver, trk tracker.Interface, o Options) *Reconciler {
	return &Reconciler{streams: streams, configMaps: configMaps, resolver: res, tracker: trk, opts: o.withDefaults()}
}

// ReconcileKind makes the Broker's stream, address and dead-letter sink
// what its spec says, and reports each in a condition. A user's mistake
// (a missing ConfigMap, a bad value, an unresolvable sink) is a False
// condition and a Warning event, and waits for the user: the tracker
// reconciles the Broker again when the ConfigMap or the sink changes. A
// NATS failure is a False condition and an error, which the workqueue
// retries with backoff.
func (r *Reconciler) ReconcileKind(ctx context.Context, b *eventingv1.Broker) pkgreconciler.Event {
	// The sink does not depend on the stream: resolve it first, so its
	// condition is current even when the stream cannot be made.
	sinkEvent := r.resolveDeadLetterSink(ctx, b)

	if ev := r.reconcileStream(ctx, b); ev != nil {
		return ev
	}

	// The ingress can store the Broker's events once the stream exists.
	url := &apis.URL{
		Scheme: "http",
		Host:   network.GetServiceHostname(r.opts.IngressName, r.opts.IngressNamespace),
		Path:   fmt.Sprintf("/%s/%s", b.Namespace, b.Name),
	}
	b.Status.SetAddress(&duckv1.Addressable{URL: url})
	b.Status.Addresses = []duckv1.Addressable{*b.Status.Address}

	return sinkEvent
}

// FinalizeKind deletes the Broker's stream and, with it, the events it
// holds and its Triggers' consumers, as deleting a Knative Broker deletes
// its channel. While NATS cannot be reached the finalizer stays and the
// deletion is retried, rather than leaving the stream behind.
func (r *Reconciler) FinalizeKind(ctx context.Context, b *eventingv1.Broker) pkgreconciler.Event {
	ref := refOf(b)
	ctx, cancel := context.WithTimeout(ctx, r.opts.NATSTimeout)
	defer cancel()
	err := r.streams.DeleteStream(ctx, ref.StreamName())
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("broker %s: delete stream %s: %w", ref, ref.StreamName(), err)
	}
	logging.FromContext(ctx).Infow("Deleted the Broker's stream", zap.String("stream", ref.StreamName()))
	return nil
}

// reconcileStream reads the Broker's settings and creates or updates its
// stream, setting ConfigParsed and StreamReady.
func (r *Reconciler) reconcileStream(ctx context.Context, b *eventingv1.Broker) pkgreconciler.Event {
	cs := b.GetConditionSet().Manage(&b.Status)
	ref := refOf(b)
	settings, err := r.settings(b)
	var bad *configError
	switch {
	case errors.As(err, &bad):
		cs.MarkFalse(ConditionConfigParsed, bad.reason, "%v", bad.err)
		return pkgreconciler.NewEvent(corev1.EventTypeWarning, bad.reason, "%v", bad.err)
	case err != nil:
		// Not the user's doing: retry.
		cs.MarkFalse(ConditionConfigParsed, ReasonConfigUnavailable, "%v", err)
		return fmt.Errorf("broker %s: %w", ref, err)
	}
	cs.MarkTrue(ConditionConfigParsed)

	sctx, cancel := context.WithTimeout(ctx, r.opts.NATSTimeout)
	defer cancel()
	if _, err := r.streams.CreateOrUpdateStream(sctx, broker.StreamConfig(ref, settings)); err != nil {
		cs.MarkFalse(ConditionStreamReady, failureReason(err), "stream %s: %v", ref.StreamName(), err)
		return fmt.Errorf("broker %s: create or update stream %s: %w", ref, ref.StreamName(), err)
	}
	cs.MarkTrue(ConditionStreamReady)
	return nil
}

// configError is a mistake in the Broker's configuration, which only its
// user can fix.
type configError struct {
	reason string
	err    error
}

func (e *configError) Error() string { return e.err.Error() }

// settings are the stream settings spec.config gives the Broker.
func (r *Reconciler) settings(b *eventingv1.Broker) (broker.StreamOptions, error) {
	ref := b.Spec.Config
	if ref == nil {
		return broker.DefaultStreamOptions(), nil
	}
	if ref.Kind != "ConfigMap" || (ref.APIVersion != "" && ref.APIVersion != "v1") {
		return broker.StreamOptions{}, &configError{ReasonUnsupportedConfig,
			fmt.Errorf("spec.config must name a v1 ConfigMap, not %s %s %q", ref.APIVersion, ref.Kind, ref.Name)}
	}
	ns := ref.Namespace
	if ns == "" {
		ns = b.Namespace
	}
	if r.tracker != nil {
		// Reconcile the Broker again when its ConfigMap changes, or
		// appears.
		if err := r.tracker.TrackReference(tracker.Reference{
			APIVersion: "v1", Kind: "ConfigMap", Namespace: ns, Name: ref.Name,
		}, b); err != nil {
			return broker.StreamOptions{}, fmt.Errorf("track ConfigMap %s/%s: %w", ns, ref.Name, err)
		}
	}
	cm, err := r.configMaps.ConfigMaps(ns).Get(ref.Name)
	if apierrs.IsNotFound(err) {
		return broker.StreamOptions{}, &configError{ReasonConfigMapNotFound, fmt.Errorf("ConfigMap %s/%s does not exist", ns, ref.Name)}
	}
	if err != nil {
		return broker.StreamOptions{}, fmt.Errorf("get ConfigMap %s/%s: %w", ns, ref.Name, err)
	}
	s, err := broker.ParseStreamOptions(cm.Data)
	if err != nil {
		return broker.StreamOptions{}, &configError{ReasonInvalidConfig, fmt.Errorf("ConfigMap %s/%s: %w", ns, ref.Name, err)}
	}
	return s, nil
}

// resolveDeadLetterSink sets status.deliveryStatus and
// DeadLetterSinkResolved from spec.delivery.deadLetterSink.
func (r *Reconciler) resolveDeadLetterSink(ctx context.Context, b *eventingv1.Broker) pkgreconciler.Event {
	if b.Spec.Delivery == nil || b.Spec.Delivery.DeadLetterSink == nil {
		b.Status.MarkDeadLetterSinkNotConfigured()
		return nil
	}
	dest := b.Spec.Delivery.DeadLetterSink.DeepCopy()
	if dest.Ref != nil && dest.Ref.Namespace == "" {
		dest.Ref.Namespace = b.Namespace
	}
	addr, err := r.resolver.AddressableFromDestinationV1(ctx, *dest, b)
	if err != nil {
		b.Status.MarkDeadLetterSinkResolvedFailed(ReasonDeadLetterSinkResolveFailed, "%v", err)
		return pkgreconciler.NewEvent(corev1.EventTypeWarning, ReasonDeadLetterSinkResolveFailed, "dead-letter sink: %v", err)
	}
	b.Status.MarkDeadLetterSinkResolvedSucceeded(eventingduckv1.NewDeliveryStatusFromAddressable(addr))
	return nil
}

// failureReason tells a JetStream that answered and refused (a bad
// config, a storage type that cannot change, too many replicas for the
// cluster) from a NATS that could not be reached.
func failureReason(err error) string {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return ReasonStreamFailed
	}
	return ReasonNATSUnavailable
}

func refOf(b *eventingv1.Broker) broker.Ref {
	return broker.Ref{Namespace: b.Namespace, Name: b.Name}
}

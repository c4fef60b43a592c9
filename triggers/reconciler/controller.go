package reconciler

import (
	"context"
	"slices"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	brokerinformer "knative.dev/eventing/pkg/client/injection/informers/eventing/v1/broker"
	triggerinformer "knative.dev/eventing/pkg/client/injection/informers/eventing/v1/trigger"
	triggerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/trigger"
	eventinglisters "knative.dev/eventing/pkg/client/listers/eventing/v1"
	"knative.dev/pkg/controller"
	"knative.dev/pkg/logging"
	"knative.dev/pkg/resolver"

	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
)

// Filter passes the Triggers this controller owns: those whose Broker is
// of the KoffeeshopJetStream class, and those that carry our finalizer
// (their Broker may be gone, and they must still be finalized). The
// generated Trigger reconciler has no class filter of its own and adds
// its finalizer to whatever it is given, so every path that enqueues a
// Trigger goes through this.
func Filter(brokers eventinglisters.BrokerLister) func(obj any) bool {
	return func(obj any) bool {
		t, ok := obj.(*eventingv1.Trigger)
		if !ok {
			return false
		}
		if slices.Contains(t.Finalizers, FinalizerName) {
			return true
		}
		ref := BrokerRef(t)
		b, err := brokers.Brokers(ref.Namespace).Get(ref.Name)
		if err != nil {
			return false
		}
		return b.Annotations[brokerreconciler.ClassAnnotationKey] == brokerreconciler.ClassName
	}
}

// NewController returns the Trigger controller: the generated Trigger
// reconciler around a Reconciler that manages consumers through
// consumers. The informers and clients come from ctx (Knative injection).
func NewController(ctx context.Context, consumers Consumers, o Options) *controller.Impl {
	triggerInformer := triggerinformer.Get(ctx)
	brokerInformer := brokerinformer.Get(ctx)
	filter := Filter(brokerInformer.Lister())

	r := New(brokerInformer.Lister(), consumers, nil, o)
	impl := triggerreconciler.NewImpl(ctx, r, func(*controller.Impl) controller.Options {
		return controller.Options{
			FinalizerName:     FinalizerName,
			AgentName:         "koffeeshop-trigger-controller",
			PromoteFilterFunc: filter,
		}
	})
	r.resolver = resolver.NewURIResolverFromTracker(ctx, impl.Tracker)

	triggerInformer.Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: filter,
		Handler:    controller.HandleAll(impl.Enqueue),
	})

	// A Broker of ours that changes (becomes ready, gets a sink, goes)
	// requeues its Triggers.
	triggerLister := triggerInformer.Lister()
	logger := logging.FromContext(ctx)
	brokerInformer.Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: brokerreconciler.ClassFilter(),
		Handler: controller.HandleAll(func(obj any) {
			b, ok := obj.(*eventingv1.Broker)
			if !ok {
				return
			}
			ts, err := triggerLister.List(labels.Everything())
			if err != nil {
				logger.Warnw("Listing Triggers failed", "error", err)
				return
			}
			for _, t := range ts {
				if ref := BrokerRef(t); ref.Namespace == b.Namespace && ref.Name == b.Name {
					impl.Enqueue(t)
				}
			}
		}),
	})
	return impl
}

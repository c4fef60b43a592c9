package reconciler

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	brokerinformer "knative.dev/eventing/pkg/client/injection/informers/eventing/v1/broker"
	brokerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/broker"
	configmapinformer "knative.dev/pkg/client/injection/kube/informers/core/v1/configmap"
	"knative.dev/pkg/controller"
	pkgreconciler "knative.dev/pkg/reconciler"
	"knative.dev/pkg/resolver"
)

// ClassFilter passes the Brokers of ClassName.
func ClassFilter() func(obj any) bool {
	return pkgreconciler.AnnotationFilterFunc(ClassAnnotationKey, ClassName, false /* allowUnset */)
}

// NewController returns the Broker controller: the generated Broker
// reconciler, which skips every Broker whose class is not ClassName,
// around a Reconciler that manages streams through streams. The informers
// and clients come from ctx (Knative injection).
func NewController(ctx context.Context, streams Streams, o Options) *controller.Impl {
	eventingv1.RegisterAlternateBrokerConditionSet(ConditionSet)

	brokerInformer := brokerinformer.Get(ctx)
	configMapInformer := configmapinformer.Get(ctx)
	classFilter := ClassFilter()

	r := New(streams, configMapInformer.Lister(), nil, nil, o)
	impl := brokerreconciler.NewImpl(ctx, r, ClassName, func(*controller.Impl) controller.Options {
		return controller.Options{
			FinalizerName: FinalizerName,
			AgentName:     "koffeeshop-broker-controller",
			// On promotion to leader, requeue only our Brokers.
			PromoteFilterFunc: classFilter,
		}
	})
	r.tracker = impl.Tracker
	r.resolver = resolver.NewURIResolverFromTracker(ctx, impl.Tracker)

	brokerInformer.Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: classFilter,
		Handler:    controller.HandleAll(impl.Enqueue),
	})
	// A Broker tracks the ConfigMap its spec.config names (see settings).
	configMapInformer.Informer().AddEventHandler(controller.HandleAll(
		controller.EnsureTypeMeta(impl.Tracker.OnChanged, corev1.SchemeGroupVersion.WithKind("ConfigMap")),
	))
	return impl
}

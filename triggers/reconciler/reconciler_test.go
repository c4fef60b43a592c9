package reconciler_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgotesting "k8s.io/client-go/testing"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	fakeeventingclient "knative.dev/eventing/pkg/client/injection/client/fake"
	triggerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/trigger"
	et "knative.dev/eventing/pkg/reconciler/testing/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/client/injection/ducks/duck/v1/addressable"
	"knative.dev/pkg/configmap"
	"knative.dev/pkg/controller"
	logtesting "knative.dev/pkg/logging/testing"
	rt "knative.dev/pkg/reconciler/testing"
	"knative.dev/pkg/resolver"
	"knative.dev/pkg/tracker"

	"github.com/koffeeshop/koffeeshop/broker"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/triggers"
	"github.com/koffeeshop/koffeeshop/triggers/reconciler"
)

const (
	testNS      = "coffee"
	brokerName  = "default"
	triggerName = "take-order"
	serviceName = "take-order"
	sinkName    = "dead-letters"
	testKey     = testNS + "/" + triggerName

	consumerName = "trigger_coffee_take-order"

	finalizerEvent = `Normal FinalizerUpdate Updated "take-order" finalizers`

	// Addresses on the cluster domain TestMain pins.
	serviceURL  = "http://take-order.coffee.svc.cluster.local"
	ksvcURL     = "http://take-order.coffee.example.com"
	sinkURL     = "http://dead-letters.coffee.svc.cluster.local"
	brokerURL   = "http://koffeeshop-broker-ingress.koffeeshop-system.svc.cluster.local/coffee/default"
	natsDown    = "nats: outbound buffer limit exceeded"
	serviceGone = `failed to get object coffee/take-order: services "take-order" not found`
	sinkGone    = `failed to get object coffee/dead-letters: services "dead-letters" not found`
)

var ref = broker.Ref{Namespace: testNS, Name: brokerName}

func TestMain(m *testing.M) {
	os.Setenv("CLUSTER_DOMAIN", "cluster.local")
	eventingv1.RegisterAlternateBrokerConditionSet(brokerreconciler.ConditionSet)
	os.Exit(m.Run())
}

func TestReconcile(t *testing.T) {
	table := rt.TableTest{{
		Name: "key not found",
		Key:  testKey,
	}, {
		Name: "a new Trigger gets the finalizer, its subscriber's URI, a consumer, and is Ready",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(withServiceSubscriber),
			et.NewService(serviceName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantPatches:   []clientgotesting.PatchActionImpl{patchFinalizers(reconciler.FinalizerName)},
		WantEvents:    []string{finalizerEvent},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(withServiceSubscriber, withStatus(brokerReady, subscriberResolved(serviceURL), dlsNotConfigured, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantConsumer(1000, 5*time.Minute+30*time.Second),
		},
	}, {
		Name: "a Knative Service subscriber resolves to its address",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withKnativeServiceSubscriber),
			knativeService(),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withKnativeServiceSubscriber,
				withStatus(brokerReady, subscriberResolved(ksvcURL), dlsNotConfigured, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantConsumer(1000, 5*time.Minute+30*time.Second),
		},
	}, {
		Name: "a URI subscriber is its own URI",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, et.WithTriggerSubscriberURI("https://example.com/orders")),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, et.WithTriggerSubscriberURI("https://example.com/orders"),
				withStatus(brokerReady, subscriberResolved("https://example.com/orders"), dlsNotConfigured, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantConsumer(1000, 5*time.Minute+30*time.Second),
		},
	}, {
		Name: "the delivery annotations size the consumer",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber,
				et.WithAnnotation(triggers.ConcurrencyAnnotation, "500"), et.WithAnnotation(triggers.AckWaitAnnotation, "45s")),
			et.NewService(serviceName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber,
				et.WithAnnotation(triggers.ConcurrencyAnnotation, "500"), et.WithAnnotation(triggers.AckWaitAnnotation, "45s"),
				withStatus(brokerReady, subscriberResolved(serviceURL), dlsNotConfigured, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantConsumer(5000, 45*time.Second),
		},
	}, {
		Name: "invalid delivery annotations are ignored, as the local runner ignores them",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber,
				et.WithAnnotation(triggers.ConcurrencyAnnotation, "lots"), et.WithAnnotation(triggers.AckWaitAnnotation, "-1s")),
			et.NewService(serviceName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber,
				et.WithAnnotation(triggers.ConcurrencyAnnotation, "lots"), et.WithAnnotation(triggers.AckWaitAnnotation, "-1s"),
				withStatus(brokerReady, subscriberResolved(serviceURL), dlsNotConfigured, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantConsumer(1000, 5*time.Minute+30*time.Second),
		},
	}, {
		Name: "without a delivery of its own, the Trigger's consumer follows its Broker's",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(withBrokerTimeout("PT10S")),
			newTrigger(reconcilerFinalizer, withServiceSubscriber),
			et.NewService(serviceName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber,
				withStatus(brokerReady, subscriberResolved(serviceURL), dlsNotConfigured, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			// An attempt's timeout plus the dispatcher's 30s margin.
			wantConsumer(1000, 40*time.Second),
		},
	}, {
		Name: "a second reconcile of a Ready Trigger changes nothing: no status update, no new consumer",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber,
				withStatus(brokerReady, subscriberResolved(serviceURL), dlsNotConfigured, subscribed)),
			et.NewService(serviceName, testNS),
		},
		OtherTestData:  map[string]any{setupKey: ensureConsumerAsTheDispatcherDoes},
		PostConditions: []func(*testing.T, *rt.TableRow){consumerUntouched},
	}, {
		Name: "a missing subscriber Service is SubscriberResolved=False, and no consumer is made",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantEvents:    []string{rt.Eventf(corev1.EventTypeWarning, reconciler.ReasonSubscriberResolveFailed, "subscriber: %s", serviceGone)},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber, withStatus(brokerReady,
				et.WithTriggerSubscriberResolvedFailed(reconciler.ReasonSubscriberResolveFailed, serviceGone), dlsNotConfigured)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){noConsumers},
	}, {
		Name: "the Trigger's own dead-letter sink resolves into status.deadLetterSinkUri",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber, withTriggerSink),
			et.NewService(serviceName, testNS),
			et.NewService(sinkName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber, withTriggerSink,
				withStatus(brokerReady, subscriberResolved(serviceURL), dlsResolved, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantConsumer(1000, 5*time.Minute+30*time.Second),
		},
	}, {
		Name: "without a sink of its own, the Trigger dead-letters to its Broker's",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(et.WithDeadLeaderSink(sink())),
			newTrigger(reconcilerFinalizer, withServiceSubscriber),
			et.NewService(serviceName, testNS),
			et.NewService(sinkName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber,
				withStatus(brokerReady, subscriberResolved(serviceURL), dlsResolved, subscribed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantConsumer(1000, 5*time.Minute+30*time.Second),
		},
	}, {
		Name: "a missing dead-letter sink is DeadLetterSinkResolved=False, and no consumer is made",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber, withTriggerSink),
			et.NewService(serviceName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantEvents:    []string{rt.Eventf(corev1.EventTypeWarning, reconciler.ReasonDeadLetterSinkResolveFailed, "dead-letter sink: %s", sinkGone)},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber, withTriggerSink, withStatus(brokerReady,
				subscriberResolved(serviceURL), et.WithTriggerDeadLetterSinkResolvedFailed(reconciler.ReasonDeadLetterSinkResolveFailed, sinkGone))),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){noConsumers},
	}, {
		Name: "a Broker that is not Ready is BrokerReady=False, and no consumer is made",
		Key:  testKey,
		Objects: []runtime.Object{
			notReadyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber),
			et.NewService(serviceName, testNS),
		},
		OtherTestData: map[string]any{setupKey: ensureStream},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber, withStatus(
				et.WithTriggerBrokerFailed(brokerreconciler.ReasonNATSUnavailable, "stream KNATIVE_BROKER_coffee_default: "+natsDown),
				subscriberResolved(serviceURL), dlsNotConfigured,
				et.WithTriggerSubscribedUnknown(reconciler.ReasonBrokerNotReady, `Broker "default" is not ready`))),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){noConsumers},
	}, {
		Name: "a Trigger whose Broker is gone is BrokerReady=False",
		Key:  testKey,
		Objects: []runtime.Object{
			newTrigger(reconcilerFinalizer, withServiceSubscriber),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber, withStatus(
				et.WithTriggerBrokerFailed(reconciler.ReasonBrokerDoesNotExist, `Broker "default" does not exist`))),
		}},
	}, {
		Name: "NATS down: SubscriptionReady=False, Ready=False and an error to retry",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber),
			et.NewService(serviceName, testNS),
		},
		OtherTestData: map[string]any{setupKey: stopNATS},
		WantErr:       true,
		WantEvents: []string{
			rt.Eventf(corev1.EventTypeWarning, "InternalError", "trigger coffee/take-order: create or update consumer %s: %s", consumerName, natsDown),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber, withStatus(brokerReady, subscriberResolved(serviceURL), dlsNotConfigured,
				et.WithTriggerNotSubscribed(reconciler.ReasonNATSUnavailable, "consumer "+consumerName+" on stream KNATIVE_BROKER_coffee_default: "+natsDown))),
		}},
	}, {
		Name: "a Ready Broker without its stream is ConsumerFailed, and an error to retry",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber),
			et.NewService(serviceName, testNS),
		},
		WantErr: true,
		WantEvents: []string{
			rt.Eventf(corev1.EventTypeWarning, "InternalError", "trigger coffee/take-order: create or update consumer %s: %s", consumerName, noStream),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newTrigger(reconcilerFinalizer, withServiceSubscriber, withStatus(brokerReady, subscriberResolved(serviceURL), dlsNotConfigured,
				et.WithTriggerNotSubscribed(reconciler.ReasonConsumerFailed, "consumer "+consumerName+" on stream KNATIVE_BROKER_coffee_default: "+noStream))),
		}},
	}, {
		Name: "a deleted Trigger's consumer is deleted, then its finalizer removed",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber, et.WithTriggerDeleted),
		},
		OtherTestData:  map[string]any{setupKey: ensureConsumerAsTheDispatcherDoes},
		WantPatches:    []clientgotesting.PatchActionImpl{patchFinalizers()},
		WantEvents:     []string{finalizerEvent},
		PostConditions: []func(*testing.T, *rt.TableRow){noConsumers},
	}, {
		Name: "a deleted Trigger whose Broker and stream are gone loses its finalizer",
		Key:  testKey,
		Objects: []runtime.Object{
			newTrigger(reconcilerFinalizer, withServiceSubscriber, et.WithTriggerDeleted),
		},
		WantPatches: []clientgotesting.PatchActionImpl{patchFinalizers()},
		WantEvents:  []string{finalizerEvent},
	}, {
		Name: "a deleted Trigger keeps its finalizer while NATS is down",
		Key:  testKey,
		Objects: []runtime.Object{
			readyBroker(),
			newTrigger(reconcilerFinalizer, withServiceSubscriber, et.WithTriggerDeleted),
		},
		OtherTestData: map[string]any{setupKey: stopNATS},
		WantErr:       true,
		WantEvents: []string{
			rt.Eventf(corev1.EventTypeWarning, "InternalError", "trigger coffee/take-order: delete consumer %s: %s", consumerName, natsDown),
		},
	}}

	table.Test(t, factory(t))
}

const noStream = "nats: API error: code=404 err_code=10059 description=stream not found"

// factory builds, for each row, the generated Trigger reconciler around
// ours, on eventing's fake clients and a JetStream of the row's own.
func factory(t *testing.T) rt.Factory {
	logger := logtesting.TestLogger(t)
	return func(t *testing.T, row *rt.TableRow) (controller.Reconciler, rt.ActionRecorderList, rt.EventList) {
		env := startNATS(t)
		if setup, ok := row.OtherTestData[setupKey].(func(*testing.T, *natsEnv)); ok {
			setup(t, env)
		}
		row.OtherTestData = withEnv(row.OtherTestData, env)
		return et.MakeFactory(func(ctx context.Context, listers *et.Listers, _ configmap.Watcher) controller.Reconciler {
			ctx = addressable.WithDuck(ctx)
			res := resolver.NewURIResolverFromTracker(ctx, tracker.New(func(types.NamespacedName) {}, 0))
			r := reconciler.New(listers.GetBrokerLister(), env.js, res, reconciler.Options{NATSTimeout: 5 * time.Second})
			return triggerreconciler.NewReconciler(ctx, logger, fakeeventingclient.Get(ctx), listers.GetTriggerLister(),
				controller.GetEventRecorder(ctx), r, controller.Options{FinalizerName: reconciler.FinalizerName})
		}, false, logger)(t, row)
	}
}

func envOf(row *rt.TableRow) *natsEnv { return row.OtherTestData[envKey].(*natsEnv) }

// Row setups.

func stopNATS(t *testing.T, e *natsEnv) {
	ensureStream(t, e)
	e.stop(t)
}

// ensureStream makes the Broker's stream as the Broker reconciler would.
func ensureStream(t *testing.T, e *natsEnv) {
	t.Helper()
	cfg := broker.StreamConfig(ref, broker.DefaultStreamOptions())
	if _, err := e.js.CreateOrUpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
}

// ensureConsumerAsTheDispatcherDoes makes the stream and the Trigger's
// consumer with the data plane's own triggers.EnsureConsumer, and
// remembers the consumer for consumerUntouched.
func ensureConsumerAsTheDispatcherDoes(t *testing.T, e *natsEnv) {
	t.Helper()
	ensureStream(t, e)
	trig := newTrigger(withServiceSubscriber)
	if _, err := triggers.EnsureConsumer(context.Background(), e.js, triggers.Config{Trigger: trig, Broker: ref, Concurrency: reconciler.DefaultConcurrency}); err != nil {
		t.Fatal(err)
	}
	e.before = e.consumerInfo(t, ref.StreamName(), consumerName)
}

// Row post-conditions.

func noConsumers(t *testing.T, row *rt.TableRow) {
	if names := envOf(row).consumerNames(t, ref.StreamName()); len(names) != 0 {
		t.Errorf("consumers = %v, want none", names)
	}
}

func wantConsumer(maxAckPending int, ackWait time.Duration) func(*testing.T, *rt.TableRow) {
	return func(t *testing.T, row *rt.TableRow) {
		env := envOf(row)
		if names := env.consumerNames(t, ref.StreamName()); !slices.Equal(names, []string{consumerName}) {
			t.Errorf("consumers = %v, want just %s", names, consumerName)
		}
		info := env.consumerInfo(t, ref.StreamName(), consumerName)
		if info == nil {
			t.Fatalf("consumer %s does not exist", consumerName)
		}
		c := info.Config
		if c.Durable != consumerName || c.AckPolicy != jetstream.AckExplicitPolicy || c.DeliverPolicy != jetstream.DeliverNewPolicy {
			t.Errorf("consumer durable, ack, deliver = %q, %v, %v; want %q, explicit, new", c.Durable, c.AckPolicy, c.DeliverPolicy, consumerName)
		}
		if c.MaxAckPending != maxAckPending || c.AckWait != ackWait {
			t.Errorf("consumer max ack pending, ack wait = %d, %v; want %d, %v", c.MaxAckPending, c.AckWait, maxAckPending, ackWait)
		}
	}
}

// consumerUntouched checks that the consumer ensureConsumerAsTheDispatcherDoes
// made is the only one, with the same creation time and config.
func consumerUntouched(t *testing.T, row *rt.TableRow) {
	env := envOf(row)
	if names := env.consumerNames(t, ref.StreamName()); !slices.Equal(names, []string{consumerName}) {
		t.Errorf("consumers = %v, want just %s", names, consumerName)
	}
	before, after := env.before, env.consumerInfo(t, ref.StreamName(), consumerName)
	if after == nil {
		t.Fatalf("consumer %s is gone", consumerName)
	}
	if !after.Created.Equal(before.Created) {
		t.Errorf("consumer created %v, was %v: it was made again", after.Created, before.Created)
	}
	b, a := before.Config, after.Config
	if a.Description != b.Description || a.AckWait != b.AckWait || a.MaxAckPending != b.MaxAckPending ||
		a.FilterSubject != b.FilterSubject || a.MaxDeliver != b.MaxDeliver || a.DeliverPolicy != b.DeliverPolicy {
		t.Errorf("consumer config changed:\n%+v\nwas\n%+v", a, b)
	}
}

// Objects.

func readyBroker(opts ...et.BrokerOption) *eventingv1.Broker {
	return et.NewBroker(brokerName, testNS, append(append([]et.BrokerOption{
		et.WithBrokerClass(brokerreconciler.ClassName),
		et.WithBrokerGeneration(1),
	}, opts...), func(b *eventingv1.Broker) {
		b.Status.InitializeConditions()
		cs := brokerreconciler.ConditionSet.Manage(&b.Status)
		cs.MarkTrue(brokerreconciler.ConditionConfigParsed)
		cs.MarkTrue(brokerreconciler.ConditionStreamReady)
		cs.MarkTrue(eventingv1.BrokerConditionDeadLetterSinkResolved)
		b.Status.SetAddress(&duckv1.Addressable{URL: mustURL(brokerURL)})
		b.Status.ObservedGeneration = 1
	})...)
}

func withBrokerTimeout(d string) et.BrokerOption {
	return func(b *eventingv1.Broker) {
		if b.Spec.Delivery == nil {
			b.Spec.Delivery = &eventingduckv1.DeliverySpec{}
		}
		b.Spec.Delivery.Timeout = &d
	}
}

func notReadyBroker() *eventingv1.Broker {
	b := readyBroker()
	brokerreconciler.ConditionSet.Manage(&b.Status).MarkFalse(brokerreconciler.ConditionStreamReady,
		brokerreconciler.ReasonNATSUnavailable, "stream KNATIVE_BROKER_coffee_default: %s", natsDown)
	return b
}

func newTrigger(opts ...et.TriggerOption) *eventingv1.Trigger {
	return et.NewTrigger(triggerName, testNS, brokerName, append([]et.TriggerOption{et.WithTriggerGeneration(1)}, opts...)...)
}

func reconcilerFinalizer(t *eventingv1.Trigger) { t.Finalizers = []string{reconciler.FinalizerName} }

func withServiceSubscriber(t *eventingv1.Trigger) {
	t.Spec.Subscriber = duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "v1", Kind: "Service", Name: serviceName}}
}

func withKnativeServiceSubscriber(t *eventingv1.Trigger) {
	t.Spec.Subscriber = duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: serviceName}}
}

func knativeService() runtime.Object {
	return et.NewUnstructured(metav1.GroupVersionKind{Group: "serving.knative.dev", Version: "v1", Kind: "Service"}, serviceName, testNS,
		et.WithUnstructuredAddressable(duckv1.Addressable{URL: mustURL(ksvcURL)}))
}

func sink() duckv1.Destination {
	return duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "v1", Kind: "Service", Name: sinkName}}
}

func withTriggerSink(t *eventingv1.Trigger) { et.WithTriggerDeadLeaderSink(sink())(t) }

// withStatus is the status the reconciler writes: initialized conditions
// with OIDCIdentityCreated and DependencyReady True, the given marks in
// the reconciler's own order, and the observed generation.
func withStatus(marks ...et.TriggerOption) et.TriggerOption {
	return func(t *eventingv1.Trigger) {
		t.Status.InitializeConditions()
		t.Status.MarkDependencySucceeded()
		for _, m := range marks {
			m(t)
		}
		t.Status.ObservedGeneration = t.Generation
	}
}

func brokerReady(t *eventingv1.Trigger) { et.WithTriggerBrokerReady()(t) }

func subscriberResolved(uri string) et.TriggerOption {
	return func(t *eventingv1.Trigger) {
		t.Status.SubscriberURI = mustURL(uri)
		t.Status.MarkSubscriberResolvedSucceeded()
	}
}

func dlsNotConfigured(t *eventingv1.Trigger) { t.Status.MarkDeadLetterSinkNotConfigured() }

func dlsResolved(t *eventingv1.Trigger) {
	t.Status.DeliveryStatus = eventingduckv1.DeliveryStatus{DeadLetterSinkURI: mustURL(sinkURL)}
	t.Status.MarkDeadLetterSinkResolvedSucceeded()
}

func subscribed(t *eventingv1.Trigger) { et.WithTriggerSubscribed()(t) }

func mustURL(s string) *apis.URL {
	u, err := apis.ParseURL(s)
	if err != nil {
		panic(err)
	}
	return u
}

// patchFinalizers is the generated reconciler's merge patch that sets the
// Trigger's finalizers.
func patchFinalizers(finalizers ...string) clientgotesting.PatchActionImpl {
	list := `[]`
	if len(finalizers) == 1 {
		list = `["` + finalizers[0] + `"]`
	}
	a := clientgotesting.PatchActionImpl{}
	a.Namespace = testNS
	a.Name = triggerName
	a.Patch = []byte(`{"metadata":{"finalizers":` + list + `,"resourceVersion":""}}`)
	return a
}

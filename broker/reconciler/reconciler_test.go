package reconciler_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgotesting "k8s.io/client-go/testing"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	fakeeventingclient "knative.dev/eventing/pkg/client/injection/client/fake"
	brokerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/broker"
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
	"github.com/koffeeshop/koffeeshop/broker/reconciler"
)

const (
	testNS     = "coffee"
	brokerName = "orders"
	cmName     = "orders-stream"
	sinkName   = "dead-letters"
	testKey    = testNS + "/" + brokerName

	// What the generated reconciler records when it adds or removes our
	// finalizer.
	finalizerEvent = `Normal FinalizerUpdate Updated "orders" finalizers`

	// The Broker's address and its dead-letter sink's, on the cluster
	// domain TestMain pins.
	brokerURL = "http://koffeeshop-broker-ingress.koffeeshop-system.svc.cluster.local/coffee/orders"
	sinkURL   = "http://dead-letters.coffee.svc.cluster.local"

	// What NATS answers here when the server is down: the control plane
	// does not buffer while disconnected, so the call fails at once.
	natsDown = "nats: outbound buffer limit exceeded"
	// What a single (non-clustered) JetStream answers to 3 replicas.
	tooManyReplicas = "nats: API error: code=500 err_code=10074 description=replicas > 1 not supported in non-clustered mode"
)

var ref = broker.Ref{Namespace: testNS, Name: brokerName}

func TestMain(m *testing.M) {
	// Service host names end in the cluster domain, which Knative reads
	// from /etc/resolv.conf unless CLUSTER_DOMAIN says it.
	os.Setenv("CLUSTER_DOMAIN", "cluster.local")
	eventingv1.RegisterAlternateBrokerConditionSet(reconciler.ConditionSet)
	os.Exit(m.Run())
}

func TestReconcile(t *testing.T) {
	table := rt.TableTest{{
		Name: "bad key",
		Key:  "too/many/parts",
	}, {
		Name: "key not found",
		Key:  testKey,
	}, {
		Name: "a Broker of another class is left alone",
		Key:  testKey,
		Objects: []runtime.Object{
			et.NewBroker(brokerName, testNS, et.WithBrokerClass("MTChannelBasedBroker")),
		},
		PostConditions: []func(*testing.T, *rt.TableRow){noStreams},
	}, {
		Name: "a new Broker gets the finalizer, its stream from the ConfigMap, an address, and is Ready",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(withConfig(cmName)),
			configMap(map[string]string{"replicas": "1", "storage": "memory", "maxAge": "1h", "duplicateWindow": "30s"}),
		},
		WantPatches: []clientgotesting.PatchActionImpl{patchFinalizers(reconciler.FinalizerName)},
		WantEvents:  []string{finalizerEvent},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(withConfig(cmName), withStatus(dlsNotConfigured, configParsed, streamReady, addressed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantStream(broker.StreamOptions{Replicas: 1, Storage: jetstream.MemoryStorage, MaxAge: time.Hour, DuplicateWindow: 30 * time.Second}),
		},
	}, {
		Name: "a Broker without spec.config gets the documented defaults",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, withStatus(dlsNotConfigured, configParsed, streamReady, addressed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantStream(broker.StreamOptions{Replicas: 1, Storage: jetstream.FileStorage, MaxAge: 24 * time.Hour, DuplicateWindow: 2 * time.Minute}),
		},
	}, {
		Name: "keys the ConfigMap leaves out keep their defaults, and other keys are ignored",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withConfig(cmName)),
			configMap(map[string]string{"maxAge": "72h", "channel-template-spec": "kind: InMemoryChannel"}),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, withConfig(cmName), withStatus(dlsNotConfigured, configParsed, streamReady, addressed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantStream(broker.StreamOptions{Replicas: 1, Storage: jetstream.FileStorage, MaxAge: 72 * time.Hour, DuplicateWindow: 2 * time.Minute}),
		},
	}, {
		Name: "a second reconcile of a Ready Broker changes nothing: no status update, no new stream",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withStatus(dlsNotConfigured, configParsed, streamReady, addressed)),
		},
		OtherTestData: map[string]any{setupKey: ensureStreamAsTheIngressDoes},
		PostConditions: []func(*testing.T, *rt.TableRow){
			streamUntouched,
		},
	}, {
		Name: "a changed ConfigMap updates the existing stream",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withConfig(cmName), withStatus(dlsNotConfigured, configParsed, streamReady, addressed)),
			configMap(map[string]string{"maxAge": "1h", "duplicateWindow": "1m"}),
		},
		OtherTestData: map[string]any{setupKey: ensureStreamAsTheIngressDoes},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantStream(broker.StreamOptions{Replicas: 1, Storage: jetstream.FileStorage, MaxAge: time.Hour, DuplicateWindow: time.Minute}),
		},
	}, {
		Name: "a missing ConfigMap is ConfigParsed=False, and no stream is made",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withConfig(cmName)),
		},
		WantEvents: []string{rt.Eventf(corev1.EventTypeWarning, reconciler.ReasonConfigMapNotFound, "ConfigMap coffee/orders-stream does not exist")},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, withConfig(cmName), withStatus(dlsNotConfigured,
				markFalse(reconciler.ConditionConfigParsed, reconciler.ReasonConfigMapNotFound, "ConfigMap coffee/orders-stream does not exist"))),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){noStreams},
	}, {
		Name: "bad values are ConfigParsed=False naming each, and no stream is made",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withConfig(cmName)),
			configMap(map[string]string{"replicas": "three", "storage": "tape", "maxAge": "-1h", "duplicateWindow": "soon"}),
		},
		WantEvents: []string{rt.Eventf(corev1.EventTypeWarning, reconciler.ReasonInvalidConfig, "%s", badValues)},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, withConfig(cmName), withStatus(dlsNotConfigured,
				markFalse(reconciler.ConditionConfigParsed, reconciler.ReasonInvalidConfig, badValues))),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){noStreams},
	}, {
		Name: "spec.config naming something other than a ConfigMap is ConfigParsed=False",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, et.WithBrokerConfig(&duckv1.KReference{
				APIVersion: "messaging.knative.dev/v1", Kind: "InMemoryChannel", Namespace: testNS, Name: "imc",
			})),
		},
		WantEvents: []string{rt.Eventf(corev1.EventTypeWarning, reconciler.ReasonUnsupportedConfig, "%s", notAConfigMap)},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, et.WithBrokerConfig(&duckv1.KReference{
				APIVersion: "messaging.knative.dev/v1", Kind: "InMemoryChannel", Namespace: testNS, Name: "imc",
			}), withStatus(dlsNotConfigured, markFalse(reconciler.ConditionConfigParsed, reconciler.ReasonUnsupportedConfig, notAConfigMap))),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){noStreams},
	}, {
		Name: "NATS down: StreamReady=False, Ready=False and an error to retry",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(),
		},
		OtherTestData: map[string]any{setupKey: stopNATS},
		WantErr:       true,
		WantPatches:   []clientgotesting.PatchActionImpl{patchFinalizers(reconciler.FinalizerName)},
		WantEvents: []string{
			finalizerEvent,
			rt.Eventf(corev1.EventTypeWarning, "InternalError", "broker coffee/orders: create or update stream KNATIVE_BROKER_coffee_orders: %s", natsDown),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(withStatus(dlsNotConfigured, configParsed,
				markFalse(reconciler.ConditionStreamReady, reconciler.ReasonNATSUnavailable, "stream KNATIVE_BROKER_coffee_orders: "+natsDown))),
		}},
	}, {
		Name: "JetStream refusing the stream is StreamFailed, and an error to retry",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withConfig(cmName)),
			configMap(map[string]string{"replicas": "3"}),
		},
		WantErr: true,
		WantEvents: []string{
			rt.Eventf(corev1.EventTypeWarning, "InternalError", "broker coffee/orders: create or update stream KNATIVE_BROKER_coffee_orders: %s", tooManyReplicas),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, withConfig(cmName), withStatus(dlsNotConfigured, configParsed,
				markFalse(reconciler.ConditionStreamReady, reconciler.ReasonStreamFailed, "stream KNATIVE_BROKER_coffee_orders: "+tooManyReplicas))),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){noStreams},
	}, {
		Name: "a dead-letter sink Service resolves into status.deliveryStatus",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withSink()),
			et.NewService(sinkName, testNS),
		},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, withSink(), withStatus(dlsResolved, configParsed, streamReady, addressed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantStream(broker.DefaultStreamOptions()),
		},
	}, {
		Name: "a missing dead-letter sink is DeadLetterSinkResolved=False; the stream is still made",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, withSink()),
		},
		WantEvents: []string{rt.Eventf(corev1.EventTypeWarning, reconciler.ReasonDeadLetterSinkResolveFailed, "dead-letter sink: %s", sinkMissing)},
		WantStatusUpdates: []clientgotesting.UpdateActionImpl{{
			Object: newBroker(reconcilerFinalizer, withSink(), withStatus(
				markFalse(eventingv1.BrokerConditionDeadLetterSinkResolved, reconciler.ReasonDeadLetterSinkResolveFailed, sinkMissing),
				configParsed, streamReady, addressed)),
		}},
		PostConditions: []func(*testing.T, *rt.TableRow){
			wantStream(broker.DefaultStreamOptions()),
		},
	}, {
		Name: "a deleted Broker's stream is deleted, then its finalizer removed",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, et.WithBrokerDeletionTimestamp, withStatus(dlsNotConfigured, configParsed, streamReady, addressed)),
		},
		OtherTestData:  map[string]any{setupKey: ensureStreamAsTheIngressDoes},
		WantPatches:    []clientgotesting.PatchActionImpl{patchFinalizers()},
		WantEvents:     []string{finalizerEvent},
		PostConditions: []func(*testing.T, *rt.TableRow){noStreams},
	}, {
		Name: "a deleted Broker whose stream is already gone loses its finalizer",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, et.WithBrokerDeletionTimestamp),
		},
		WantPatches: []clientgotesting.PatchActionImpl{patchFinalizers()},
		WantEvents:  []string{finalizerEvent},
	}, {
		Name: "a deleted Broker keeps its finalizer while NATS is down",
		Key:  testKey,
		Objects: []runtime.Object{
			newBroker(reconcilerFinalizer, et.WithBrokerDeletionTimestamp),
		},
		OtherTestData: map[string]any{setupKey: stopNATS},
		WantErr:       true,
		WantEvents: []string{
			rt.Eventf(corev1.EventTypeWarning, "InternalError", "broker coffee/orders: delete stream KNATIVE_BROKER_coffee_orders: %s", natsDown),
		},
	}, {
		Name: "another class's Broker being deleted is left alone",
		Key:  testKey,
		Objects: []runtime.Object{
			et.NewBroker(brokerName, testNS, et.WithBrokerClass("MTChannelBasedBroker"),
				et.WithBrokerFinalizers("brokers.eventing.knative.dev"), et.WithBrokerDeletionTimestamp),
		},
		OtherTestData:  map[string]any{setupKey: ensureStreamAsTheIngressDoes},
		PostConditions: []func(*testing.T, *rt.TableRow){streamUntouched},
	}}

	table.Test(t, factory(t))
}

// The messages of the rows above.
const (
	badValues = `ConfigMap coffee/orders-stream: replicas: "three" is not a whole number from 1 to 5; ` +
		`storage: "tape" is neither file nor memory; maxAge: "-1h" is not a duration of 0 or more (e.g. 24h); ` +
		`duplicateWindow: "soon" is not a positive duration (e.g. 2m)`
	notAConfigMap = `spec.config must name a v1 ConfigMap, not messaging.knative.dev/v1 InMemoryChannel "imc"`
	sinkMissing   = `failed to get object coffee/dead-letters: services "dead-letters" not found`
)

// factory builds, for each row, the generated Broker reconciler around
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
			noop := func(types.NamespacedName) {}
			r := reconciler.New(env.js, listers.GetConfigMapLister(),
				resolver.NewURIResolverFromTracker(ctx, tracker.New(noop, 0)), tracker.New(noop, 0),
				reconciler.Options{NATSTimeout: 5 * time.Second})
			return brokerreconciler.NewReconciler(ctx, logger, fakeeventingclient.Get(ctx), listers.GetBrokerLister(),
				controller.GetEventRecorder(ctx), r, reconciler.ClassName, controller.Options{FinalizerName: reconciler.FinalizerName})
		}, false, logger)(t, row)
	}
}

func envOf(row *rt.TableRow) *natsEnv { return row.OtherTestData[envKey].(*natsEnv) }

// Row setups.

func stopNATS(t *testing.T, e *natsEnv) { e.stop(t) }

// ensureStreamAsTheIngressDoes creates the stream with the data plane's
// own broker.EnsureStream and its defaults, and remembers it for
// streamUntouched.
func ensureStreamAsTheIngressDoes(t *testing.T, e *natsEnv) {
	t.Helper()
	if _, err := broker.EnsureStream(context.Background(), e.js, ref, broker.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	e.before = e.streamInfo(t, ref.StreamName())
}

// Row post-conditions.

func noStreams(t *testing.T, row *rt.TableRow) {
	if names := envOf(row).streamNames(t); len(names) != 0 {
		t.Errorf("streams = %v, want none", names)
	}
}

func wantStream(s broker.StreamOptions) func(*testing.T, *rt.TableRow) {
	return func(t *testing.T, row *rt.TableRow) {
		info := envOf(row).streamInfo(t, ref.StreamName())
		if info == nil {
			t.Fatalf("stream %s does not exist", ref.StreamName())
		}
		c := info.Config
		if c.Replicas != s.Replicas || c.Storage != s.Storage || c.MaxAge != s.MaxAge || c.Duplicates != s.DuplicateWindow {
			t.Errorf("stream replicas, storage, max age, duplicates = %d, %v, %v, %v; want %d, %v, %v, %v",
				c.Replicas, c.Storage, c.MaxAge, c.Duplicates, s.Replicas, s.Storage, s.MaxAge, s.DuplicateWindow)
		}
		if !slices.Equal(c.Subjects, []string{ref.Subject()}) {
			t.Errorf("stream subjects = %v, want [%s]", c.Subjects, ref.Subject())
		}
	}
}

// streamUntouched checks that the stream ensureStreamAsTheIngressDoes
// made is the only one, with the same creation time and config.
func streamUntouched(t *testing.T, row *rt.TableRow) {
	env := envOf(row)
	if names := env.streamNames(t); !slices.Equal(names, []string{ref.StreamName()}) {
		t.Errorf("streams = %v, want just %s", names, ref.StreamName())
	}
	before, after := env.before, env.streamInfo(t, ref.StreamName())
	if after == nil {
		t.Fatalf("stream %s is gone", ref.StreamName())
	}
	if !after.Created.Equal(before.Created) {
		t.Errorf("stream created %v, was %v: it was made again", after.Created, before.Created)
	}
	if after.Config.Description != before.Config.Description || after.Config.MaxAge != before.Config.MaxAge ||
		after.Config.Duplicates != before.Config.Duplicates || after.Config.Storage != before.Config.Storage ||
		after.Config.Replicas != before.Config.Replicas || after.Config.Retention != before.Config.Retention ||
		after.Config.Discard != before.Config.Discard || !slices.Equal(after.Config.Subjects, before.Config.Subjects) {
		t.Errorf("stream config changed:\n%+v\nwas\n%+v", after.Config, before.Config)
	}
}

// Objects.

func newBroker(opts ...et.BrokerOption) *eventingv1.Broker {
	return et.NewBroker(brokerName, testNS, append([]et.BrokerOption{
		et.WithBrokerClass(reconciler.ClassName),
		et.WithBrokerGeneration(1),
	}, opts...)...)
}

func reconcilerFinalizer(b *eventingv1.Broker) { b.Finalizers = []string{reconciler.FinalizerName} }

func withConfig(name string) et.BrokerOption {
	return et.WithBrokerConfig(&duckv1.KReference{APIVersion: "v1", Kind: "ConfigMap", Namespace: testNS, Name: name})
}

func withSink() et.BrokerOption {
	return et.WithDeadLeaderSink(duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "v1", Kind: "Service", Name: sinkName}})
}

func configMap(data map[string]string) *corev1.ConfigMap {
	return et.NewConfigMap(cmName, testNS, et.WithConfigMapData(data))
}

// withStatus is the status the reconciler writes: initialized conditions,
// then the given marks in the reconciler's own order, then the observed
// generation.
func withStatus(marks ...et.BrokerOption) et.BrokerOption {
	return func(b *eventingv1.Broker) {
		b.Status.InitializeConditions()
		for _, m := range marks {
			m(b)
		}
		b.Status.ObservedGeneration = b.Generation
	}
}

func configParsed(b *eventingv1.Broker) {
	reconciler.ConditionSet.Manage(&b.Status).MarkTrue(reconciler.ConditionConfigParsed)
}

func streamReady(b *eventingv1.Broker) {
	reconciler.ConditionSet.Manage(&b.Status).MarkTrue(reconciler.ConditionStreamReady)
}

func dlsNotConfigured(b *eventingv1.Broker) { b.Status.MarkDeadLetterSinkNotConfigured() }

func dlsResolved(b *eventingv1.Broker) {
	b.Status.MarkDeadLetterSinkResolvedSucceeded(eventingduckv1.DeliveryStatus{DeadLetterSinkURI: mustURL(sinkURL)})
}

func addressed(b *eventingv1.Broker) {
	b.Status.SetAddress(&duckv1.Addressable{URL: mustURL(brokerURL)})
	b.Status.Addresses = []duckv1.Addressable{*b.Status.Address}
}

func markFalse(c apis.ConditionType, reason, msg string) et.BrokerOption {
	return func(b *eventingv1.Broker) {
		reconciler.ConditionSet.Manage(&b.Status).MarkFalse(c, reason, "%s", msg)
	}
}

func mustURL(s string) *apis.URL {
	u, err := apis.ParseURL(s)
	if err != nil {
		panic(err)
	}
	return u
}

// patchFinalizers is the generated reconciler's merge patch that sets the
// Broker's finalizers.
func patchFinalizers(finalizers ...string) clientgotesting.PatchActionImpl {
	list := `[]`
	if len(finalizers) == 1 {
		list = `["` + finalizers[0] + `"]`
	}
	a := clientgotesting.PatchActionImpl{}
	a.Namespace = testNS
	a.Name = brokerName
	a.Patch = []byte(`{"metadata":{"finalizers":` + list + `,"resourceVersion":""}}`)
	return a
}

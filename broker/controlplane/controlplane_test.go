package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	fakeeventingclient "knative.dev/eventing/pkg/client/injection/client/fake"
	_ "knative.dev/eventing/pkg/client/injection/informers/eventing/v1/broker/fake"
	_ "knative.dev/eventing/pkg/client/injection/informers/eventing/v1/trigger/fake"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	_ "knative.dev/pkg/client/injection/ducks/duck/v1/addressable/fake"
	fakekubeclient "knative.dev/pkg/client/injection/kube/client/fake"
	_ "knative.dev/pkg/client/injection/kube/informers/core/v1/configmap/fake"
	fakedynamicclient "knative.dev/pkg/injection/clients/dynamicclient/fake"
	"knative.dev/pkg/logging"
	logtesting "knative.dev/pkg/logging/testing"
	rt "knative.dev/pkg/reconciler/testing"
	"knative.dev/pkg/system"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/triggers"
	triggerreconciler "github.com/koffeeshop/koffeeshop/triggers/reconciler"
)

const ns = "coffee"

func TestMain(m *testing.M) {
	// Service host names end in the cluster domain, which Knative reads
	// from /etc/resolv.conf unless CLUSTER_DOMAIN says it.
	os.Setenv("CLUSTER_DOMAIN", "cluster.local")
	os.Exit(m.Run())
}

// The control plane end to end: both controllers, leader election and
// injection on Knative's fake clients, against a real JetStream. Brokers
// and Triggers of our class get their stream and consumer and become
// Ready; another class's are not touched; deleting ours deletes the
// consumer and the stream.
func TestRun(t *testing.T) {
	srv := testkit.StartNATS(t)
	ctx, cancel, informers := rt.SetupFakeContextWithCancel(t)
	defer cancel()
	kube, ev := fakekubeclient.Get(ctx), fakeeventingclient.Get(ctx)

	mustCreate(t, func() error {
		_, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "orders-stream"},
			Data:       map[string]string{"storage": "memory", "maxAge": "1h"},
		}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := ev.EventingV1().Brokers(ns).Create(ctx, newBroker("orders", brokerreconciler.ClassName, "orders-stream"), metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := ev.EventingV1().Brokers(ns).Create(ctx, newBroker("theirs", "MTChannelBasedBroker", ""), metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := ev.EventingV1().Triggers(ns).Create(ctx, newTrigger("take-order", "orders"), metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := ev.EventingV1().Triggers(ns).Create(ctx, newTrigger("their-trigger", "theirs"), metav1.CreateOptions{})
		return err
	})

	// Start the informers the way Knative's own tests do, waiting until
	// their watches are set up, so that no update falls between a list
	// and its watch; run starts them again, which is a no-op.
	waitInformers, err := rt.RunAndSyncInformers(ctx, informers...)
	if err != nil {
		t.Fatal(err)
	}
	defer waitInformers()

	js := connect(t, ctx, srv.ClientURL())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, informers, js, Options{
			LeaderElection: LeaderElection{LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second},
		})
	}()

	ref := broker.Ref{Namespace: ns, Name: "orders"}
	testkit.Eventually(t, 60*time.Second, "Broker coffee/orders Ready", func() error {
		return ready(ev.EventingV1().Brokers(ns).Get(ctx, "orders", metav1.GetOptions{}))
	})
	info, err := js.Stream(ctx, ref.StreamName())
	if err != nil {
		t.Fatalf("stream of a Ready Broker: %v", err)
	}
	if got := info.CachedInfo().Config.Storage; got != jetstream.MemoryStorage {
		t.Errorf("stream storage = %v, want memory, as the ConfigMap says", got)
	}
	testkit.Eventually(t, 60*time.Second, "Trigger coffee/take-order Ready", func() error {
		return ready(ev.EventingV1().Triggers(ns).Get(ctx, "take-order", metav1.GetOptions{}))
	})
	consumer := triggers.ConsumerName(newTrigger("take-order", "orders"))
	if _, err := js.Consumer(ctx, ref.StreamName(), consumer); err != nil {
		t.Fatalf("consumer of a Ready Trigger: %v", err)
	}

	// Leader election ran: each controller holds a lease.
	leases, err := kube.CoordinationV1().Leases(system.Namespace()).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, l := range leases.Items {
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			held++
		}
	}
	if held != 2 {
		t.Errorf("%d held leases, want one per controller (2)", held)
	}

	// Everything was enqueued at start and ours is done: another class's
	// Broker and Trigger have neither our finalizer nor a status from us.
	theirs, err := ev.EventingV1().Brokers(ns).Get(ctx, "theirs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(theirs.Finalizers) != 0 || len(theirs.Status.Conditions) != 0 {
		t.Errorf("another class's Broker was touched: finalizers %v, conditions %v", theirs.Finalizers, theirs.Status.Conditions)
	}
	theirTrigger, err := ev.EventingV1().Triggers(ns).Get(ctx, "their-trigger", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(theirTrigger.Finalizers) != 0 || len(theirTrigger.Status.Conditions) != 0 {
		t.Errorf("a Trigger on another class's Broker was touched: finalizers %v, conditions %v", theirTrigger.Finalizers, theirTrigger.Status.Conditions)
	}

	// A Broker whose ConfigMap comes later, and a Trigger whose subscriber
	// comes later: the trackers reconcile them again when those appear.
	mustCreate(t, func() error {
		_, err := ev.EventingV1().Brokers(ns).Create(ctx, newBroker("late", brokerreconciler.ClassName, "late-stream"), metav1.CreateOptions{})
		return err
	})
	testkit.Eventually(t, 60*time.Second, "Broker coffee/late ConfigMapNotFound", func() error {
		return condition(ev.EventingV1().Brokers(ns).Get(ctx, "late", metav1.GetOptions{}))(
			brokerreconciler.ConditionConfigParsed, corev1.ConditionFalse, brokerreconciler.ReasonConfigMapNotFound)
	})
	mustCreate(t, func() error {
		_, err := kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "late-stream"},
		}, metav1.CreateOptions{})
		return err
	})
	testkit.Eventually(t, 60*time.Second, "Broker coffee/late Ready once its ConfigMap exists", func() error {
		return ready(ev.EventingV1().Brokers(ns).Get(ctx, "late", metav1.GetOptions{}))
	})

	late := newTrigger("late-subscriber", "orders")
	late.Spec.Subscriber = duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "v1", Kind: "Service", Name: "prepare-beverage"}}
	mustCreate(t, func() error {
		_, err := ev.EventingV1().Triggers(ns).Create(ctx, late, metav1.CreateOptions{})
		return err
	})
	testkit.Eventually(t, 60*time.Second, "Trigger coffee/late-subscriber SubscriberResolveFailed", func() error {
		return condition(ev.EventingV1().Triggers(ns).Get(ctx, "late-subscriber", metav1.GetOptions{}))(
			eventingv1.TriggerConditionSubscriberResolved, corev1.ConditionFalse, triggerreconciler.ReasonSubscriberResolveFailed)
	})
	// The resolver watches Services through the dynamic client.
	services := fakedynamicclient.Get(ctx).Resource(corev1.SchemeGroupVersion.WithResource("services")).Namespace(ns)
	svc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Service",
		"metadata": map[string]any{"namespace": ns, "name": "prepare-beverage"},
	}}
	if _, err := services.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	touched := time.Now()
	testkit.Eventually(t, 60*time.Second, "Trigger coffee/late-subscriber Ready once its Service exists", func() error {
		err := ready(ev.EventingV1().Triggers(ns).Get(ctx, "late-subscriber", metav1.GetOptions{}))
		if err != nil && time.Since(touched) > 5*time.Second {
			// A fake watch can miss an event that lands between its
			// informer's list and watch; a real one does not. Change the
			// Service again rather than flake.
			touched = time.Now()
			svc.SetLabels(map[string]string{"touched": touched.Format("150405.000")})
			if _, uerr := services.Update(ctx, svc, metav1.UpdateOptions{}); uerr != nil {
				t.Fatal(uerr)
			}
		}
		return err
	})
	if got, _ := ev.EventingV1().Triggers(ns).Get(ctx, "late-subscriber", metav1.GetOptions{}); got.Status.SubscriberURI.String() != "http://prepare-beverage.coffee.svc.cluster.local" {
		t.Errorf("subscriberUri = %s", got.Status.SubscriberURI)
	}

	// Deleting: the fake API server keeps an object whose finalizers are
	// removed, so wait for that, then check JetStream.
	markDeleted(t, func() error {
		tr, err := ev.EventingV1().Triggers(ns).Get(ctx, "take-order", metav1.GetOptions{})
		if err != nil {
			return err
		}
		tr.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		_, err = ev.EventingV1().Triggers(ns).Update(ctx, tr, metav1.UpdateOptions{})
		return err
	})
	testkit.Eventually(t, 60*time.Second, "Trigger coffee/take-order finalized", func() error {
		return finalized(ev.EventingV1().Triggers(ns).Get(ctx, "take-order", metav1.GetOptions{}))
	})
	if _, err := js.Consumer(ctx, ref.StreamName(), consumer); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("consumer of a deleted Trigger: %v, want not found", err)
	}

	markDeleted(t, func() error {
		b, err := ev.EventingV1().Brokers(ns).Get(ctx, "orders", metav1.GetOptions{})
		if err != nil {
			return err
		}
		b.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		_, err = ev.EventingV1().Brokers(ns).Update(ctx, b, metav1.UpdateOptions{})
		return err
	})
	testkit.Eventually(t, 60*time.Second, "Broker coffee/orders finalized", func() error {
		return finalized(ev.EventingV1().Brokers(ns).Get(ctx, "orders", metav1.GetOptions{}))
	})
	if _, err := js.Stream(ctx, ref.StreamName()); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream of a deleted Broker: %v, want not found", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
}

// A NATS that is not there when the controller starts is no crash: the
// Broker says NATSUnavailable, and becomes Ready once NATS is up, as the
// workqueue retries with backoff.
func TestRunWithNATSDownAtStart(t *testing.T) {
	port := freePort(t)
	ctx, cancel, informers := rt.SetupFakeContextWithCancel(t)
	defer cancel()
	ev := fakeeventingclient.Get(ctx)
	mustCreate(t, func() error {
		_, err := ev.EventingV1().Brokers(ns).Create(ctx, newBroker("orders", brokerreconciler.ClassName, ""), metav1.CreateOptions{})
		return err
	})
	waitInformers, err := rt.RunAndSyncInformers(ctx, informers...)
	if err != nil {
		t.Fatal(err)
	}
	defer waitInformers()

	js := connect(t, ctx, fmt.Sprintf("nats://127.0.0.1:%d", port))
	done := make(chan error, 1)
	go func() { done <- run(ctx, informers, js, Options{}) }()

	testkit.Eventually(t, 60*time.Second, "Broker coffee/orders NATSUnavailable", func() error {
		b, err := ev.EventingV1().Brokers(ns).Get(ctx, "orders", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := b.Status.GetCondition(brokerreconciler.ConditionStreamReady)
		if c == nil || !c.IsFalse() || c.Reason != brokerreconciler.ReasonNATSUnavailable {
			return fmt.Errorf("StreamReady is %+v", c)
		}
		if r := b.Status.GetTopLevelCondition(); r == nil || !r.IsFalse() {
			return fmt.Errorf("Ready is %+v", r)
		}
		return nil
	})

	testkit.StartNATS(t, testkit.Port(port))
	testkit.Eventually(t, 60*time.Second, "Broker coffee/orders Ready once NATS is up", func() error {
		return ready(ev.EventingV1().Brokers(ns).Get(ctx, "orders", metav1.GetOptions{}))
	})
	if _, err := js.Stream(ctx, broker.Ref{Namespace: ns, Name: "orders"}.StreamName()); err != nil {
		t.Errorf("stream: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

// Run on Knative's real injection: unusable options are errors, and an
// API server that cannot be reached ends Run with an error when its
// context does, not with a panic (every informer and client the
// controllers ask injection for is registered).
func TestRunErrors(t *testing.T) {
	srv := testkit.StartNATS(t)
	ctx := logtesting.TestContextWithLogger(t)
	unreachable := &rest.Config{Host: "http://127.0.0.1:1"}
	for _, tc := range []struct {
		name    string
		o       Options
		env     string
		wantErr string
	}{
		{name: "no REST config", o: Options{NATS: natsconn.Options{URL: srv.ClientURL()}}, wantErr: "REST config is required"},
		{name: "no system namespace", o: Options{KubeConfig: unreachable, NATS: natsconn.Options{URL: srv.ClientURL()}}, env: "-",
			wantErr: "SYSTEM_NAMESPACE must name"},
		{name: "no NATS URL", o: Options{KubeConfig: unreachable}, wantErr: "NATS URL is required"},
		{name: "a certificate without its key", o: Options{KubeConfig: unreachable, NATS: natsconn.Options{URL: srv.ClientURL(), CertFile: "tls.crt"}},
			wantErr: "both its certificate and its key"},
		{name: "a CA file that is not there", o: Options{KubeConfig: unreachable, NATS: natsconn.Options{URL: srv.ClientURL(), CAFile: "/nonexistent/ca.crt"}},
			wantErr: "connect to NATS"},
		{name: "an unreachable API server", o: Options{KubeConfig: unreachable, NATS: natsconn.Options{URL: srv.ClientURL()}},
			wantErr: "start informers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env == "-" {
				t.Setenv(system.NamespaceEnvKey, "")
			}
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			err := Run(ctx, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Run() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// connect connects as Run does.
func connect(t *testing.T, ctx context.Context, url string) jetstream.JetStream {
	t.Helper()
	nc, err := natsconn.Connect(natsconn.Options{URL: url}, "koffeeshop-controller-test", zapLogger{logging.FromContext(ctx)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newBroker(name, class, config string) *eventingv1.Broker {
	b := &eventingv1.Broker{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name, Generation: 1,
		Annotations: map[string]string{brokerreconciler.ClassAnnotationKey: class},
	}}
	if config != "" {
		b.Spec.Config = &duckv1.KReference{APIVersion: "v1", Kind: "ConfigMap", Namespace: ns, Name: config}
	}
	return b
}

func newTrigger(name, brokerName string) *eventingv1.Trigger {
	return &eventingv1.Trigger{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec: eventingv1.TriggerSpec{
			Broker:     brokerName,
			Subscriber: duckv1.Destination{URI: apis.HTTP("take-order.coffee.svc.cluster.local")},
		},
	}
}

type readyish interface {
	GetStatus() *duckv1.Status
	GetGeneration() int64
}

// ready says why obj is not Ready with its generation observed, or nil.
func ready[T readyish](obj T, err error) error {
	if err != nil {
		return err
	}
	s := obj.GetStatus()
	if s.ObservedGeneration != obj.GetGeneration() {
		return fmt.Errorf("observed generation %d, generation %d", s.ObservedGeneration, obj.GetGeneration())
	}
	if c := s.GetCondition(apis.ConditionReady); c == nil || !c.IsTrue() {
		return fmt.Errorf("not Ready: %+v", s.Conditions)
	}
	return nil
}

// condition says why obj's condition c is not status with reason, or nil.
func condition[T readyish](obj T, err error) func(c apis.ConditionType, status corev1.ConditionStatus, reason string) error {
	return func(c apis.ConditionType, status corev1.ConditionStatus, reason string) error {
		if err != nil {
			return err
		}
		got := obj.GetStatus().GetCondition(c)
		if got == nil || got.Status != status || got.Reason != reason {
			return fmt.Errorf("%s is %+v, want %s %s", c, got, status, reason)
		}
		return nil
	}
}

// finalized says why obj still has finalizers, or nil.
func finalized[T metav1.Object](obj T, err error) error {
	if err != nil {
		return err
	}
	if f := obj.GetFinalizers(); len(f) != 0 {
		return fmt.Errorf("finalizers %v", f)
	}
	return nil
}

func mustCreate(t *testing.T, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatal(err)
	}
}

// markDeleted retries an update that may conflict with the controller's.
func markDeleted(t *testing.T, update func() error) {
	t.Helper()
	testkit.Eventually(t, 60*time.Second, "deletion marked", func() error {
		err := update()
		if apierrs.IsConflict(err) {
			return err
		}
		if err != nil {
			t.Fatal(err)
		}
		return nil
	})
}

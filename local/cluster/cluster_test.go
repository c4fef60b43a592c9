package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingclient "knative.dev/eventing/pkg/client/clientset/versioned"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/kubeapi"
	"github.com/koffeeshop/koffeeshop/triggers"
)

const (
	system       = "koffeeshop-system"
	shopNS       = "default"
	controllerSA = "koffeeshop-controller"
	ingressSA    = "koffeeshop-broker-ingress"
	dispatchSA   = "koffeeshop-trigger-dispatcher"
)

// cluster is the shop on a real API server: the class's three processes,
// each as its ServiceAccount from config/, the functions under the
// Serving stand-in, and a real JetStream.
type cluster struct {
	t        *testing.T
	api      *kubeapi.Server
	kube     kubernetes.Interface
	eventing eventingclient.Interface
	serving  *serving
	js       jetstream.JetStream
	natsURL  string
	bins     string

	controller, ingress, dispatcher *proc
	ingressURL                      string
	collector                       *testkit.Sink
}

func TestClusterPath(t *testing.T) {
	c := startCluster(t)
	t.Run("Ready", c.testReady)
	t.Run("OrderFlows", c.testOrderFlows)
	t.Run("MissingSubscriber", c.testMissingSubscriber)
	t.Run("FilterEdit", c.testFilterEdit)
	t.Run("DispatcherKill9", c.testDispatcherKill9)
	t.Run("ControllerRestart", c.testControllerRestart)
	t.Run("Deletes", c.testDeletes)
	t.Run("RBAC", c.testRBAC)
	t.Run("BadObjects", c.testBadObjects)
}

func startCluster(t *testing.T) *cluster {
	api := kubeapi.ForTest(t)
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL())
	c := &cluster{
		t: t, api: api, js: js, natsURL: srv.ClientURL(),
		kube:     kubernetes.NewForConfigOrDie(api.Config),
		eventing: eventingclient.NewForConfigOrDie(api.Config),
		bins: build(t, "./broker/cmd/controller", "./broker/cmd/ingress", "./triggers/cmd/dispatcher",
			"./functions/take-order", "./functions/prepare-beverage", "./functions/notify"),
	}
	// `ko apply -f config/`, less the images: no kubelet runs them.
	newApplier(t, api.Config).applyAll(t, objects(t, configDir(t)))

	c.startController()
	port := freePort(t)
	c.ingressURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	c.ingress = start(t, "ingress", filepath.Join(c.bins, "ingress"), c.env(ingressSA),
		"-addr", fmt.Sprintf("127.0.0.1:%d", port), "-probe-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	c.startDispatcher()
	c.serving = &serving{client: servingclient.NewForConfigOrDie(api.Config), bins: c.bins,
		env: []string{"K_SINK=" + c.ingressURL + "/" + shopNS + "/default"}}
	for _, fn := range []string{"take-order", "prepare-beverage", "notify"} {
		c.serving.serve(t, shopNS, fn)
	}
	c.collector = testkit.NewSink(t)
	c.createTrigger(t, "observer", nil, duckv1.Destination{URI: apis.HTTP(strings.TrimPrefix(c.collector.URL, "http://"))})
	return c
}

// env is what a process of the class gets: NATS, and a kubeconfig as
// its ServiceAccount.
func (c *cluster) env(sa string) []string {
	return []string{
		"NATS_URL=" + c.natsURL,
		"KUBECONFIG=" + kubeconfigAs(c.t, c.api, system, sa),
		"SYSTEM_NAMESPACE=" + system,
	}
}

func (c *cluster) startController() {
	c.controller = start(c.t, "controller", filepath.Join(c.bins, "controller"), c.env(controllerSA),
		"-probe-port", fmt.Sprint(freePort(c.t)), "-lease-duration", "4s", "-renew-deadline", "3s", "-retry-period", "500ms")
}

func (c *cluster) startDispatcher() {
	c.dispatcher = start(c.t, "dispatcher", filepath.Join(c.bins, "dispatcher"), c.env(dispatchSA),
		"-probe-addr", fmt.Sprintf("127.0.0.1:%d", freePort(c.t)))
}

func configDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(moduleRoot(t), "config")
}

// ready waits until get's object has Ready=True at its generation.
func ready(t *testing.T, what string, timeout time.Duration, get func() (duckv1.KRShaped, error)) duckv1.KRShaped {
	t.Helper()
	var obj duckv1.KRShaped
	testkit.Eventually(t, timeout, what+" Ready", func() error {
		var err error
		if obj, err = get(); err != nil {
			return err
		}
		st := obj.GetStatus()
		c := st.GetCondition(apis.ConditionReady)
		if c != nil && c.IsTrue() && st.ObservedGeneration == obj.GetGeneration() {
			return nil
		}
		if c != nil {
			return fmt.Errorf("%s %s: %s", c.Status, c.Reason, c.Message)
		}
		return errors.New("no Ready condition")
	})
	return obj
}

func (c *cluster) broker(t *testing.T, name string) *eventingv1.Broker {
	t.Helper()
	return ready(t, "Broker "+name, 60*time.Second, func() (duckv1.KRShaped, error) {
		return c.eventing.EventingV1().Brokers(shopNS).Get(context.Background(), name, metav1.GetOptions{})
	}).(*eventingv1.Broker)
}

func (c *cluster) trigger(t *testing.T, name string) *eventingv1.Trigger {
	t.Helper()
	return ready(t, "Trigger "+name, 60*time.Second, func() (duckv1.KRShaped, error) {
		return c.eventing.EventingV1().Triggers(shopNS).Get(context.Background(), name, metav1.GetOptions{})
	}).(*eventingv1.Trigger)
}

func (c *cluster) createTrigger(t *testing.T, name string, filters []eventingv1.SubscriptionsAPIFilter, sub duckv1.Destination) {
	t.Helper()
	tr := &eventingv1.Trigger{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: shopNS},
		Spec:       eventingv1.TriggerSpec{Broker: "default", Filters: filters, Subscriber: sub},
	}
	if _, err := c.eventing.EventingV1().Triggers(shopNS).Create(context.Background(), tr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// notifiedOrders are the order ids that reached customer.notified.
func notifiedOrders(s *testkit.Sink) map[string]int {
	out := map[string]int{}
	for _, e := range s.OfType(coffee.TypeCustomerNotified) {
		var n coffee.Notified
		if json.Unmarshal(e.Data(), &n) == nil {
			out[n.OrderID]++
		}
	}
	return out
}

// postOrder places an order at the ingress process.
func (c *cluster) post(t *testing.T, path, id, typ, body string) int {
	t.Helper()
	resp, _ := testkit.PostBinary(t, c.ingressURL+path, testkit.Event(id, "/cluster-test", typ, body))
	return resp.StatusCode
}

func orderID(id string) string {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/cluster-test")
	return coffee.OrderID(e)
}

func (c *cluster) testReady(t *testing.T) {
	b := c.broker(t, "default")
	if got, want := b.Status.Address.URL.String(), "http://"+ingressSA+"."+system+".svc.cluster.local/default/default"; got != want {
		t.Errorf("Broker address %s, want %s", got, want)
	}
	if b.Status.DeliveryStatus.DeadLetterSinkURI == nil || !strings.HasSuffix(b.Status.DeliveryStatus.DeadLetterSinkURI.Path, "/dead-letter") {
		t.Errorf("Broker dead-letter sink %v, want notify's /dead-letter", b.Status.DeliveryStatus.DeadLetterSinkURI)
	}
	if _, err := c.js.Stream(context.Background(), broker.Ref{Namespace: shopNS, Name: "default"}.StreamName()); err != nil {
		t.Errorf("stream: %v", err)
	}
	for _, name := range []string{"take-order", "prepare-beverage", "notify", "observer"} {
		tr := c.trigger(t, name)
		for _, cond := range []apis.ConditionType{eventingv1.TriggerConditionBroker, eventingv1.TriggerConditionSubscriberResolved,
			eventingv1.TriggerConditionDeadLetterSinkResolved, eventingv1.TriggerConditionDependency, eventingv1.TriggerConditionSubscribed} {
			if cc := tr.Status.GetCondition(cond); cc == nil || !cc.IsTrue() {
				t.Errorf("Trigger %s: %s is %v", name, cond, cc)
			}
		}
		if tr.Status.SubscriberURI == nil || tr.Status.SubscriberURI.Host == "" {
			t.Errorf("Trigger %s: no subscriberUri", name)
		}
		if _, err := c.js.Consumer(context.Background(), broker.Ref{Namespace: shopNS, Name: "default"}.StreamName(), triggers.ConsumerName(tr)); err != nil {
			t.Errorf("Trigger %s: consumer: %v", name, err)
		}
	}
}

func (c *cluster) testOrderFlows(t *testing.T) {
	b := c.broker(t, "default")
	path := b.Status.Address.URL.Path
	if code := c.post(t, path, "flow-1", coffee.TypeOrderPlaced, `{"customer":"ada","beverage":"latte"}`); code != http.StatusAccepted {
		t.Fatalf("order: %d", code)
	}
	want := orderID("flow-1")
	testkit.WaitFor(t, 60*time.Second, "the order reaching customer.notified", func() bool { return notifiedOrders(c.collector)[want] > 0 })
	if code := c.post(t, "/"+shopNS+"/nope", "flow-2", coffee.TypeOrderPlaced, `{}`); code != http.StatusNotFound {
		t.Errorf("an unknown Broker: %d, want 404", code)
	}
}

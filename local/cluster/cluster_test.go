package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingclient "knative.dev/eventing/pkg/client/clientset/versioned"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
	"github.com/koffeeshop/koffeeshop/local/kubeapi"
	"github.com/koffeeshop/koffeeshop/local/natsd"
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
	collector                       *collector
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
	srv, err := natsd.Start(natsd.Options{StoreDir: t.TempDir(), Port: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
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
	c.collector = newCollector(t)
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
	deadline := time.Now().Add(timeout)
	var last string
	for {
		obj, err := get()
		if err == nil {
			st := obj.GetStatus()
			if c := st.GetCondition(apis.ConditionReady); c != nil && c.IsTrue() && st.ObservedGeneration == obj.GetGeneration() {
				return obj
			} else if c != nil {
				last = fmt.Sprintf("%s %s: %s", c.Status, c.Reason, c.Message)
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not Ready after %s: %s", what, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
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

// collector is a catch-all subscriber that keeps every event it gets.
type collector struct {
	*httptest.Server
	mu     sync.Mutex
	events []cloudevents.Event
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.events = append(c.events, *ev)
		c.mu.Unlock()
	}))
	t.Cleanup(c.Close)
	return c
}

// matching returns the events for which keep is true.
func (c *collector) matching(keep func(cloudevents.Event) bool) []cloudevents.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []cloudevents.Event
	for _, e := range c.events {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// notifiedOrders are the order ids that reached customer.notified.
func (c *collector) notifiedOrders() map[string]int {
	out := map[string]int{}
	for _, e := range c.matching(func(e cloudevents.Event) bool { return e.Type() == coffee.TypeCustomerNotified }) {
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
	req, err := http.NewRequest(http.MethodPost, c.ingressURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("ce-specversion", "1.0")
	req.Header.Set("ce-id", id)
	req.Header.Set("ce-source", "/cluster-test")
	req.Header.Set("ce-type", typ)
	req.Header.Set("content-type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
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
	deadline := time.Now().Add(60 * time.Second)
	for c.collector.notifiedOrders()[want] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the order did not reach customer.notified")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := c.post(t, "/"+shopNS+"/nope", "flow-2", coffee.TypeOrderPlaced, `{}`); code != http.StatusNotFound {
		t.Errorf("an unknown Broker: %d, want 404", code)
	}
}

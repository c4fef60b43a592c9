package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go/jetstream"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingclient "knative.dev/eventing/pkg/client/clientset/versioned"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/coffee"
)

var shopBroker = broker.Ref{Namespace: shopNS, Name: "default"}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(string(bytes.TrimSpace(out)))
}

// condition waits until the named Trigger's condition has status want,
// and returns it.
func (c *cluster) triggerCondition(t *testing.T, name string, cond apis.ConditionType, want corev1.ConditionStatus) *apis.Condition {
	t.Helper()
	var cc *apis.Condition
	testkit.Eventually(t, 30*time.Second, fmt.Sprintf("Trigger %s: %s %s", name, cond, want), func() error {
		tr, err := c.eventing.EventingV1().Triggers(shopNS).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cc = tr.Status.GetCondition(cond); cc == nil || cc.Status != want || tr.Status.ObservedGeneration != tr.Generation {
			return fmt.Errorf("%v at generation %d of %d", cc, tr.Status.ObservedGeneration, tr.Generation)
		}
		return nil
	})
	return cc
}

func (c *cluster) testMissingSubscriber(t *testing.T) {
	ksvc := duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: "ghost"}}
	c.createTrigger(t, "ghost", []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": "com.example.ghost"}}}, ksvc)
	cond := c.triggerCondition(t, "ghost", eventingv1.TriggerConditionSubscriberResolved, corev1.ConditionFalse)
	if cond.Reason == "" || !strings.Contains(cond.Message, "ghost") {
		t.Errorf("SubscriberResolved=False says %q: %q; want a reason naming the Service", cond.Reason, cond.Message)
	}
	// The Service appears (Serving's part played here: notify's binary
	// stands in for it).
	svc := &servingv1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ghost", Namespace: shopNS}}
	svc.Spec.Template.Spec.Containers = []corev1.Container{{Image: "ko://github.com/koffeeshop/koffeeshop/functions/notify"}}
	if _, err := c.serving.client.ServingV1().Services(shopNS).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.serving.serveAs(t, shopNS, "ghost", "notify")
	tr := c.trigger(t, "ghost")
	if tr.Status.SubscriberURI == nil {
		t.Fatal("Ready without a subscriberUri")
	}
}

func (c *cluster) testFilterEdit(t *testing.T) {
	sub := testkit.NewSink(t)
	uri := duckv1.Destination{URI: apis.HTTP(strings.TrimPrefix(sub.URL, "http://"))}
	c.createTrigger(t, "watch", []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": "com.example.a"}}}, uri)
	c.trigger(t, "watch")
	of := func(id string) int {
		return len(sub.Matching(func(e cloudevents.Event) bool { return e.ID() == id }))
	}
	// The dispatcher learns of the Trigger from the API server: send
	// until the first event arrives.
	waitDelivered(t, "an event of the filtered type", func(i int) string {
		id := fmt.Sprintf("a-%d", i)
		c.post(t, "/default/default", id, "com.example.a", `{}`)
		return id
	}, of)

	tr, err := c.eventing.EventingV1().Triggers(shopNS).Get(context.Background(), "watch", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr.Spec.Filters = []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": "com.example.b"}}}
	if _, err := c.eventing.EventingV1().Triggers(shopNS).Update(context.Background(), tr, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.trigger(t, "watch")
	waitDelivered(t, "an event of the edited filter's type", func(i int) string {
		id := fmt.Sprintf("b-%d", i)
		c.post(t, "/default/default", id, "com.example.b", `{}`)
		return id
	}, of)
	// From now on the old type no longer passes.
	if code := c.post(t, "/default/default", "a-after", "com.example.a", `{}`); code != http.StatusAccepted {
		t.Fatalf("post: %d", code)
	}
	if code := c.post(t, "/default/default", "b-after", "com.example.b", `{}`); code != http.StatusAccepted {
		t.Fatalf("post: %d", code)
	}
	waitDelivered(t, "b-after", func(int) string { return "b-after" }, of)
	if of("a-after") != 0 {
		t.Error("the old filter still passes events after the edit")
	}
}

// waitDelivered sends with send, once more each time none of the ids it
// sent has arrived yet, until one has.
func waitDelivered(t *testing.T, what string, send func(i int) string, arrived func(id string) int) {
	t.Helper()
	var sent []string
	testkit.Eventually(t, 30*time.Second, what+" delivered", func() error {
		for _, id := range sent {
			if arrived(id) > 0 {
				return nil
			}
		}
		sent = append(sent, send(len(sent)))
		return fmt.Errorf("none of %d sent arrived", len(sent))
	})
}

func (c *cluster) testDispatcherKill9(t *testing.T) {
	const orders = 60
	var want []string
	for i := range orders {
		id := fmt.Sprintf("k9-%d", i)
		if code := c.post(t, "/default/default", id, coffee.TypeOrderPlaced, fmt.Sprintf(`{"customer":"c%d","beverage":"latte"}`, i)); code != http.StatusAccepted {
			t.Fatalf("order %d: %d", i, code)
		}
		want = append(want, orderID(id))
		if i == orders/3 {
			c.dispatcher.kill9()
			c.startDispatcher()
		}
		time.Sleep(20 * time.Millisecond)
	}
	testkit.Eventually(t, 90*time.Second, "dispatcher kill -9: every order reaching customer.notified", func() error {
		got := notifiedOrders(c.collector)
		lost := 0
		for _, id := range want {
			if got[id] == 0 {
				lost++
			}
		}
		if lost > 0 {
			return fmt.Errorf("%d of %d orders not there", lost, orders)
		}
		return nil
	})
	t.Logf("RESULT dispatcher kill -9 on the cluster path: sent %d, accepted %d, delivered %d, lost 0", orders, orders, orders)
}

// jetStreamState lists the streams and every consumer of the shop's stream.
func (c *cluster) jetStreamState(t *testing.T) (streams, consumers []string) {
	t.Helper()
	ctx := context.Background()
	sl := c.js.StreamNames(ctx)
	for n := range sl.Name() {
		streams = append(streams, n)
	}
	st, err := c.js.Stream(ctx, shopBroker.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	cl := st.ConsumerNames(ctx)
	for n := range cl.Name() {
		consumers = append(consumers, n)
	}
	return streams, consumers
}

func (c *cluster) testControllerRestart(t *testing.T) {
	streams, consumers := c.jetStreamState(t)
	c.controller.kill9()
	c.startController()
	// Touch every Trigger so the new controller must reconcile it.
	for _, name := range []string{"take-order", "prepare-beverage", "notify", "observer", "ghost", "watch"} {
		tr, err := c.eventing.EventingV1().Triggers(shopNS).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if tr.Annotations == nil {
			tr.Annotations = map[string]string{}
		}
		tr.Annotations["koffeeshop.dev/touched"] = "1"
		if _, err := c.eventing.EventingV1().Triggers(shopNS).Update(context.Background(), tr, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c.broker(t, "default")
	for _, name := range []string{"take-order", "prepare-beverage", "notify", "observer", "ghost", "watch"} {
		c.trigger(t, name)
	}
	streams2, consumers2 := c.jetStreamState(t)
	if fmt.Sprint(streams2) != fmt.Sprint(streams) || fmt.Sprint(consumers2) != fmt.Sprint(consumers) {
		t.Errorf("after a controller restart: streams %v, consumers %v; before: %v, %v", streams2, consumers2, streams, consumers)
	}
}

func (c *cluster) testDeletes(t *testing.T) {
	ctx := context.Background()
	if err := c.eventing.EventingV1().Triggers(shopNS).Delete(ctx, "ghost", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "consumer trigger_default_ghost", func() error {
		_, err := c.js.Consumer(ctx, shopBroker.StreamName(), "trigger_default_ghost")
		return err
	}, jetstream.ErrConsumerNotFound)
	waitGone(t, "Trigger ghost", func() error {
		_, err := c.eventing.EventingV1().Triggers(shopNS).Get(ctx, "ghost", metav1.GetOptions{})
		return err
	}, nil)

	extra := &eventingv1.Broker{ObjectMeta: metav1.ObjectMeta{Name: "extra", Namespace: shopNS,
		Annotations: map[string]string{eventingv1.BrokerClassAnnotationKey: "KoffeeshopJetStream"}}}
	if _, err := c.eventing.EventingV1().Brokers(shopNS).Create(ctx, extra, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.broker(t, "extra")
	ref := broker.Ref{Namespace: shopNS, Name: "extra"}
	if _, err := c.js.Stream(ctx, ref.StreamName()); err != nil {
		t.Fatalf("stream of the new Broker: %v", err)
	}
	if err := c.eventing.EventingV1().Brokers(shopNS).Delete(ctx, "extra", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "stream of Broker extra", func() error {
		_, err := c.js.Stream(ctx, ref.StreamName())
		return err
	}, jetstream.ErrStreamNotFound)
}

// waitGone waits until check returns want (or a NotFound from the API
// server when want is nil).
func waitGone(t *testing.T, what string, check func() error, want error) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, what+" gone", func() error {
		err := check()
		if (want != nil && errors.Is(err, want)) || (want == nil && apierrors.IsNotFound(err)) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
}

func (c *cluster) testRBAC(t *testing.T) {
	ctx := context.Background()
	can := func(sa, verb, group, resource, sub string) bool {
		t.Helper()
		r, err := c.kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               "system:serviceaccount:" + system + ":" + sa,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + system, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: shopNS, Verb: verb, Group: group, Resource: resource, Subresource: sub},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status.Allowed
	}
	const ev = "eventing.knative.dev"
	reads := map[string][]string{ingressSA: {"brokers"}, dispatchSA: {"brokers", "triggers"}}
	for _, sa := range []string{ingressSA, dispatchSA} {
		for _, res := range []string{"brokers", "triggers"} {
			for _, verb := range []string{"get", "list", "watch"} {
				if want := slices.Contains(reads[sa], res); can(sa, verb, ev, res, "") != want {
					t.Errorf("%s may %s %s: %v, want %v", sa, verb, res, !want, want)
				}
			}
			for _, verb := range []string{"create", "update", "patch", "delete"} {
				if can(sa, verb, ev, res, "") || can(sa, verb, ev, res, "status") {
					t.Errorf("%s can %s %s: the data plane must not write them", sa, verb, res)
				}
			}
		}
		for _, res := range []string{"secrets", "configmaps", "pods"} {
			if can(sa, "get", "", res, "") {
				t.Errorf("%s can get %s", sa, res)
			}
		}
	}
	for _, need := range [][4]string{
		{"get", ev, "brokers", ""}, {"watch", ev, "triggers", ""}, {"patch", ev, "brokers", ""},
		{"update", ev, "brokers", "status"}, {"update", ev, "triggers", "status"},
		{"get", "", "configmaps", ""}, {"get", "serving.knative.dev", "services", ""}, {"get", "", "services", ""},
		{"create", "", "events", ""},
	} {
		if !can(controllerSA, need[0], need[1], need[2], need[3]) {
			t.Errorf("the controller cannot %s %s/%s %s", need[0], need[1], need[2], need[3])
		}
	}
	for _, deny := range [][4]string{
		{"delete", ev, "brokers", ""}, {"create", ev, "triggers", ""}, {"get", "", "secrets", ""},
		{"update", "", "configmaps", ""}, {"create", "apps", "deployments", ""}, {"create", "serving.knative.dev", "services", ""},
		{"update", "serving.knative.dev", "services", "status"},
	} {
		if can(controllerSA, deny[0], deny[1], deny[2], deny[3]) {
			t.Errorf("the controller can %s %s/%s %s: more than it needs", deny[0], deny[1], deny[2], deny[3])
		}
	}
	// And for real, as the dispatcher's account: a write is refused.
	cfg := rest.CopyConfig(c.api.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + system + ":" + dispatchSA, Groups: []string{"system:serviceaccounts", "system:authenticated"}}
	as := eventingclient.NewForConfigOrDie(cfg)
	tr, err := as.EventingV1().Triggers(shopNS).Get(ctx, "observer", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the dispatcher cannot read a Trigger: %v", err)
	}
	tr.Spec.Filters = nil
	if _, err := as.EventingV1().Triggers(shopNS).Update(ctx, tr, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the dispatcher's update of a Trigger: %v, want Forbidden", err)
	}
}

func (c *cluster) testBadObjects(t *testing.T) {
	ctx := context.Background()
	bad := &eventingv1.Broker{
		ObjectMeta: metav1.ObjectMeta{Name: "bad-config", Namespace: shopNS,
			Annotations: map[string]string{eventingv1.BrokerClassAnnotationKey: "KoffeeshopJetStream"}},
		Spec: eventingv1.BrokerSpec{Config: &duckv1.KReference{APIVersion: "v1", Kind: "ConfigMap", Name: "no-such-config", Namespace: shopNS}},
	}
	if _, err := c.eventing.EventingV1().Brokers(shopNS).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var r *apis.Condition
	testkit.Eventually(t, 30*time.Second, "Broker bad-config Ready=False", func() error {
		b, err := c.eventing.EventingV1().Brokers(shopNS).Get(ctx, "bad-config", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if r = b.Status.GetCondition(apis.ConditionReady); r == nil || !r.IsFalse() {
			return fmt.Errorf("Ready is %v", r)
		}
		return nil
	})
	if !strings.Contains(r.Message, "no-such-config") {
		t.Errorf("Ready=False says %s: %q; want it to name the ConfigMap", r.Reason, r.Message)
	}

	c.createTrigger(t, "bad-filter", []eventingv1.SubscriptionsAPIFilter{{CESQL: "type = "}},
		duckv1.Destination{URI: apis.HTTP(strings.TrimPrefix(c.collector.URL, "http://"))})
	cond := c.triggerCondition(t, "bad-filter", eventingv1.TriggerConditionSubscribed, corev1.ConditionFalse)
	if !strings.Contains(cond.Message, "cesql") {
		t.Errorf("SubscriptionReady=False says %s: %q; want the filter named", cond.Reason, cond.Message)
	}
	if _, err := c.js.Consumer(ctx, shopBroker.StreamName(), "trigger_default_bad-filter"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("a consumer was made for the invalid Trigger (%v)", err)
	}
	// The controller is still up, and still reconciling.
	select {
	case <-c.controller.done:
		t.Fatal("the controller exited")
	default:
	}
	c.trigger(t, "observer")
}

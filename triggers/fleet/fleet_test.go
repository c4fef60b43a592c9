package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/client/clientset/versioned/fake"
	eventinglisters "knative.dev/eventing/pkg/client/listers/eventing/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/ptr"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// These tests read Triggers and Brokers from eventing's fake clientset;
// the cluster test runs the dispatcher against a real API server.

const ns = "coffee"

var orders = broker.Ref{Namespace: ns, Name: "orders"}

// A fleet follows its Triggers without a restart: a Ready Trigger gets a
// loop that delivers; an edit (the subscriber, then the filter) replaces
// the loop, and a slow delivery begun before the edit still finishes and
// is acked, once; a deletion stops the loop and takes its metrics away;
// a Trigger that is not Ready, or on another class's Broker, gets none
// until it is Ready on ours.
func TestFleetFollowsTriggers(t *testing.T) {
	e := newEnv(t)
	a, b, c := newSubscriber(t), newSubscriber(t), newSubscriber(t)
	a.hold("slow")

	takeOrder := newTrigger("take-order", "orders", a.url(), true)
	later := newTrigger("later", "orders", c.url(), false)
	theirs := newTrigger("their-trigger", "theirs", c.url(), true)
	e.makeConsumer(takeOrder)
	e.makeConsumer(later)
	client, watches := fakeClient(
		newBroker("orders", brokerreconciler.ClassName),
		newBroker("theirs", "MTChannelBasedBroker"),
		takeOrder, later, theirs,
	)
	f := e.start(client, Options{})
	f.waitReady(t)
	testkit.Eventually(t, 30*time.Second, "the Trigger and Broker watches", func() error {
		if n := watches(); n < 2 {
			return fmt.Errorf("%d watches", n)
		}
		return nil
	})
	f.waitFor(t, "coffee/take-order", started, 1)

	seq := e.publish("e1", "com.koffeeshop.order.placed")
	a.waitFor(t, "e1")

	// A slow delivery, then an edit of the subscriber while it runs.
	e.publish("slow", "com.koffeeshop.order.placed")
	a.waitFor(t, "slow")
	takeOrder = takeOrder.DeepCopy()
	takeOrder.Generation, takeOrder.Status.ObservedGeneration = 2, 2
	takeOrder.Status.SubscriberURI = apis.HTTP(strings.TrimPrefix(b.url(), "http://"))
	e.update(client, takeOrder)
	f.waitFor(t, "coffee/take-order", stopping, 1)
	e.publish("e2", "com.koffeeshop.order.placed")
	if n := f.count("coffee/take-order", started); n != 1 {
		t.Errorf("a new dispatcher started while the old one still had a delivery in flight (%d starts)", n)
	}
	a.release("slow")
	f.waitFor(t, "coffee/take-order", started, 2)
	b.waitFor(t, "e2")
	seq = e.publish("e3", "com.koffeeshop.order.placed")
	b.waitFor(t, "e3")
	e.waitAcked("take-order", seq)
	if got := a.counts(); got["slow"] != 1 || got["e1"] != 1 || got["e2"] != 0 || got["e3"] != 0 {
		t.Errorf("the old subscriber got %v, want e1 and slow once, nothing after the edit", got)
	}
	if got := b.counts(); got["slow"] != 0 || got["e2"] != 1 || got["e3"] != 1 {
		t.Errorf("the new subscriber got %v, want e2 and e3 once, not the slow delivery (it was acked)", got)
	}
	if m := f.metrics(t); strings.Count(m, `koffeeshop_trigger_in_flight{trigger="coffee/take-order"}`) != 1 {
		t.Errorf("the Trigger's series should be there once, from its current dispatcher:\n%s", grep(m, "koffeeshop_trigger_in_flight"))
	}

	// An edit of the filter.
	takeOrder = takeOrder.DeepCopy()
	takeOrder.Generation, takeOrder.Status.ObservedGeneration = 3, 3
	takeOrder.Spec.Filter = &eventingv1.TriggerFilter{Attributes: eventingv1.TriggerFilterAttributes{"type": "com.koffeeshop.order.paid"}}
	e.update(client, takeOrder)
	f.waitFor(t, "coffee/take-order", started, 3)
	e.publish("placed", "com.koffeeshop.order.placed")
	seq = e.publish("paid", "com.koffeeshop.order.paid")
	b.waitFor(t, "paid")
	e.waitAcked("take-order", seq)
	if got := b.counts(); got["placed"] != 0 || got["paid"] != 1 {
		t.Errorf("after the filter edit the subscriber got %v, want paid only", got)
	}

	// An edit the controller has not observed yet changes nothing.
	pending := takeOrder.DeepCopy()
	pending.Generation = 4
	pending.Spec.Filter = nil
	e.update(client, pending)

	// Deleting the Trigger stops its loop and its metrics.
	if err := client.EventingV1().Triggers(ns).Delete(t.Context(), "take-order", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "coffee/take-order", stopped, 3)
	if n := f.count("coffee/take-order", started); n != 3 {
		t.Errorf("%d dispatchers started for coffee/take-order, want 3 (the unobserved edit starts none)", n)
	}
	if m := f.metrics(t); strings.Contains(m, `trigger="coffee/take-order"`) {
		t.Errorf("a deleted Trigger's metrics are still collected:\n%s", grep(m, "coffee/take-order"))
	}
	seq = e.publish("orphan", "com.koffeeshop.order.paid")
	if info := e.consumerInfo("take-order"); info.NumPending != 1 || info.NumAckPending != 0 {
		t.Errorf("the deleted Trigger's consumer: %d pending, %d unacked; want the new event left alone", info.NumPending, info.NumAckPending)
	}

	// Neither the Trigger that is not Ready nor the one on another
	// class's Broker got a loop; the first gets one once Ready.
	for _, key := range []string{"coffee/later", "coffee/their-trigger"} {
		if n := f.count(key, started); n != 0 {
			t.Errorf("%s: %d dispatchers started, want none", key, n)
		}
	}
	if got := c.counts(); len(got) != 0 {
		t.Errorf("the subscriber of the Triggers without a loop got %v", got)
	}
	later = later.DeepCopy()
	later.Status.Conditions = readyConditions(true)
	e.update(client, later)
	f.waitFor(t, "coffee/later", started, 1)
	seq = e.publish("for-later", "com.koffeeshop.order.paid")
	c.waitFor(t, "for-later")
	e.waitAcked("later", seq)

	f.stop(t)
	if n := f.count("coffee/later", stopped); n != 1 {
		t.Errorf("coffee/later's dispatcher stopped %d times on shutdown, want 1", n)
	}
	if !f.nc.IsClosed() {
		t.Error("NATS connection not closed")
	}
}

// Two fleets, as two replicas, share each consumer: every event is
// delivered once, and both deliver.
func TestFleetsShareAConsumer(t *testing.T) {
	e := newEnv(t)
	sub := newSubscriber(t)
	// A subscriber that takes its time, and a small concurrency: neither
	// fleet can hold every event before the other pulls.
	sub.delay = 10 * time.Millisecond
	trig := newTrigger("take-order", "orders", sub.url(), true)
	trig.Annotations = map[string]string{triggers.ConcurrencyAnnotation: "4"}
	e.makeConsumer(trig)

	var fleets []*fleetUnderTest
	for range 2 {
		client, _ := fakeClient(newBroker("orders", brokerreconciler.ClassName), trig.DeepCopy())
		f := e.start(client, Options{})
		f.waitReady(t)
		f.waitFor(t, "coffee/take-order", started, 1)
		fleets = append(fleets, f)
	}
	const n = 200
	var seq uint64
	for i := range n {
		seq = e.publish(fmt.Sprintf("e%03d", i), "com.koffeeshop.order.placed")
	}
	e.waitAcked("take-order", seq)
	got := sub.counts()
	if len(got) != n {
		t.Errorf("%d distinct events delivered, want %d", len(got), n)
	}
	for id, c := range got {
		if c != 1 {
			t.Errorf("event %s delivered %d times", id, c)
		}
	}
	total := 0
	for i, f := range fleets {
		d := delivered(t, f.metrics(t), "coffee/take-order")
		t.Logf("fleet %d delivered %d", i, d)
		if d == 0 {
			t.Errorf("fleet %d delivered nothing: the consumer was not shared", i)
		}
		total += d
	}
	if total != n {
		t.Errorf("the fleets counted %d deliveries, want %d", total, n)
	}
}

// A Trigger's dead-letter sink is the one the controller resolved into
// its status: an event its subscriber refuses goes there.
func TestFleetDeadLetters(t *testing.T) {
	e := newEnv(t)
	refusing, sink := newSubscriber(t), newSubscriber(t)
	refusing.code = http.StatusBadRequest
	trig := newTrigger("take-order", "orders", refusing.url(), true)
	trig.Spec.Delivery = &eventingduckv1.DeliverySpec{DeadLetterSink: &duckv1.Destination{URI: apis.HTTP("dead-letter.coffee.svc.cluster.local")}}
	u, err := apis.ParseURL(sink.url())
	if err != nil {
		t.Fatal(err)
	}
	trig.Status.DeliveryStatus.DeadLetterSinkURI = u
	e.makeConsumer(trig)
	client, _ := fakeClient(newBroker("orders", brokerreconciler.ClassName), trig)
	f := e.start(client, Options{})
	f.waitFor(t, "coffee/take-order", started, 1)

	seq := e.publish("refused", "com.koffeeshop.order.placed")
	sink.waitFor(t, "refused")
	e.waitAcked("take-order", seq)
	if got := refusing.counts()["refused"]; got != 1 {
		t.Errorf("the subscriber got the refused event %d times, want 1 (a 400 is not retried)", got)
	}
	if d := deadLettered(t, f.metrics(t), "coffee/take-order"); d != 1 {
		t.Errorf("dead_lettered = %d, want 1", d)
	}
}

// A dispatcher whose consumer goes away (someone deleted it) ends, and
// its loop starts it again, with backoff, once the controller has made the
// consumer again.
func TestFleetRestartsADispatcherThatEnded(t *testing.T) {
	e := newEnv(t)
	sub := newSubscriber(t)
	trig := newTrigger("take-order", "orders", sub.url(), true)
	e.makeConsumer(trig)
	client, _ := fakeClient(newBroker("orders", brokerreconciler.ClassName), trig)
	f := e.start(client, Options{})
	f.waitFor(t, "coffee/take-order", started, 1)

	if err := e.js.DeleteConsumer(t.Context(), orders.StreamName(), triggers.ConsumerName(trig)); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "coffee/take-order", failed, 1)
	e.makeConsumer(trig)
	f.waitFor(t, "coffee/take-order", started, 2)
	seq := e.publish("e1", "com.koffeeshop.order.placed")
	sub.waitFor(t, "e1")
	e.waitAcked("take-order", seq)
	if m := f.metrics(t); strings.Count(m, `koffeeshop_trigger_in_flight{trigger="coffee/take-order"}`) != 1 {
		t.Errorf("the restarted dispatcher's series should be there once:\n%s", grep(m, "koffeeshop_trigger_in_flight"))
	}
}

// desired decides which Triggers get a loop, and with what.
func TestDesired(t *testing.T) {
	ready := newTrigger("ready", "orders", "http://sub.coffee.svc.cluster.local", true)
	ready.Annotations = map[string]string{triggers.ConcurrencyAnnotation: "7", triggers.AckWaitAnnotation: "45s"}
	ready.Status.DeliveryStatus.DeadLetterSinkURI = apis.HTTP("dls.coffee.svc.cluster.local")
	own := &eventingduckv1.DeliverySpec{Retry: ptr.Int32(5)}
	ownDelivery := newTrigger("own-delivery", "orders", "http://sub", true)
	ownDelivery.Spec.Delivery = own
	badAnnotations := newTrigger("bad-annotations", "orders", "http://sub", true)
	badAnnotations.Annotations = map[string]string{triggers.ConcurrencyAnnotation: "many", triggers.AckWaitAnnotation: "long"}
	crossNamespace := newTrigger("cross", "", "http://sub", true)
	crossNamespace.Namespace = "elsewhere"
	crossNamespace.Spec.BrokerRef = &duckv1.KReference{Namespace: ns, Name: "orders"}
	deleting := newTrigger("deleting", "orders", "http://sub", true)
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	unobserved := newTrigger("unobserved", "orders", "http://sub", true)
	unobserved.Generation = 2
	noSubscriber := newTrigger("no-subscriber", "orders", "", true)
	noSubscriber.Status.SubscriberURI = nil

	withDelivery := newBroker("orders", brokerreconciler.ClassName)
	withDelivery.Spec.Delivery = &eventingduckv1.DeliverySpec{Retry: ptr.Int32(3)}
	f := &Fleet{
		triggers: triggerLister(t, ready, ownDelivery, badAnnotations, crossNamespace, deleting, unobserved, noSubscriber,
			newTrigger("not-ready", "orders", "http://sub", false),
			newTrigger("theirs", "theirs", "http://sub", true),
			newTrigger("no-broker", "nope", "http://sub", true)),
		brokers: brokerLister(t, withDelivery, newBroker("theirs", "MTChannelBasedBroker")),
		log:     slog.New(slog.DiscardHandler),
	}

	want, keep := f.desired(types.NamespacedName{Namespace: "coffee", Name: "ready"})
	if keep || want == nil {
		t.Fatalf("coffee/ready: desired = %v, keep %v; want a spec", want, keep)
	}
	if want.subscriber.String() != "http://sub.coffee.svc.cluster.local" || want.deadLetter.String() != "http://dls.coffee.svc.cluster.local" ||
		want.broker != orders || want.concurrency != 7 || want.ackWait != 45*time.Second || *want.delivery.Retry != 3 {
		t.Errorf("coffee/ready: spec = %+v", want)
	}
	cfg := want.config(time.Second)
	if !cfg.Bind || cfg.DeadLetter == nil || cfg.DrainTimeout != time.Second {
		t.Errorf("coffee/ready: config = %+v, want Bind, a dead-letter sink and the drain timeout", cfg)
	}
	if w, _ := f.desired(types.NamespacedName{Namespace: "coffee", Name: "own-delivery"}); w == nil || *w.delivery.Retry != 5 || w.deadLetter != nil {
		t.Errorf("coffee/own-delivery: spec = %+v, want the Trigger's own delivery and no sink", w)
	} else if cfg := w.config(0); cfg.DeadLetter != nil {
		t.Errorf("coffee/own-delivery: a dead-letter endpoint without a sink: %+v", cfg.DeadLetter)
	}
	if w, _ := f.desired(types.NamespacedName{Namespace: "coffee", Name: "bad-annotations"}); w == nil || w.concurrency != 100 || w.ackWait != 0 {
		t.Errorf("coffee/bad-annotations: spec = %+v, want the defaults", w)
	}
	if w, _ := f.desired(types.NamespacedName{Namespace: "elsewhere", Name: "cross"}); w == nil || w.broker != orders {
		t.Errorf("elsewhere/cross: spec = %+v, want one on coffee/orders", w)
	}
	for _, name := range []string{"deleting", "not-ready", "theirs", "no-broker", "no-subscriber", "gone"} {
		key := types.NamespacedName{Namespace: "coffee", Name: name}
		if w, keep := f.desired(key); w != nil || keep {
			t.Errorf("%s: desired = %+v, keep %v; want no loop", key, w, keep)
		}
	}
	if w, keep := f.desired(types.NamespacedName{Namespace: "coffee", Name: "unobserved"}); w != nil || !keep {
		t.Errorf("coffee/unobserved: desired = %+v, keep %v; want the loop kept as it is", w, keep)
	}

	// What makes a dispatcher be replaced.
	base, _ := f.desired(types.NamespacedName{Namespace: "coffee", Name: "ready"})
	for name, edit := range map[string]func(s *spec){
		"subscriber":   func(s *spec) { s.subscriber = apis.HTTP("other") },
		"dead letter":  func(s *spec) { s.deadLetter = nil },
		"delivery":     func(s *spec) { s.delivery = own },
		"filter":       func(s *spec) { s.trigger.Spec.Filter = &eventingv1.TriggerFilter{} },
		"filters":      func(s *spec) { s.trigger.Spec.Filters = []eventingv1.SubscriptionsAPIFilter{{CESQL: "true"}} },
		"concurrency":  func(s *spec) { s.concurrency++ },
		"ack wait":     func(s *spec) { s.ackWait++ },
		"a new object": func(s *spec) { s.trigger.UID = "other" },
	} {
		s, _ := f.desired(types.NamespacedName{Namespace: "coffee", Name: "ready"})
		edit(s)
		if base.equal(s) {
			t.Errorf("a change of the %s leaves the spec equal", name)
		}
	}
	if again, _ := f.desired(types.NamespacedName{Namespace: "coffee", Name: "ready"}); !base.equal(again) {
		t.Error("the same Trigger gives specs that differ")
	}
}

// Run wires the real clients: an API server that cannot be reached keeps
// the dispatcher unready until it is stopped.
func TestRun(t *testing.T) {
	srv := testkit.StartNATS(t)
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no REST config", Options{NATS: natsconn.Options{URL: srv.ClientURL()}}, "REST config is required"},
		{"no NATS URL", Options{KubeConfig: &rest.Config{Host: "http://127.0.0.1:1"}}, "NATS URL is required"},
		{"a busy address", Options{KubeConfig: &rest.Config{Host: "http://127.0.0.1:1"}, NATS: natsconn.Options{URL: srv.ClientURL()},
			ProbeAddr: strings.TrimPrefix(srv.ClientURL(), "nats://")}, "address already in use"},
	} {
		if err := Run(t.Context(), tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}

	probeAddr := freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{KubeConfig: &rest.Config{Host: "http://127.0.0.1:1"}, NATS: natsconn.Options{URL: srv.ClientURL()},
			ProbeAddr: probeAddr, Log: slog.New(slog.DiscardHandler)})
	}()
	testkit.Eventually(t, 30*time.Second, "Run serving its probes", func() error {
		resp, err := http.Get("http://" + probeAddr + "/health/readiness")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "not synced") {
			return fmt.Errorf("readiness = %d %q, want 503 not synced", resp.StatusCode, b)
		}
		return nil
	})
	if resp, err := http.Get("http://" + probeAddr + "/health/liveness"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("liveness = %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
}

// env is a JetStream with the stream of coffee/orders, as the controller
// makes it.
type env struct {
	t     *testing.T
	url   string
	js    jetstream.JetStream
	store *broker.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL())
	if _, err := broker.EnsureStream(t.Context(), js, orders, broker.StreamOptions{Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	store, err := broker.NewStore(js.Conn(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, url: srv.ClientURL(), js: js, store: store}
}

// makeConsumer makes the Trigger's consumer as the controller does.
func (e *env) makeConsumer(t *eventingv1.Trigger) {
	e.t.Helper()
	n, _, _ := triggers.AnnotatedConcurrency(t)
	if n == 0 {
		n = 100
	}
	if _, err := triggers.EnsureConsumer(e.t.Context(), e.js, triggers.Config{Trigger: t, Broker: orders, Concurrency: n}); err != nil {
		e.t.Fatal(err)
	}
}

// publish stores an event in coffee/orders and returns its sequence.
func (e *env) publish(id, typ string) uint64 {
	e.t.Helper()
	ev := cloudevents.NewEvent()
	ev.SetID(id)
	ev.SetSource("test")
	ev.SetType(typ)
	if err := ev.SetData(cloudevents.ApplicationJSON, map[string]string{"order": id}); err != nil {
		e.t.Fatal(err)
	}
	res, err := e.store.Publish(e.t.Context(), orders, &ev)
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Sequence
}

func (e *env) consumerInfo(trigger string) *jetstream.ConsumerInfo {
	e.t.Helper()
	c, err := e.js.Consumer(e.t.Context(), orders.StreamName(), triggers.ConsumerName(&eventingv1.Trigger{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: trigger}}))
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := c.Info(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	return info
}

// waitAcked waits until the Trigger's consumer has acked every event up
// to seq and holds nothing else.
func (e *env) waitAcked(trigger string, seq uint64) {
	e.t.Helper()
	testkit.Eventually(e.t, 30*time.Second, "consumer of "+trigger+" acked up to "+strconv.FormatUint(seq, 10), func() error {
		info := e.consumerInfo(trigger)
		if info.AckFloor.Stream < seq || info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("ack floor %d, %d unacked, %d pending", info.AckFloor.Stream, info.NumAckPending, info.NumPending)
		}
		return nil
	})
}

func (e *env) update(client *fake.Clientset, t *eventingv1.Trigger) {
	e.t.Helper()
	if _, err := client.EventingV1().Triggers(t.Namespace).Update(e.t.Context(), t, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

type fleetUnderTest struct {
	probes string
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error

	mu     sync.Mutex
	events map[string]int // key + " " + event

	once sync.Once
	err  error
}

// start runs a fleet on client with a NATS connection of its own.
func (e *env) start(client *fake.Clientset, o Options) *fleetUnderTest {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ln.Close() })
	nc, err := natsconn.Connect(natsconn.Options{URL: e.url}, "test-dispatcher", slog.New(slog.DiscardHandler))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleetUnderTest{probes: "http://" + ln.Addr().String(), nc: nc, cancel: cancel, done: make(chan error, 1), events: map[string]int{}}
	observe := func(key string, ev event) {
		f.mu.Lock()
		f.events[key+" "+string(ev)]++
		f.mu.Unlock()
	}
	go func() { f.done <- serve(ctx, o, client, nc, ln, observe) }()
	e.t.Cleanup(func() {
		cancel()
		_ = f.wait()
	})
	return f
}

func (f *fleetUnderTest) count(key string, ev event) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.events[key+" "+string(ev)]
}

func (f *fleetUnderTest) waitFor(t *testing.T, key string, ev event, n int) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, fmt.Sprintf("%s %s %d times", key, ev, n), func() error {
		if got := f.count(key, ev); got < n {
			return fmt.Errorf("%d times", got)
		}
		return nil
	})
}

func (f *fleetUnderTest) waitReady(t *testing.T) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, "readiness", func() error { return testkit.GetOK(f.probes + "/health/readiness") })
}

func (f *fleetUnderTest) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(f.probes + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics = %d, %v: %s", resp.StatusCode, err, b)
	}
	return string(b)
}

func (f *fleetUnderTest) wait() error {
	f.once.Do(func() {
		select {
		case f.err = <-f.done:
		case <-time.After(60 * time.Second):
			f.err = errors.New("serve did not return within 60s")
		}
	})
	return f.err
}

func (f *fleetUnderTest) stop(t *testing.T) {
	t.Helper()
	f.cancel()
	if err := f.wait(); err != nil {
		t.Errorf("serve = %v", err)
	}
}

// subscriber records the ids of the events it gets; a held id waits for
// its release before it is answered.
type subscriber struct {
	srv   *httptest.Server
	delay time.Duration
	code  int // the answer, 200 when 0

	mu    sync.Mutex
	got   map[string]int
	holds map[string]chan struct{}
}

func newSubscriber(t *testing.T) *subscriber {
	s := &subscriber{got: map[string]int{}, holds: map[string]chan struct{}{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("Ce-Id")
		s.mu.Lock()
		s.got[id]++
		hold := s.holds[id]
		s.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		if s.delay > 0 {
			select {
			case <-time.After(s.delay):
			case <-r.Context().Done():
				return
			}
		}
		if s.code != 0 {
			w.WriteHeader(s.code)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *subscriber) url() string { return s.srv.URL }

func (s *subscriber) hold(id string) {
	s.mu.Lock()
	s.holds[id] = make(chan struct{})
	s.mu.Unlock()
}

func (s *subscriber) release(id string) {
	s.mu.Lock()
	close(s.holds[id])
	s.mu.Unlock()
}

func (s *subscriber) counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.got))
	for k, v := range s.got {
		m[k] = v
	}
	return m
}

func (s *subscriber) waitFor(t *testing.T, id string) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, "event "+id+" delivered", func() error {
		if s.counts()[id] == 0 {
			return errors.New("not yet")
		}
		return nil
	})
}

// delivered reads the Trigger's delivered count from a /metrics page.
func delivered(t *testing.T, metrics, trigger string) int {
	t.Helper()
	return events(t, metrics, trigger, "delivered")
}

func deadLettered(t *testing.T, metrics, trigger string) int {
	t.Helper()
	return events(t, metrics, trigger, "dead_lettered")
}

func events(t *testing.T, metrics, trigger, result string) int {
	t.Helper()
	re := regexp.MustCompile(`koffeeshop_trigger_events_total\{result="` + result + `",trigger="` + regexp.QuoteMeta(trigger) + `"\} (\d+)`)
	m := re.FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no %s count for %s in /metrics", result, trigger)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// fakeClient returns eventing's fake clientset holding objs, and how many
// watches were opened on it: an object written before its informer's
// watch is open would be missed by a fake (a real API server replays it).
func fakeClient(objs ...runtime.Object) (*fake.Clientset, func() int32) {
	c := fake.NewSimpleClientset(objs...)
	var watches atomic.Int32
	c.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		w, err := c.Tracker().Watch(a.GetResource(), a.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		watches.Add(1)
		return true, w, nil
	})
	return c, watches.Load
}

func triggerLister(t *testing.T, ts ...*eventingv1.Trigger) eventinglisters.TriggerLister {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, tr := range ts {
		if err := idx.Add(tr); err != nil {
			t.Fatal(err)
		}
	}
	return eventinglisters.NewTriggerLister(idx)
}

func brokerLister(t *testing.T, bs ...*eventingv1.Broker) eventinglisters.BrokerLister {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, b := range bs {
		if err := idx.Add(b); err != nil {
			t.Fatal(err)
		}
	}
	return eventinglisters.NewBrokerLister(idx)
}

func newBroker(name, class string) *eventingv1.Broker {
	b := &eventingv1.Broker{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name, Generation: 1,
		Annotations: map[string]string{brokerreconciler.ClassAnnotationKey: class},
	}}
	b.Status.ObservedGeneration = 1
	b.Status.Conditions = readyConditions(true)
	return b
}

// newTrigger is a Trigger as the controller leaves it: its subscriber
// resolved into status, Ready or not, its generation observed.
func newTrigger(name, brokerName, subscriber string, ready bool) *eventingv1.Trigger {
	t := &eventingv1.Trigger{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1, UID: types.UID(name + "-uid")},
		Spec: eventingv1.TriggerSpec{
			Broker:     brokerName,
			Subscriber: duckv1.Destination{URI: apis.HTTP("subscriber.coffee.svc.cluster.local")},
		},
	}
	t.Status.ObservedGeneration = 1
	t.Status.Conditions = readyConditions(ready)
	if subscriber != "" {
		u, err := apis.ParseURL(subscriber)
		if err != nil {
			panic(err)
		}
		t.Status.SubscriberURI = u
	}
	return t
}

func readyConditions(ready bool) duckv1.Conditions {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return duckv1.Conditions{{Type: apis.ConditionReady, Status: status}}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

package clusteringress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/client/clientset/versioned/fake"
	"knative.dev/pkg/apis"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	brokerreconciler "github.com/koffeeshop/koffeeshop/broker/reconciler"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

// These tests read Brokers from eventing's fake clientset; the cluster
// test runs the ingress against a real API server.

const ns = "coffee"

// The ingress serves a Broker of our class while it is Ready, end to end
// (the event is in the stream), answers 503 for one that is not Ready, and
// 404 for one of another class, unknown, or deleted; a Broker that becomes Ready is
// served without a restart.
func TestIngressServesReadyBrokersOfItsClass(t *testing.T) {
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL())
	for _, name := range []string{"orders", "later"} {
		// The controller's job: a Ready Broker has its stream.
		if _, err := broker.EnsureStream(t.Context(), js, broker.Ref{Namespace: ns, Name: name}, broker.StreamOptions{Storage: jetstream.MemoryStorage}); err != nil {
			t.Fatal(err)
		}
	}
	client, watches := fakeClient(
		newBroker("orders", brokerreconciler.ClassName, true),
		newBroker("later", brokerreconciler.ClassName, false),
		newBroker("theirs", "MTChannelBasedBroker", true),
	)
	in := start(t, Options{}, client, srv.ClientURL())
	in.waitReady(t)
	testkit.Eventually(t, 30*time.Second, "the Broker watch", func() error {
		if watches() < 1 {
			return errors.New("no watch yet")
		}
		return nil
	})

	if code := in.post(t, "/coffee/orders", "e1", ""); code != http.StatusAccepted {
		t.Fatalf("POST to a Ready Broker of our class = %d, want 202", code)
	}
	stream, err := js.Stream(t.Context(), broker.Ref{Namespace: ns, Name: "orders"}.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatalf("the accepted event is not in the stream: %v", err)
	}
	if ev, err := broker.Decode(msg.Header, msg.Data); err != nil || ev.ID() != "e1" {
		t.Errorf("stored event = %v (%v), want id e1", ev, err)
	}

	for _, path := range []string{"/coffee/theirs", "/coffee/nope", "/other/orders"} {
		if code := in.post(t, path, "e2", ""); code != http.StatusNotFound {
			t.Errorf("POST %s = %d, want 404", path, code)
		}
	}
	// A Broker of the class that is not Ready exists: retry, not 404.
	if code := in.post(t, "/coffee/later", "e2", ""); code != http.StatusServiceUnavailable {
		t.Errorf("POST to a Broker that is not Ready = %d, want 503", code)
	}

	brokers := client.EventingV1().Brokers(ns)
	if _, err := brokers.Update(t.Context(), newBroker("later", brokerreconciler.ClassName, true), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "coffee/later served once Ready", func() error {
		if code := in.post(t, "/coffee/later", "e3", ""); code != http.StatusAccepted {
			return fmt.Errorf("POST = %d", code)
		}
		return nil
	})

	if err := brokers.Delete(t.Context(), "orders", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "coffee/orders refused once deleted", func() error {
		if code := in.post(t, "/coffee/orders", "e4", ""); code != http.StatusNotFound {
			return fmt.Errorf("POST = %d", code)
		}
		return nil
	})
	if info, err := stream.Info(t.Context()); err != nil || info.State.Msgs != 1 {
		t.Errorf("stream of coffee/orders holds %+v (%v), want only e1", info.State, err)
	}

	metrics := in.get(t, in.probes+"/metrics")
	for _, want := range []string{`koffeeshop_broker_ingress_requests_total{code="202"} 2`, `koffeeshop_broker_ingress_requests_total{code="404"}`, "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	in.stop(t)
}

func TestStateOf(t *testing.T) {
	deleting := newBroker("orders", brokerreconciler.ClassName, true)
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	edited := newBroker("orders", brokerreconciler.ClassName, true)
	edited.Generation = 2
	for _, tc := range []struct {
		name string
		b    *eventingv1.Broker
		want broker.BrokerState
	}{
		{"ours and Ready", newBroker("orders", brokerreconciler.ClassName, true), broker.BrokerReady},
		{"ours, Ready, an edit not yet observed", edited, broker.BrokerReady},
		{"ours, not Ready", newBroker("orders", brokerreconciler.ClassName, false), broker.BrokerNotReady},
		{"ours, no status yet", &eventingv1.Broker{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{brokerreconciler.ClassAnnotationKey: brokerreconciler.ClassName}}}, broker.BrokerNotReady},
		{"another class, Ready", newBroker("orders", "MTChannelBasedBroker", true), broker.BrokerUnknown},
		{"no class", &eventingv1.Broker{}, broker.BrokerUnknown},
		{"ours, Ready, being deleted", deleting, broker.BrokerUnknown},
	} {
		if got := StateOf(tc.b); got != tc.want {
			t.Errorf("%s: StateOf = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestIngressToken(t *testing.T) {
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL())
	if _, err := broker.EnsureStream(t.Context(), js, broker.Ref{Namespace: ns, Name: "orders"}, broker.StreamOptions{Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	client, _ := fakeClient(newBroker("orders", brokerreconciler.ClassName, true))
	in := start(t, Options{Token: "s3cret"}, client, srv.ClientURL())
	in.waitReady(t)
	if code := in.post(t, "/coffee/orders", "e1", ""); code != http.StatusUnauthorized {
		t.Errorf("POST without the token = %d, want 401", code)
	}
	if code := in.post(t, "/coffee/orders", "e1", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("POST with a wrong token = %d, want 401", code)
	}
	if code := in.post(t, "/coffee/orders", "e1", "s3cret"); code != http.StatusAccepted {
		t.Errorf("POST with the token = %d, want 202", code)
	}
	// The probes are on their own port, without the token.
	if code := in.status(t, in.probes+"/health/liveness"); code != http.StatusOK {
		t.Errorf("liveness = %d", code)
	}
	in.stop(t)
}

// On shutdown the ingress turns unready, and a request already under way
// still gets its answer, with its event stored, before the process ends.
func TestIngressDrainsRequestsInFlight(t *testing.T) {
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL())
	ref := broker.Ref{Namespace: ns, Name: "orders"}
	if _, err := broker.EnsureStream(t.Context(), js, ref, broker.StreamOptions{Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	client, _ := fakeClient(newBroker("orders", brokerreconciler.ClassName, true))
	in := start(t, Options{}, client, srv.ClientURL())
	in.waitReady(t)

	// A request whose body is half sent: the handler is in flight.
	conn, err := net.Dial("tcp", strings.TrimPrefix(in.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"order":"latte"}`
	fmt.Fprintf(conn, "POST /coffee/orders HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: slow\r\nce-source: test\r\nce-type: com.koffeeshop.order.placed\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:5])
	testkit.Eventually(t, 30*time.Second, "the request in flight", func() error {
		if m := in.get(t, in.probes+"/metrics"); !strings.Contains(m, "koffeeshop_broker_ingress_in_flight 1") {
			return errors.New("not yet")
		}
		return nil
	})

	in.cancel()
	testkit.Eventually(t, 30*time.Second, "unready while draining", func() error {
		if code := in.status(t, in.probes+"/health/readiness"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("readiness = %d", code)
		}
		return nil
	})
	if _, err := io.WriteString(conn, body[5:]); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the request in flight got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("the request in flight = %d, want 202", resp.StatusCode)
	}
	if err := in.wait(t); err != nil {
		t.Errorf("serve = %v", err)
	}
	if !in.nc.IsClosed() {
		t.Error("NATS connection not closed")
	}
	stream, err := js.Stream(t.Context(), ref.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	if info, err := stream.Info(t.Context()); err != nil || info.State.Msgs != 1 {
		t.Errorf("stream holds %+v (%v), want the drained request's event", info.State, err)
	}
}

// Run wires the real clients: an API server that cannot be reached keeps
// the ingress unready (and answering 503, not 404) until it is stopped.
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
			Addr: strings.TrimPrefix(srv.ClientURL(), "nats://")}, "address already in use"},
	} {
		if err := Run(t.Context(), tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Run = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}

	addr, probeAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{KubeConfig: &rest.Config{Host: "http://127.0.0.1:1"}, NATS: natsconn.Options{URL: srv.ClientURL()},
			Addr: addr, ProbeAddr: probeAddr, Log: slog.New(slog.DiscardHandler)})
	}()
	in := &ingress{url: "http://" + addr, probes: "http://" + probeAddr}
	testkit.Eventually(t, 30*time.Second, "Run serving its probes", func() error {
		resp, err := http.Get(in.probes + "/health/readiness")
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
	if code := in.post(t, "/coffee/orders", "e1", ""); code != http.StatusServiceUnavailable {
		t.Errorf("POST before the Brokers were read = %d, want 503", code)
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

type ingress struct {
	url, probes string
	nc          *nats.Conn
	cancel      context.CancelFunc
	done        chan error

	once sync.Once
	err  error
}

// wait returns what serve returned, waiting at most 30s.
func (in *ingress) wait(t *testing.T) error {
	t.Helper()
	in.once.Do(func() {
		select {
		case in.err = <-in.done:
		case <-time.After(30 * time.Second):
			in.err = errors.New("serve did not return within 30s")
		}
	})
	return in.err
}

// start serves the ingress over client's Brokers on 127.0.0.1 ports.
func start(t *testing.T, o Options, client *fake.Clientset, natsURL string) *ingress {
	t.Helper()
	ln, probeLn := listen(t), listen(t)
	nc, err := natsconn.Connect(natsconn.Options{URL: natsURL}, "test-ingress", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	in := &ingress{url: "http://" + ln.Addr().String(), probes: "http://" + probeLn.Addr().String(), nc: nc, cancel: cancel, done: make(chan error, 1)}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	go func() { in.done <- serve(ctx, o, client, nc, ln, probeLn) }()
	t.Cleanup(func() {
		cancel()
		_ = in.wait(t)
	})
	return in
}

func (in *ingress) waitReady(t *testing.T) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, "readiness", func() error {
		if code := in.status(t, in.probes+"/health/readiness"); code != http.StatusOK {
			return fmt.Errorf("readiness = %d", code)
		}
		return nil
	})
}

func (in *ingress) stop(t *testing.T) {
	t.Helper()
	in.cancel()
	if err := in.wait(t); err != nil {
		t.Errorf("serve = %v", err)
	}
}

// post sends a binary-mode CloudEvent with id to path and returns the
// status code.
func (in *ingress) post(t *testing.T, path, id, token string) int {
	t.Helper()
	req := testkit.BinaryRequest(t, in.url+path, testkit.Event(id, "test", "com.koffeeshop.order.placed", `{"order":"latte"}`))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, _ := testkit.Do(t, req)
	return resp.StatusCode
}

func (in *ingress) status(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (in *ingress) get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
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

func newBroker(name, class string, ready bool) *eventingv1.Broker {
	status := "False"
	if ready {
		status = "True"
	}
	b := &eventingv1.Broker{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name, Generation: 1,
		Annotations: map[string]string{brokerreconciler.ClassAnnotationKey: class},
	}}
	b.Status.ObservedGeneration = 1
	b.Status.Conditions = []apis.Condition{{Type: apis.ConditionReady, Status: corev1.ConditionStatus(status)}}
	return b
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/local/runner"
)

// binDir holds the function executables, built once for all tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "koffeeshop-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		if err := runner.Build(context.Background(), []string{configDir()}, binDir); err != nil {
			fmt.Fprintln(os.Stderr, "building functions:", err)
			return 1
		}
		// nats-server itself, for tests against an out-of-process server.
		if err := runner.BuildImages(context.Background(), []string{"github.com/nats-io/nats-server/v2"}, binDir); err != nil {
			fmt.Fprintln(os.Stderr, "building nats-server:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func configDir() string { return filepath.Join("..", "..", "config") }

type shop struct {
	*runner.Runner
	collector *testkit.Sink
	stop      func() // stops the runner and waits for it
}

// shopOptions vary the shop a test runs.
type shopOptions struct {
	configDir string              // instead of config/
	env       map[string][]string // per Service, on top of BREW_TIME=0s
	natsURL   string              // an external NATS
	only      []string
	name      string
	collector *testkit.Sink // share another shop's observer
	token     string        // the ingress bearer token
	replicas  int
}

// startShop runs the coffee shop from config/ plus a test Trigger that sends
// every event of the broker to a collector.
func startShop(t testing.TB) *shop {
	t.Helper()
	return startShopWith(t, shopOptions{})
}

func startShopWith(t testing.TB, o shopOptions) *shop {
	t.Helper()
	if o.configDir == "" {
		o.configDir = configDir()
	}
	env := map[string][]string{"prepare-beverage": {"BREW_TIME=0s"}}
	for k, v := range o.env {
		env[k] = append(env[k], v...)
	}
	col := testkit.NewSink(t)
	extra := t.TempDir()
	trigger := fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: test-observer
  namespace: default
spec:
  broker: default
  subscriber:
    uri: %s
`, col.URL)
	if err := os.WriteFile(filepath.Join(extra, "observer.yaml"), []byte(trigger), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	dirs := []string{o.configDir, extra}
	if o.collector != nil {
		dirs = []string{o.configDir}
		col = o.collector
	}
	r, err := runner.New(ctx, runner.Options{
		ConfigDirs: dirs,
		Only:       o.only,
		Name:       o.name,
		NATS:       runner.NATSOptions{External: natsconn.Options{URL: o.natsURL}, DataDir: t.TempDir(), Port: -1, Replicas: o.replicas},
		HTTP:       runner.HTTPOptions{Addr: "127.0.0.1:0", Token: o.token},
		Functions:  runner.FunctionOptions{BinDir: binDir, Env: env, Output: testWriter{t}},
	}, log)
	if err != nil {
		cancel()
		t.Fatalf("runner: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("runner stopped with %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("runner did not stop")
		}
	})
	t.Cleanup(stop)
	return &shop{Runner: r, collector: col, stop: stop}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type notified struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Beverage string `json:"beverage"`
	Barista  string `json:"barista"`
	Message  string `json:"message"`
}

func TestOrdersReachCustomerNotified(t *testing.T) {
	s := startShop(t)
	url := s.IngressURL() + "/default/default"
	beverages := []string{"latte", "espresso", "cappuccino", "mocha", "americano"}
	const orders = 25
	want := map[string]string{} // customer -> beverage
	for i := range orders {
		customer := fmt.Sprintf("customer-%02d", i)
		bev := beverages[i%len(beverages)]
		want[customer] = bev
		data := fmt.Sprintf(`{"customer":%q,"beverage":%q}`, customer, bev)
		post := testkit.PostBinary
		if i%2 != 0 {
			post = testkit.PostStructured
		}
		if resp, body := post(t, url, testkit.Event(fmt.Sprintf("order-%d", i), "/e2e", "com.koffeeshop.order.placed", data)); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("order %d: status %d: %s", i, resp.StatusCode, body)
		}
	}

	accepted := s.collector.WaitType(t, "com.koffeeshop.order.accepted", orders, 60*time.Second)
	done := s.collector.WaitType(t, "com.koffeeshop.customer.notified", orders, 60*time.Second)
	// Any duplicate has come once every Trigger is idle.
	waitIdle(t, s.Status, testkit.Connect(t, s.NATSURL()), 30*time.Second)
	done = s.collector.OfType("com.koffeeshop.customer.notified")
	if len(done) != orders {
		t.Fatalf("got %d customer.notified events, want exactly %d", len(done), orders)
	}

	orderIDs := map[string]string{} // orderId -> customer, from order.accepted
	for _, e := range accepted {
		var a notified
		if err := e.DataAs(&a); err != nil {
			t.Fatal(err)
		}
		if a.OrderID == "" {
			t.Fatalf("order.accepted without orderId: %s", e)
		}
		orderIDs[a.OrderID] = a.Customer
	}
	seen := map[string]bool{}
	for _, e := range done {
		var n notified
		if err := e.DataAs(&n); err != nil {
			t.Fatal(err)
		}
		if seen[n.Customer] {
			t.Errorf("customer %s notified twice", n.Customer)
		}
		seen[n.Customer] = true
		if wantBev, ok := want[n.Customer]; !ok || wantBev != n.Beverage {
			t.Errorf("notified %+v: want beverage %q for that customer", n, wantBev)
		}
		if orderIDs[n.OrderID] != n.Customer {
			t.Errorf("notified %+v: orderId does not match the accepted order of that customer", n)
		}
		if !strings.HasPrefix(n.Barista, "prepare-beverage-") {
			t.Errorf("notified %+v: barista should name a prepare-beverage instance", n)
		}
		if e.Subject() != n.OrderID {
			t.Errorf("customer.notified subject = %q, want the orderId %q", e.Subject(), n.OrderID)
		}
	}
	if len(seen) != orders {
		t.Fatalf("%d distinct customers notified, want %d", len(seen), orders)
	}
}

func TestUnknownBeverageAndEmptyCustomerAreRejected(t *testing.T) {
	s := startShop(t)
	url := s.IngressURL() + "/default/default"
	for i, body := range []string{`{"customer":"bob","beverage":"motor oil"}`, `{"customer":"  ","beverage":"latte"}`} {
		if resp, _ := testkit.PostBinary(t, url, testkit.Event(fmt.Sprintf("bad-%d", i), "/e2e", "com.koffeeshop.order.placed", body)); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	rejected := s.collector.WaitType(t, "com.koffeeshop.order.rejected", 2, 30*time.Second)
	reasons := map[string]string{}
	for _, e := range rejected {
		var r struct{ Customer, Beverage, Reason string }
		if err := e.DataAs(&r); err != nil {
			t.Fatal(err)
		}
		reasons[r.Beverage] = r.Reason
	}
	if !strings.Contains(reasons["motor oil"], "unknown beverage") {
		t.Errorf("reason for an unknown beverage = %q", reasons["motor oil"])
	}
	if !strings.Contains(reasons["latte"], "customer") {
		t.Errorf("reason for an empty customer = %q", reasons["latte"])
	}
	if got := s.collector.OfType("com.koffeeshop.order.accepted"); len(got) != 0 {
		t.Errorf("%d bad orders were accepted", len(got))
	}
}

// waitIdle waits until no Trigger has an event in flight, pending or
// unacknowledged: the load has fully drained, the web board's Trigger
// too, and nothing more will be delivered.
func waitIdle(t testing.TB, status func() runner.Status, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, "every Trigger idle", func() error {
		busy := 0
		for _, tr := range status().Triggers {
			busy += int(tr.InFlight)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, broker.Ref{Namespace: "default", Name: "default"}.StreamName())
		if err != nil {
			return err
		}
		for ci := range st.ListConsumers(ctx).Info() {
			busy += int(ci.NumPending) + ci.NumAckPending
		}
		if busy > 0 {
			return fmt.Errorf("%d events in flight or pending", busy)
		}
		return nil
	})
}

func streamMsgs(t *testing.T, s *shop) uint64 {
	t.Helper()
	js := testkit.Connect(t, s.NATSURL())
	ref := broker.Ref{Namespace: "default", Name: "default"}
	st, err := js.Stream(context.Background(), ref.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestDuplicateSourceAndIDIsStoredOnce(t *testing.T) {
	s := startShop(t)
	url := s.IngressURL() + "/default/default"
	const body = `{"customer":"dup","beverage":"tea"}`
	for range 3 {
		if resp, _ := testkit.PostBinary(t, url, testkit.Event("same-id", "/dup", "com.koffeeshop.order.placed", body)); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	// The same id from another source is another event.
	if resp, _ := testkit.PostBinary(t, url, testkit.Event("same-id", "/other", "com.koffeeshop.order.placed", body)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	s.collector.WaitType(t, "com.koffeeshop.customer.notified", 2, 30*time.Second)
	waitIdle(t, s.Status, testkit.Connect(t, s.NATSURL()), 30*time.Second)
	if got := len(s.collector.OfType("com.koffeeshop.order.placed")); got != 2 {
		t.Errorf("observer saw %d order.placed events, want 2", got)
	}
	if got := len(s.collector.OfType("com.koffeeshop.customer.notified")); got != 2 {
		t.Errorf("%d customer.notified events, want 2", got)
	}
	var stored []string
	for _, e := range s.collector.OfType("com.koffeeshop.order.placed") {
		stored = append(stored, e.Source()+"#"+e.ID())
	}
	if strings.Join(stored, ",") != "/dup#same-id,/other#same-id" && strings.Join(stored, ",") != "/other#same-id,/dup#same-id" {
		t.Errorf("stored events %v", stored)
	}
	_ = json.Valid
}

func TestIngressTokenIsRequiredWhenSet(t *testing.T) {
	s := startShopWith(t, shopOptions{token: "s3cret"})
	url := s.IngressURL() + "/default/default"
	if resp, _ := testkit.PostBinary(t, url, testkit.Event("tok-1", "/t", "com.koffeeshop.order.placed", `{"customer":"ada","beverage":"latte"}`)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without the token: %d, want 401", resp.StatusCode)
	}
	req := testkit.BinaryRequest(t, url, testkit.Event("tok-2", "/t", "com.koffeeshop.order.placed", `{"customer":"ada","beverage":"latte"}`))
	req.Header.Set("Authorization", "Bearer s3cret")
	if resp, _ := testkit.Do(t, req); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("with the token: %d, want 202", resp.StatusCode)
	}
	s.collector.WaitType(t, "com.koffeeshop.customer.notified", 1, 30*time.Second)
	if n := streamMsgs(t, s); n == 0 {
		t.Fatal("nothing stored")
	}
	for _, e := range s.collector.OfType("com.koffeeshop.order.placed") {
		if e.ID() == "tok-1" {
			t.Fatal("the unauthenticated order was stored")
		}
	}
	// The functions' K_SINK sends carry the token: prepare-beverage's
	// progress event got in.
	s.collector.WaitType(t, "com.koffeeshop.beverage.preparing", 1, 30*time.Second)

	// Every route that writes or acts needs the token; reading does not.
	base := s.IngressURL()
	for _, path := range []string{"/_board/orders", "/_board/kill?service=prepare-beverage"} {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(`{"customer":"eve","beverage":"latte"}`))
		if resp, _ := testkit.Do(t, req); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("POST %s without the token: %d, want 401", path, resp.StatusCode)
		}
	}
	for _, path := range []string{"/", "/status"} {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if resp, _ := testkit.Do(t, req); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without the token: %d, want 200", path, resp.StatusCode)
		}
	}
	req, _ = http.NewRequest(http.MethodPost, base+"/_board/orders", strings.NewReader(`{"customer":"bob","beverage":"latte","via":"broker"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cret")
	if resp, body := testkit.Do(t, req); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("board order with the token: %d %s", resp.StatusCode, body)
	}
	// Both orders reach notified on the board.
	testkit.Eventually(t, 30*time.Second, "2 notified on the board", func() error {
		if o := s.Status().Orders; o["notified"] < 2 {
			return fmt.Errorf("board stages %v", o)
		}
		return nil
	})
}

// TestBrokerConfigMapShapesTheStream: the runner makes the Broker's stream
// from the ConfigMap its spec.config names, as the Broker class does on a
// cluster; maxAge 0 there means no age limit.
func TestBrokerConfigMapShapesTheStream(t *testing.T) {
	s := startShopWith(t, shopOptions{configDir: scaledConfig(t, "maxAge: 24h", "maxAge: \"0\"", "duplicateWindow: 2m", "duplicateWindow: 45s")})
	js := testkit.Connect(t, s.NATSURL())
	st, err := js.Stream(context.Background(), "KNATIVE_BROKER_default_default")
	if err != nil {
		t.Fatal(err)
	}
	if cfg := st.CachedInfo().Config; cfg.MaxAge != 0 || cfg.Duplicates != 45*time.Second {
		t.Fatalf("stream max age %s, duplicate window %s; want none and 45s from the Broker's ConfigMap", cfg.MaxAge, cfg.Duplicates)
	}
}

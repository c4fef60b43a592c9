package runner_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
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

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/natsconn"
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

// collector is a Trigger subscriber that records every event it receives.
type collector struct {
	mu     sync.Mutex
	events []cloudevents.Event
	signal chan struct{}
}

func newCollector(t testing.TB) (*collector, *httptest.Server) {
	c := &collector{signal: make(chan struct{}, 1)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.events = append(c.events, *ev)
		c.mu.Unlock()
		select {
		case c.signal <- struct{}{}:
		default:
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	return c, srv
}

func (c *collector) ofType(typ string) []cloudevents.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []cloudevents.Event
	for _, e := range c.events {
		if e.Type() == typ {
			out = append(out, e)
		}
	}
	return out
}

// waitFor waits until n events of typ arrived, or fails the test.
func (c *collector) waitFor(t testing.TB, typ string, n int, timeout time.Duration) []cloudevents.Event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if got := c.ofType(typ); len(got) >= n {
			return got
		}
		select {
		case <-c.signal:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out: %d of %d %s events arrived", len(c.ofType(typ)), n, typ)
		}
	}
}

type shop struct {
	*runner.Runner
	collector *collector
	stop      func() // stops the runner and waits for it
}

// shopOptions vary the shop a test runs.
type shopOptions struct {
	configDir string              // instead of config/
	env       map[string][]string // per Service, on top of BREW_TIME=0s
	natsURL   string              // an external NATS
	only      []string
	name      string
	collector *collector // share another shop's observer
	token     string     // the ingress bearer token
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
	col, srv := newCollector(t)
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
`, srv.URL)
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

func postBinary(t testing.TB, url, id, source, typ, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("ce-specversion", "1.0")
	req.Header.Set("ce-id", id)
	req.Header.Set("ce-source", source)
	req.Header.Set("ce-type", typ)
	req.Header.Set("content-type", "application/json")
	return do(t, req)
}

func postStructured(t testing.TB, url string, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("content-type", "application/cloudevents+json")
	return do(t, req)
}

func do(t testing.TB, req *http.Request) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
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
		var resp *http.Response
		if i%2 == 0 {
			resp = postBinary(t, url, fmt.Sprintf("order-%d", i), "/e2e", "com.koffeeshop.order.placed", data)
		} else {
			resp = postStructured(t, url, fmt.Sprintf(`{"specversion":"1.0","id":"order-%d","source":"/e2e","type":"com.koffeeshop.order.placed","datacontenttype":"application/json","data":%s}`, i, data))
		}
		if resp.StatusCode != http.StatusAccepted {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("order %d: status %d: %s", i, resp.StatusCode, b)
		}
	}

	accepted := s.collector.waitFor(t, "com.koffeeshop.order.accepted", orders, 60*time.Second)
	done := s.collector.waitFor(t, "com.koffeeshop.customer.notified", orders, 60*time.Second)
	// Let any duplicate show up before counting.
	time.Sleep(300 * time.Millisecond)
	done = s.collector.ofType("com.koffeeshop.customer.notified")
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
		if resp := postBinary(t, url, fmt.Sprintf("bad-%d", i), "/e2e", "com.koffeeshop.order.placed", body); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	rejected := s.collector.waitFor(t, "com.koffeeshop.order.rejected", 2, 30*time.Second)
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
	if got := s.collector.ofType("com.koffeeshop.order.accepted"); len(got) != 0 {
		t.Errorf("%d bad orders were accepted", len(got))
	}
}

func TestIngressRejectsBadInput(t *testing.T) {
	s := startShop(t)
	base := s.IngressURL()
	full := func(h map[string]string) map[string]string {
		m := map[string]string{"ce-specversion": "1.0", "ce-id": "x-1", "ce-source": "/t", "ce-type": "t.t", "content-type": "application/json"}
		for k, v := range h {
			if v == "" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	cases := []struct {
		name    string
		method  string
		path    string
		headers map[string]string
		body    string
		status  int
		msg     string
	}{
		{"missing ce-id", "POST", "/default/default", full(map[string]string{"ce-id": ""}), "{}", 400, "id"},
		{"missing ce-source", "POST", "/default/default", full(map[string]string{"ce-source": ""}), "{}", 400, "source"},
		{"missing ce-type", "POST", "/default/default", full(map[string]string{"ce-type": ""}), "{}", 400, "type"},
		{"missing ce-specversion", "POST", "/default/default", full(map[string]string{"ce-specversion": ""}), "{}", 400, "not a CloudEvent"},
		{"unknown specversion", "POST", "/default/default", full(map[string]string{"ce-specversion": "9.9"}), "{}", 400, ""},
		{"malformed structured JSON", "POST", "/default/default", map[string]string{"content-type": "application/cloudevents+json"}, `{"specversion":"1.0","id":`, 400, "invalid CloudEvent"},
		{"structured without id", "POST", "/default/default", map[string]string{"content-type": "application/cloudevents+json"}, `{"specversion":"1.0","source":"/s","type":"t"}`, 400, "id"},
		{"batch", "POST", "/default/default", map[string]string{"content-type": "application/cloudevents-batch+json"}, `[]`, 400, "batch"},
		{"GET", "GET", "/default/default", nil, "", 405, "POST"},
		{"PUT", "PUT", "/default/default", full(nil), "{}", 405, "POST"},
		{"wrong path", "POST", "/default", full(nil), "{}", 404, "namespace"},
		{"too deep path", "POST", "/default/default/extra", full(nil), "{}", 404, ""},
		{"unknown broker", "POST", "/default/nope", full(nil), "{}", 404, "does not exist"},
		{"oversized body", "POST", "/default/default", full(nil), `"` + strings.Repeat("x", 2<<20) + `"`, 413, "larger"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, err := http.NewRequest(tc.method, base+tc.path, body)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp := do(t, req)
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.status, b)
			}
			if !strings.Contains(string(b), tc.msg) {
				t.Errorf("message %q does not mention %q", b, tc.msg)
			}
			if tc.status == 405 && resp.Header.Get("Allow") != "POST, OPTIONS" {
				t.Errorf("Allow = %q", resp.Header.Get("Allow"))
			}
		})
	}
	// Nothing of the above may have been stored.
	if n := streamMsgs(t, s); n != 0 {
		t.Fatalf("%d bad events were stored", n)
	}
}

func streamMsgs(t *testing.T, s *shop) uint64 {
	t.Helper()
	nc, err := nats.Connect(s.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
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
		if resp := postBinary(t, url, "same-id", "/dup", "com.koffeeshop.order.placed", body); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	// The same id from another source is another event.
	if resp := postBinary(t, url, "same-id", "/other", "com.koffeeshop.order.placed", body); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	s.collector.waitFor(t, "com.koffeeshop.customer.notified", 2, 30*time.Second)
	time.Sleep(300 * time.Millisecond)
	if got := len(s.collector.ofType("com.koffeeshop.order.placed")); got != 2 {
		t.Errorf("observer saw %d order.placed events, want 2", got)
	}
	if got := len(s.collector.ofType("com.koffeeshop.customer.notified")); got != 2 {
		t.Errorf("%d customer.notified events, want 2", got)
	}
	var stored []string
	for _, e := range s.collector.ofType("com.koffeeshop.order.placed") {
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
	if resp := postBinary(t, url, "tok-1", "/t", "com.koffeeshop.order.placed", `{"customer":"ada","beverage":"latte"}`); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without the token: %d, want 401", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"customer":"ada","beverage":"latte"}`))
	for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "tok-2", "ce-source": "/t", "ce-type": "com.koffeeshop.order.placed", "content-type": "application/json", "Authorization": "Bearer s3cret"} {
		req.Header.Set(k, v)
	}
	if resp := do(t, req); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("with the token: %d, want 202", resp.StatusCode)
	}
	s.collector.waitFor(t, "com.koffeeshop.customer.notified", 1, 30*time.Second)
	if n := streamMsgs(t, s); n == 0 {
		t.Fatal("nothing stored")
	}
	for _, e := range s.collector.ofType("com.koffeeshop.order.placed") {
		if e.ID() == "tok-1" {
			t.Fatal("the unauthenticated order was stored")
		}
	}
	// The functions' K_SINK sends carry the token: prepare-beverage's
	// progress event got in.
	s.collector.waitFor(t, "com.koffeeshop.beverage.preparing", 1, 30*time.Second)

	// Every route that writes or acts needs the token; reading does not.
	base := s.IngressURL()
	for _, path := range []string{"/_board/orders", "/_board/kill?service=prepare-beverage"} {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(`{"customer":"eve","beverage":"latte"}`))
		if resp := do(t, req); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("POST %s without the token: %d, want 401", path, resp.StatusCode)
		}
	}
	for _, path := range []string{"/", "/status"} {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if resp := do(t, req); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without the token: %d, want 200", path, resp.StatusCode)
		}
	}
	req, _ = http.NewRequest(http.MethodPost, base+"/_board/orders", strings.NewReader(`{"customer":"bob","beverage":"latte","via":"broker"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cret")
	if resp := do(t, req); resp.StatusCode != http.StatusAccepted {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("board order with the token: %d %s", resp.StatusCode, body)
	}
	// Both orders reach notified on the board.
	deadline := time.Now().Add(30 * time.Second)
	for s.Status().Orders["notified"] < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("board stages %v, want 2 notified", s.Status().Orders)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBrokerConfigMapShapesTheStream: the runner makes the Broker's stream
// from the ConfigMap its spec.config names, as the Broker class does on a
// cluster; maxAge 0 there means no age limit.
func TestBrokerConfigMapShapesTheStream(t *testing.T) {
	s := startShopWith(t, shopOptions{configDir: scaledConfig(t, "maxAge: 24h", "maxAge: \"0\"", "duplicateWindow: 2m", "duplicateWindow: 45s")})
	nc, err := nats.Connect(s.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "KNATIVE_BROKER_default_default")
	if err != nil {
		t.Fatal(err)
	}
	if cfg := st.CachedInfo().Config; cfg.MaxAge != 0 || cfg.Duplicates != 45*time.Second {
		t.Fatalf("stream max age %s, duplicate window %s; want none and 45s from the Broker's ConfigMap", cfg.MaxAge, cfg.Duplicates)
	}
}

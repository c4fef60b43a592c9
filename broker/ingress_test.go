package broker_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	kbroker "knative.dev/eventing/pkg/broker"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
)

func binaryHeaders(id string, extra map[string]string) map[string]string {
	h := map[string]string{"ce-specversion": "1.0", "ce-id": id, "ce-source": "/test", "ce-type": "com.example.t", "content-type": "application/json"}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

func lastStored(t *testing.T, env *testBroker) cloudevents.Event {
	t.Helper()
	msg, err := env.stream.GetLastMsgForSubject(context.Background(), env.ref.Subject())
	if err != nil {
		t.Fatal(err)
	}
	ev, err := broker.Decode(msg.Header, msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestAcceptedEventIsStampedAndStored(t *testing.T) {
	env := startBroker(t)
	before := time.Now().UTC().Add(-time.Second)
	resp, body := testkit.Post(t, env.url+"/default/default", binaryHeaders("a-1", nil), `{"x":1}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	ev := lastStored(t, env)
	if ev.ID() != "a-1" || string(ev.Data()) != `{"x":1}` {
		t.Fatalf("stored %s", ev)
	}
	at, err := time.Parse(time.RFC3339Nano, ev.Extensions()[kbroker.EventArrivalTime].(string))
	if err != nil || at.Before(before) || at.After(time.Now().Add(time.Second)) {
		t.Fatalf("knativearrivaltime %v (%v)", ev.Extensions()[kbroker.EventArrivalTime], err)
	}
	if ttl, err := kbroker.GetTTL(ev.Context); err != nil || ttl != broker.DefaultTTL {
		t.Fatalf("knativebrokerttl %d (%v), want %d", ttl, err, broker.DefaultTTL)
	}
}

func TestTTLIsDecrementedAndExhaustedEventsDropped(t *testing.T) {
	env := startBroker(t)
	resp, _ := testkit.Post(t, env.url+"/default/default", binaryHeaders("ttl-5", map[string]string{"ce-knativebrokerttl": "5"}), `{}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ttl, _ := kbroker.GetTTL(lastStored(t, env).Context); ttl != 4 {
		t.Fatalf("stored ttl %d, want 4", ttl)
	}
	resp, body := testkit.Post(t, env.url+"/default/default", binaryHeaders("ttl-1", map[string]string{"ce-knativebrokerttl": "1"}), `{}`)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "knativebrokerttl") {
		t.Fatalf("status %d %q: an event at its last pass must be dropped with 400", resp.StatusCode, body)
	}
	if lastStored(t, env).ID() != "ttl-5" {
		t.Fatal("the exhausted event was stored")
	}
	// A caller of the store (the reply path) cannot take the drop for a
	// stored event: it is an error of its own kind.
	ev := cloudevents.NewEvent()
	ev.SetID("ttl-direct")
	ev.SetSource("/test")
	ev.SetType("com.example.t")
	_ = kbroker.SetTTL(ev.Context, 1)
	if _, err := env.store.Publish(context.Background(), env.ref, &ev); !errors.Is(err, broker.ErrTTLExhausted) {
		t.Fatalf("Publish of an exhausted event: %v, want ErrTTLExhausted", err)
	}
	if lastStored(t, env).ID() != "ttl-5" {
		t.Fatal("the exhausted event was stored")
	}
}

// TestIngressRejectsBadInput: what is not one CloudEvent POSTed to a
// Broker that exists is refused with the status Knative's ingress gives
// it, a message that says why, and nothing stored.
func TestIngressRejectsBadInput(t *testing.T) {
	env := startBroker(t)
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
			req, err := http.NewRequest(tc.method, env.url+tc.path, body)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp, b := testkit.Do(t, req)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.status, b)
			}
			if !strings.Contains(b, tc.msg) {
				t.Errorf("message %q does not mention %q", b, tc.msg)
			}
			if tc.status == 405 && resp.Header.Get("Allow") != "POST, OPTIONS" {
				t.Errorf("Allow = %q", resp.Header.Get("Allow"))
			}
		})
	}
	// Nothing of the above may have been stored.
	info, err := env.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Msgs; n != 0 {
		t.Fatalf("%d bad events were stored", n)
	}
}

func TestOptionsAnswersAllow(t *testing.T) {
	env := startBroker(t)
	req, _ := http.NewRequest(http.MethodOptions, env.url+"/default/default", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Allow") != "POST, OPTIONS" {
		t.Fatalf("OPTIONS: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestBodyLimitIsConfigurable(t *testing.T) {
	env := startBroker(t)
	log := slog.New(slog.DiscardHandler)
	small := httptest.NewServer(broker.NewIngress(env.store, broker.NewBrokerSet(env.ref), log, broker.IngressOptions{MaxBodyBytes: 64}))
	defer small.Close()
	if resp, _ := testkit.Post(t, small.URL+"/default/default", binaryHeaders("small", nil), `{"ok":true}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("small event: %d", resp.StatusCode)
	}
	resp, body := testkit.Post(t, small.URL+"/default/default", binaryHeaders("big", nil), `"`+strings.Repeat("x", 65)+`"`)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "64 bytes") {
		t.Fatalf("65-byte body over a 64-byte limit: %d %q", resp.StatusCode, body)
	}
}

// TestUnstorableEventGets503: when JetStream cannot store the event, the
// sender is told to retry and nothing is acknowledged.
func TestUnstorableEventGets503(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	srv := testkit.StartNATS(t)
	js := testkit.Connect(t, srv.ClientURL(), nats.ReconnectBufSize(-1), nats.MaxReconnects(-1))
	ref := broker.Ref{Namespace: "default", Name: "default"}
	if _, err := broker.EnsureStream(context.Background(), js, ref, broker.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := broker.NewStore(js.Conn(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(broker.NewIngress(store, broker.NewBrokerSet(ref), log, broker.IngressOptions{}))
	defer hs.Close()
	url := hs.URL + "/default/default"

	if resp, _ := testkit.Post(t, url, binaryHeaders("before", nil), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("before: %d", resp.StatusCode)
	}
	// The stream is gone: JetStream has nowhere to store the event.
	if err := js.DeleteStream(context.Background(), ref.StreamName()); err != nil {
		t.Fatal(err)
	}
	resp, body := testkit.Post(t, url, binaryHeaders("no-stream", nil), `{}`)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("without a stream: %d %q, want 503 with Retry-After", resp.StatusCode, body)
	}
	// The server is gone.
	srv.Shutdown()
	start := time.Now()
	resp, body = testkit.Post(t, url, binaryHeaders("no-server", nil), `{}`)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("without a server: %d %q, want 503", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the 503 took %s; the publish timeout is 1s", d)
	}
}

// TestEventOverNATSMaxPayloadGets413: an event the ingress would take but
// the NATS server will not (its max_payload, smaller on a cluster's NATS
// than the ingress's body limit) is refused with 413, not a 503 that the
// sender would retry for ever.
func TestEventOverNATSMaxPayloadGets413(t *testing.T) {
	js := testkit.Connect(t, testkit.StartNATS(t, func(o *server.Options) { o.MaxPayload = 4 << 10 }).ClientURL())
	ref := broker.Ref{Namespace: "default", Name: "default"}
	if _, err := broker.EnsureStream(context.Background(), js, ref, broker.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	store, err := broker.NewStore(js.Conn(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(broker.NewIngress(store, broker.NewBrokerSet(ref), log, broker.IngressOptions{}))
	defer hs.Close()
	resp, body := testkit.Post(t, hs.URL+"/default/default", binaryHeaders("big", nil), `"`+strings.Repeat("x", 8<<10)+`"`)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "NATS") {
		t.Fatalf("an event over max_payload: %d %q, want 413", resp.StatusCode, body)
	}
	if resp, _ := testkit.Post(t, hs.URL+"/default/default", binaryHeaders("small", nil), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("the next, small event: %d", resp.StatusCode)
	}
}

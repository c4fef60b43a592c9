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
	"github.com/nats-io/nats.go/jetstream"
	kbroker "knative.dev/eventing/pkg/broker"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/local/natsd"
)

func post(t *testing.T, url string, headers map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

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
	resp, body := post(t, env.url+"/default/default", binaryHeaders("a-1", nil), `{"x":1}`)
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
	resp, _ := post(t, env.url+"/default/default", binaryHeaders("ttl-5", map[string]string{"ce-knativebrokerttl": "5"}), `{}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ttl, _ := kbroker.GetTTL(lastStored(t, env).Context); ttl != 4 {
		t.Fatalf("stored ttl %d, want 4", ttl)
	}
	resp, body := post(t, env.url+"/default/default", binaryHeaders("ttl-1", map[string]string{"ce-knativebrokerttl": "1"}), `{}`)
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
	if resp, _ := post(t, small.URL+"/default/default", binaryHeaders("small", nil), `{"ok":true}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("small event: %d", resp.StatusCode)
	}
	resp, body := post(t, small.URL+"/default/default", binaryHeaders("big", nil), `"`+strings.Repeat("x", 65)+`"`)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "64 bytes") {
		t.Fatalf("65-byte body over a 64-byte limit: %d %q", resp.StatusCode, body)
	}
}

// TestUnstorableEventGets503: when JetStream cannot store the event, the
// sender is told to retry and nothing is acknowledged.
func TestUnstorableEventGets503(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	srv, err := natsd.Start(natsd.Options{StoreDir: t.TempDir(), Port: -1}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL(), nats.ReconnectBufSize(-1), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ref := broker.Ref{Namespace: "default", Name: "default"}
	if _, err := broker.EnsureStream(context.Background(), js, ref, broker.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := broker.NewStore(nc, log, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(broker.NewIngress(store, broker.NewBrokerSet(ref), log, broker.IngressOptions{}))
	defer hs.Close()
	url := hs.URL + "/default/default"

	if resp, _ := post(t, url, binaryHeaders("before", nil), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("before: %d", resp.StatusCode)
	}
	// The stream is gone: JetStream has nowhere to store the event.
	if err := js.DeleteStream(context.Background(), ref.StreamName()); err != nil {
		t.Fatal(err)
	}
	resp, body := post(t, url, binaryHeaders("no-stream", nil), `{}`)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("without a stream: %d %q, want 503 with Retry-After", resp.StatusCode, body)
	}
	// The server is gone.
	srv.Shutdown()
	start := time.Now()
	resp, body = post(t, url, binaryHeaders("no-server", nil), `{}`)
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
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), MaxPayload: 4 << 10, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ref := broker.Ref{Namespace: "default", Name: "default"}
	if _, err := broker.EnsureStream(context.Background(), js, ref, broker.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	store, err := broker.NewStore(nc, log, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(broker.NewIngress(store, broker.NewBrokerSet(ref), log, broker.IngressOptions{}))
	defer hs.Close()
	resp, body := post(t, hs.URL+"/default/default", binaryHeaders("big", nil), `"`+strings.Repeat("x", 8<<10)+`"`)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "NATS") {
		t.Fatalf("an event over max_payload: %d %q, want 413", resp.StatusCode, body)
	}
	if resp, _ := post(t, hs.URL+"/default/default", binaryHeaders("small", nil), `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("the next, small event: %d", resp.StatusCode)
	}
}

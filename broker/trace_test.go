package broker_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// TestIngressContinuesTheTrace: the ingress's span continues the event's
// own trace context (its traceparent extension) when it has one, else the
// request's traceparent header; the stored message carries the ingress
// span's context, and the event keeps the context of its creation (its
// own, else the ingress span's).
func TestIngressContinuesTheTrace(t *testing.T) {
	env := startBroker(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	log := slog.New(slog.DiscardHandler)
	in := httptest.NewServer(broker.NewIngress(env.store, broker.NewBrokerSet(env.ref), log, broker.IngressOptions{Tracer: tp}))
	t.Cleanup(in.Close)

	const (
		headerParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		eventParent  = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	)
	post := func(id string, header map[string]string) {
		t.Helper()
		req := testkit.BinaryRequest(t, in.URL+"/default/default", testkit.Event(id, "/test", "com.example.traced", `{"customer":"ada"}`))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		if resp, _ := testkit.Do(t, req); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	post("from-header", map[string]string{"Traceparent": headerParent})
	post("from-event", map[string]string{"Traceparent": headerParent, "Ce-Traceparent": eventParent})
	post("new", nil)

	spans := rec.Ended()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3", len(spans))
	}
	wantTrace := []string{"4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c", ""}
	for i, s := range spans {
		if wantTrace[i] == "" {
			if s.Parent().IsValid() {
				t.Errorf("span %d has a parent %s, want a new trace", i, s.Parent().SpanID())
			}
			continue
		}
		if got := s.SpanContext().TraceID().String(); got != wantTrace[i] {
			t.Errorf("span %d in trace %s, want %s", i, got, wantTrace[i])
		}
	}

	msgs := storedMsgs(t, env)
	if len(msgs) != 3 {
		t.Fatalf("%d stored, want 3", len(msgs))
	}
	for i, m := range msgs {
		// The delivery continues the stored message's traceparent header,
		// else the event's extension (when it names the same span, the
		// header is left out).
		stored := trace.SpanContextFromContext(tracing.FromCarrier(context.Background(), tracing.Headers(m.Header)))
		if !stored.IsValid() {
			stored = trace.SpanContextFromContext(tracing.FromCarrier(context.Background(), tracing.Headers(map[string][]string{"Traceparent": {broker.StoredAttribute(m.Header, "traceparent")}})))
		}
		if stored.SpanID() != spans[i].SpanContext().SpanID() {
			t.Errorf("message %d stored under span %s, want the ingress span %s", i, stored.SpanID(), spans[i].SpanContext().SpanID())
		}
		ext := broker.StoredAttribute(m.Header, "traceparent")
		want := "00-" + spans[i].SpanContext().TraceID().String() + "-" + spans[i].SpanContext().SpanID().String() + "-01"
		if i == 1 {
			want = eventParent // the event's own, kept
		}
		if ext != want {
			t.Errorf("message %d: traceparent extension %q, want %q", i, ext, want)
		}
	}
}

// storedMsgs returns every message in the Broker's stream, in order.
func storedMsgs(t *testing.T, env *testBroker) []*jetstream.RawStreamMsg {
	t.Helper()
	info, err := env.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := env.stream.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

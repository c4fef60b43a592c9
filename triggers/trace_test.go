package triggers_test

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
	"github.com/koffeeshop/koffeeshop/triggers"
)

// spansNamed returns the ended spans whose name starts with prefix.
func spansNamed(rec *tracetest.SpanRecorder, prefix string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if len(s.Name()) >= len(prefix) && s.Name()[:len(prefix)] == prefix {
			out = append(out, s)
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// TestDeliveryAttemptsAreSpans: each attempt is a span, a child of the
// hop that stored the event, with its attempt number, status and outcome
// (a retry, then delivered); the time the event waited in the stream is a
// span of its own; the subscriber gets the attempt's trace context; and
// the reply is stored with it, so the next hop continues the same trace.
func TestDeliveryAttemptsAreSpans(t *testing.T) {
	h := newHarness(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	sub := newSubscriber(t, response{status: 500}, response{status: 200, reply: "com.example.reply"})
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  filter: {attributes: {type: com.example.order}}\n  subscriber: {uri: '%s'}\n  delivery: {retry: 2, backoffPolicy: linear, backoffDelay: PT0.05S}\n", sub.URL))
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: mustURL(t, sub.URL), Tracer: tp}, nil)

	// The event is stored by a traced hop, as the ingress stores it.
	ctx, root := tp.Tracer("test").Start(context.Background(), "ingress")
	ev := newEvent("traced", "com.example.order")
	if _, err := h.store.Publish(ctx, h.ref, &ev); err != nil {
		t.Fatal(err)
	}
	root.End()
	got := sub.waitAttempts(t, 2, 10*time.Second)
	h.settled(d, 10*time.Second)

	attempts := spansNamed(rec, "deliver to")
	if len(attempts) != 2 {
		t.Fatalf("%d delivery spans, want 2", len(attempts))
	}
	for i, want := range []struct{ attempt, status, outcome string }{{"1", "500", "retry"}, {"2", "200", "delivered"}} {
		s := attempts[i]
		if s.Parent().SpanID() != root.SpanContext().SpanID() || s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("attempt %d: parent %s, want the storing hop %s", i+1, s.Parent().SpanID(), root.SpanContext().SpanID())
		}
		if a, st, o := attr(s, "koffeeshop.attempt"), attr(s, "http.response.status_code"), attr(s, "koffeeshop.outcome"); a != want.attempt || st != want.status || o != want.outcome {
			t.Errorf("attempt span %d: attempt %s, status %s, outcome %s; want %+v", i+1, a, st, o, want)
		}
		// The subscriber saw this attempt's context.
		sc := trace.SpanContextFromContext(tracing.FromHTTP(context.Background(), got[i].header))
		if sc.SpanID() != s.SpanContext().SpanID() {
			t.Errorf("attempt %d: the subscriber got span %s, want %s", i+1, sc.SpanID(), s.SpanContext().SpanID())
		}
	}
	if q := spansNamed(rec, "queued in "); len(q) != 1 || q[0].Parent().SpanID() != root.SpanContext().SpanID() {
		t.Errorf("queued spans %d, want 1 under the storing hop", len(q))
	}
	// The event keeps the context it was stored with as its extension;
	// the subscriber never sees the broker's TTL.
	if tp := got[0].event.Extensions()["traceparent"]; tp == nil {
		t.Errorf("the delivered event has no traceparent extension: %v", got[0].event.Extensions())
	}

	// The reply went into the Broker with the second attempt's context.
	replies := 0
	for _, m := range h.storedMsgs() {
		if broker.StoredAttribute(m.Header, "type") != "com.example.reply" {
			continue
		}
		replies++
		// The stored traceparent header, else the reply's extension.
		sc := trace.SpanContextFromContext(tracing.FromCarrier(context.Background(), tracing.Headers(m.Header)))
		if !sc.IsValid() {
			sc = trace.SpanContextFromContext(tracing.FromCarrier(context.Background(), tracing.Headers(map[string][]string{"Traceparent": {broker.StoredAttribute(m.Header, "traceparent")}})))
		}
		if sc.SpanID() != attempts[1].SpanContext().SpanID() {
			t.Errorf("reply stored under span %s, want the attempt's %s", sc.SpanID(), attempts[1].SpanContext().SpanID())
		}
	}
	if replies != 1 {
		t.Fatalf("%d replies stored, want 1", replies)
	}
}

// slowEndpoint hands out its URL after a wait, as a function at zero
// instances does while one starts.
type slowEndpoint struct {
	u    *url.URL
	wait time.Duration
	once sync.Once
}

func (e *slowEndpoint) Acquire(ctx context.Context) (*url.URL, func(), error) {
	e.once.Do(func() { time.Sleep(e.wait) })
	return e.u, func() {}, nil
}

// TestColdStartAndDeadLetterAreShown: a wait for an instance is marked on
// the attempt and shown as a span; a send to the dead-letter sink is a
// span of its own with its outcome.
func TestColdStartAndDeadLetterAreShown(t *testing.T) {
	h := newHarness(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	sub := newSubscriber(t, response{status: 500})
	dls := newSubscriber(t)
	tr, br := h.manifests("", fmt.Sprintf("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: '{{broker}}'\n  subscriber: {uri: '%s'}\n  delivery: {retry: 0, deadLetterSink: {uri: '%s'}}\n", sub.URL, dls.URL))
	d := h.run(triggers.Config{Trigger: tr, Delivery: triggers.EffectiveDelivery(tr, br), Subscriber: &slowEndpoint{u: mustURL(t, sub.URL).U, wait: 20 * time.Millisecond}, DeadLetter: mustURL(t, dls.URL), Tracer: tp}, nil)
	ctx, root := tp.Tracer("test").Start(context.Background(), "ingress")
	ev := newEvent("cold", "com.example.order")
	if _, err := h.store.Publish(ctx, h.ref, &ev); err != nil {
		t.Fatal(err)
	}
	root.End()
	dls.waitAttempts(t, 1, 10*time.Second)
	h.settled(d, 10*time.Second)

	attempts := spansNamed(rec, "deliver to")
	if len(attempts) != 1 || attr(attempts[0], "koffeeshop.cold_start") != "true" || attr(attempts[0], "koffeeshop.outcome") != "dead_letter" {
		t.Fatalf("attempt spans %d (cold start %q, outcome %q), want 1 cold start sent to the dead-letter sink", len(attempts), attr(attempts[0], "koffeeshop.cold_start"), attr(attempts[0], "koffeeshop.outcome"))
	}
	waits := spansNamed(rec, "waiting for an instance")
	if len(waits) != 1 || waits[0].Parent().SpanID() != attempts[0].SpanContext().SpanID() {
		t.Fatalf("wait spans %d, want 1 under the attempt", len(waits))
	}
	if w := waits[0].EndTime().Sub(waits[0].StartTime()); w < 20*time.Millisecond {
		t.Errorf("the wait span lasts %s, want at least the 20ms wait", w)
	}
	dead := spansNamed(rec, "dead-letter")
	if len(dead) != 1 || attr(dead[0], "koffeeshop.outcome") != "dead_letter" || dead[0].Parent().SpanID() != root.SpanContext().SpanID() {
		t.Fatalf("dead-letter spans %d, want 1 under the storing hop with outcome dead_letter", len(dead))
	}
}

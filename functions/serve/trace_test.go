package serve_test

import (
	"net/http"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/koffeeshop/koffeeshop/broker/testkit"
	"github.com/koffeeshop/koffeeshop/functions/serve"
)

// TestHandlingContinuesTheTrace: the function's span is a child of the
// delivery's traceparent header, and the reply event carries the
// function's span as its traceparent extension, so the next hop continues
// the same trace.
func TestHandlingContinuesTheTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	r := start(t, serve.Config{Instance: "inst-t", Name: "echo", Tracer: tp}, echo)

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req := testkit.BinaryRequest(t, r.url+"/", testkit.Event("evt-t", "/test/client", "test.request", `{"hello":"world"}`))
	req.Header.Set("Traceparent", parent)
	resp, _ := testkit.Do(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Name() != "echo test.request" || s.Parent().SpanID().String() != "00f067aa0ba902b7" || s.SpanContext().TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("span %q with parent %s in trace %s, want a child of the request's context", s.Name(), s.Parent().SpanID(), s.SpanContext().TraceID())
	}
	want := "00-4bf92f3577b34da6a3ce929d0e0e4736-" + s.SpanContext().SpanID().String() + "-01"
	if got := resp.Header.Get("Ce-Traceparent"); got != want {
		t.Errorf("reply traceparent %q, want the function's span %q", got, want)
	}
}

// TestUnsampledTraceGoesOnWithoutASpan: a delivery whose trace is not
// sampled gets no span, and its context goes on to the reply as it came,
// so every later hop decides the same.
func TestUnsampledTraceGoesOnWithoutASpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	r := start(t, serve.Config{Instance: "inst-u", Name: "echo", Tracer: tp}, echo)

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	req := testkit.BinaryRequest(t, r.url+"/", testkit.Event("evt-u", "/test/client", "test.request", `{}`))
	req.Header.Set("Traceparent", parent)
	resp, _ := testkit.Do(t, req)
	if n := len(rec.Started()); n != 0 {
		t.Errorf("%d spans started for an unsampled trace, want 0", n)
	}
	if got := resp.Header.Get("Ce-Traceparent"); got != parent {
		t.Errorf("reply traceparent %q, want the delivery's %q", got, parent)
	}
}

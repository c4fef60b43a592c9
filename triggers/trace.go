package triggers

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/koffeeshop/koffeeshop/broker"
	"github.com/koffeeshop/koffeeshop/broker/tracing"
)

// Span attributes of a delivery, besides the CloudEvents and HTTP ones.
const (
	attrTrigger   = attribute.Key("koffeeshop.trigger")
	attrAttempt   = attribute.Key("koffeeshop.attempt")
	attrOutcome   = attribute.Key("koffeeshop.outcome")
	attrColdStart = attribute.Key("koffeeshop.cold_start")
	attrQueued    = attribute.Key("koffeeshop.queued_ms")
)

// What became of an attempt, as its span's koffeeshop.outcome says.
const (
	outcomeDelivered  = "delivered"
	outcomeRetry      = "retry"
	outcomeDeadLetter = "dead_letter"
	outcomeDropped    = "dropped"
	outcomeHandedBack = "handed_back" // the dispatcher is stopping
)

// minColdStart is the shortest wait for an instance a span shows as a
// cold start.
const minColdStart = time.Millisecond

// traceParent is the trace context the stored message carries (that of
// the hop that stored it, else the event's own), with a span for the time
// the event waited in the stream since it was stored (or, on a
// redelivery, since JetStream redelivered it after a backoff).
func (d *Dispatcher) traceParent(ctx context.Context, h nats.Header, meta *jetstream.MsgMetadata, attempt int) context.Context {
	parent := tracing.FromCarrier(ctx, tracing.Headers(h))
	if !trace.SpanContextFromContext(parent).IsValid() {
		if tp := broker.StoredAttribute(h, "traceparent"); tp != "" {
			parent = tracing.FromCarrier(ctx, tracing.Headers(map[string][]string{"Traceparent": {tp}, "Tracestate": {broker.StoredAttribute(h, "tracestate")}}))
		}
	}
	if attempt == 1 && trace.SpanContextFromContext(parent).IsSampled() {
		now := time.Now()
		_, span := d.tracer.Start(parent, "queued in "+d.cfg.Broker.StreamName(), trace.WithTimestamp(meta.Timestamp),
			trace.WithAttributes(attrTrigger.String(d.name), attrQueued.Float64(float64(now.Sub(meta.Timestamp))/float64(time.Millisecond))))
		span.End(trace.WithTimestamp(now))
	}
	return parent
}

// startSpan starts the span of one send of the event to the subscriber or
// to the dead-letter sink.
func (d *Dispatcher) startSpan(parent context.Context, name string, attempt int, h nats.Header) (context.Context, trace.Span) {
	ctx, span := tracing.Start(d.tracer, parent, name+" "+d.name, trace.WithSpanKind(trace.SpanKindClient))
	if span.IsRecording() {
		// Only for a sampled span: the others would build them for nothing.
		span.SetAttributes(
			attrTrigger.String(d.name),
			attrAttempt.Int(attempt),
			attribute.String("cloudevents.event_id", broker.StoredAttribute(h, "id")),
			attribute.String("cloudevents.event_type", broker.StoredAttribute(h, "type")),
		)
	}
	return ctx, span
}

// endSpan records what became of a send.
func endSpan(span trace.Span, outcome string, out outcome) {
	if !span.IsRecording() {
		span.End()
		return
	}
	if out.code != 0 {
		span.SetAttributes(semconv.HTTPResponseStatusCode(out.code))
	}
	span.SetAttributes(attrOutcome.String(outcome))
	if out.err != nil {
		span.SetStatus(codes.Error, out.err.Error())
	}
	span.End()
}

// waited marks a wait for an instance of the subscriber on ctx's span,
// with a span of its own when it was long enough to be a cold start.
func (d *Dispatcher) waited(ctx context.Context, since time.Time) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	now := time.Now()
	if now.Sub(since) < minColdStart {
		return
	}
	span.SetAttributes(attrColdStart.Bool(true))
	_, wait := d.tracer.Start(ctx, "waiting for an instance", trace.WithTimestamp(since))
	wait.End(trace.WithTimestamp(now))
}
